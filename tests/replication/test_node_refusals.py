"""What a client hears when the node it talks to cannot finish its command: only what is
true. A command that may have committed is never answered "failed" (issue 13, item 5)."""
from __future__ import annotations

import errno
import time

import pytest

from prevalence.errors import EngineHaltedError
from prevalence.sessions import RegisterSession
from replication.errors import ProposalRefused
from tests.prevalence.domain import Add, Get
from tests.replication.test_node import Cluster


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.stop()


def test_a_leader_whose_disk_fills_refuses_its_pending_commands_as_retryable(cluster):
    leader = cluster.leader()
    sid = leader.execute(RegisterSession())
    assert leader.execute(Add("x", 1), session=(sid, 1)) == ("ok", 1)

    def disk_full(*_args, **_kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    leader.storage.journal._write = disk_full  # the next journal write hits a full disk
    fut = leader.submit(Add("x", 1), session=(sid, 2))
    try:
        outcome = fut.result(5)
    except EngineHaltedError as exc:
        pytest.fail(f"a command that may have committed was answered as failed: {exc!r}")
    except ProposalRefused as exc:  # retryable: the client sends it again, same session numbers
        outcome = exc
    assert isinstance(outcome, ProposalRefused) or outcome == ("ok", 2)
    later = leader.submit(Add("x", 100), session=(sid, 3))  # arrives after the node stopped
    with pytest.raises(ProposalRefused, match="stopped"):
        later.result(2)

    # The retry on the new leader, under the same session number, answers once.
    others = [n for n in cluster.net.nodes.values() if n is not leader]
    deadline = time.monotonic() + 10
    while not any(n.is_leader for n in others):
        assert time.monotonic() < deadline, "no new leader"
        time.sleep(0.02)
    new = next(n for n in others if n.is_leader)
    assert new.execute(Add("x", 1), session=(sid, 2)) == ("ok", 2)
    assert new.query(Get("x")) == 2  # applied exactly once

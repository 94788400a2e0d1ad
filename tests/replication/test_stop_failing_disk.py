"""stop() on a node whose disk fails as it closes (storage.close raises: the journal's
fsync or the hard state's write): stop() raises before _stopped is set and before
answering the callers, so what waits, and every caller after it, waits out its whole timeout
instead of hearing NodeHalted at once (the promise of 493743f)."""
from __future__ import annotations

import errno
import time

import pytest

from replication.errors import ProposalRefused
from tests.prevalence.domain import Add, Store
from tests.replication.test_node import Cluster, cluster  # noqa: F401 - the fixture


def test_a_node_whose_disk_fails_on_close_still_refuses_late_callers_at_once(cluster):
    node = cluster.leader()
    real_close = node.storage.close

    def failing_close():
        real_close()
        raise OSError(errno.EIO, "Input/output error")  # fsync/write on close failed

    node.storage.close = failing_close
    with pytest.raises(OSError):
        node.stop(transfer=False)
    started = time.monotonic()
    with pytest.raises(ProposalRefused, match="stopped"):
        node.submit(Add("x", 1)).result(2)  # TimeoutError after 2 s instead
    batch = node.propose_many([(Add("x", 1), None)] * 2)
    assert batch.wait(2), "a batch sent to the stopped node waits out its whole timeout"
    assert time.monotonic() - started < 1.0


def test_stop_finishes_shutting_down_when_the_disk_lane_fails_to_stop(tmp_path):
    """A failing step of stop() used to end it there: the apply thread was left blocked
    on its queue, the journal open, and a leader's side effects (on_leader_stop) going on."""
    from replication.membership import Membership
    from replication.node import LocalNetwork, Node

    stopped: list[str] = []
    node = Node("n1", str(tmp_path / "n1"), Store, LocalNetwork().transport("n1"), membership=Membership(("n1",)),
                on_leader_stop=lambda: stopped.append("n1")).start()
    deadline = time.monotonic() + 5
    while not node.is_leader:
        assert time.monotonic() < deadline, "a single node did not elect itself"
        time.sleep(0.01)
    assert node.execute(Add("x", 1)) == 1
    real_stop = node._disk.stop

    def failing_stop(*a, **kw):
        real_stop(*a, **kw)
        raise OSError(errno.EIO, "the disk lane failed to stop")

    node._disk.stop = failing_stop
    closed: list[bool] = []
    real_close = node.storage.close
    node.storage.close = lambda: (real_close(), closed.append(True))[0]
    with pytest.raises(OSError, match="disk lane failed to stop"):
        node.stop(transfer=False)
    node._apply_thread.join(2)
    assert not node._apply_thread.is_alive(), "the apply thread was left running"
    assert closed, "the journal was left open"
    assert stopped == ["n1"], "on_leader_stop was skipped"
    with pytest.raises(ProposalRefused, match="stopped"):
        node.submit(Add("x", 1)).result(1)

"""A node's status comes from its live Raft loop (issue 15, item 5): a node whose loop
has failed or hangs never reports itself healthy, and what it reports is current."""
from __future__ import annotations

import errno
import time

import pytest

from replication.errors import NodeHalted
from tests.prevalence.domain import Add
from tests.replication.test_node import Cluster


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.stop()


def test_a_node_whose_loop_failed_never_reports_itself_healthy(cluster):
    """An in-process node (no process to exit) and a node process in the moment before
    it exits: status served the last cached view, "leader", for good."""
    leader = cluster.leader()

    def disk_full(*_args, **_kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    leader.storage.journal._write = disk_full
    with pytest.raises(Exception):
        leader.execute(Add("x", 1), timeout=5)
    deadline = time.monotonic() + 5
    while leader._failed is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert leader._failed is not None
    with pytest.raises(NodeHalted, match="No space left on device"):
        leader.status()


def test_a_hung_loop_is_not_reported_healthy(cluster):
    """The loop is wedged (here: something holds the core for good): status times out
    instead of serving the view from before."""
    node = cluster.leader()
    with node._core_lock:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="did not answer"):
            node.status()
        assert time.monotonic() - t0 < 2.0
    assert node.status()["id"] == node.id  # free again: it answers (as what it now is)


def test_status_is_current(cluster):
    """What status says was true when it was asked: the commit index of a command that
    has returned, at once (the view was rebuilt every 0.1 s at most)."""
    leader = cluster.leader()
    for k in range(30):
        leader.execute(Add("x", 1))
        st = leader.status()
        assert st["commit_index"] >= st["applied_index"], (k, st)

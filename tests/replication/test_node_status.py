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


def test_a_node_whose_disk_stalls_says_so_in_its_status(cluster, monkeypatch):
    """A disk that stops answering for seconds (an SD card's garbage collection, an
    antivirus, a frozen file system): the node kept answering status as a healthy
    follower (measured: 15 s of fsfreeze under a node process, "follower" throughout),
    while it could acknowledge nothing and its vote waited for the disk."""
    import threading

    from replication.journal_storage import JournalStorage

    victim = cluster.leader()
    gate = threading.Event()
    original = JournalStorage.sync

    def sync(self):
        if self is victim.storage:
            gate.wait(10)
        original(self)

    monkeypatch.setattr(JournalStorage, "sync", sync)
    try:
        threading.Thread(target=lambda: victim.submit(Add("x", 1)), daemon=True).start()
        time.sleep(1.5)
        stalled = victim.status()["disk_stalled"]
        assert stalled >= 1.0, victim.status()
    finally:
        gate.set()
    deadline = time.monotonic() + 5
    while victim.status()["disk_stalled"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert victim.status()["disk_stalled"] == 0.0


def test_a_loop_held_by_a_stalled_write_says_why_it_does_not_answer(cluster, monkeypatch):
    """A follower writes inline, holding its loop, and its disk stalls: status times
    out, and the reason names the write that holds it, not only "did not answer"."""
    import threading

    from replication.journal_storage import JournalStorage

    leader = cluster.leader()
    victim = next(n for n in cluster.net.nodes.values() if n is not leader)
    gate = threading.Event()
    original = JournalStorage.sync

    def sync(self):
        if self is victim.storage:
            gate.wait(10)
        original(self)

    monkeypatch.setattr(JournalStorage, "sync", sync)
    try:
        threading.Thread(target=lambda: leader.submit(Add("x", 1)), daemon=True).start()
        time.sleep(0.3)
        with pytest.raises(TimeoutError, match=r"a write to its disk has been under way for \d"):
            victim.status()
    finally:
        gate.set()

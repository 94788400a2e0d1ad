"""The node runtime in one process: real journals and threads, an in-memory network."""
from __future__ import annotations

import threading
import time

import pytest

from replication.membership import Membership
from replication.node import LocalNetwork, Node, NodeOptions
from tests.prevalence.domain import Add, Get, Rejected, Store


class Cluster:
    def __init__(self, tmp_path, n=3, **opts):
        self.net = LocalNetwork()
        self.base = tmp_path
        self.ids = [f"n{i}" for i in range(1, n + 1)]
        self.membership = Membership(tuple(self.ids))
        self.opts = opts
        for i in self.ids:
            self.start(i)

    def start(self, i):
        node = Node(i, str(self.base / i), Store, self.net.transport(i), membership=self.membership,
                    options=NodeOptions(**self.opts))
        self.net.nodes[i] = node
        return node.start()

    def kill(self, i):
        node = self.net.nodes.pop(i)
        node.stop(transfer=False)

    def leader(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leaders = [n for n in self.net.nodes.values() if n.is_leader]
            if len(leaders) == 1:
                return leaders[0]
            time.sleep(0.01)
        raise AssertionError("no single leader elected")

    def converge(self, key, value, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(n.query(Get(key), linearizable=False) == value for n in self.net.nodes.values()):
                return
            time.sleep(0.02)
        raise AssertionError({n.id: n.query(Get(key), linearizable=False) for n in self.net.nodes.values()})

    def stop(self):
        for n in list(self.net.nodes.values()):
            n.stop(transfer=False)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.stop()


def test_elect_execute_read_everywhere(cluster):
    leader = cluster.leader()
    for k in range(1, 51):
        assert leader.execute(Add("x", 1)) == k
    follower = next(n for n in cluster.net.nodes.values() if n is not leader)
    assert follower.query(Get("x")) == 50  # linearizable through the leader's read index
    with pytest.raises(Exception) as info:
        follower.execute(Add("x", 1))
    assert "not the leader" in str(info.value)
    with pytest.raises(Rejected):
        leader.execute(Add("x", -1000))  # check() runs when applied, on every replica
    cluster.converge("x", 50)


def test_leader_failover_keeps_every_acknowledged_transaction(cluster):
    total = 0
    for round_no in range(3):
        leader = cluster.leader()
        for _ in range(20):
            total = leader.execute(Add("x", 1))
        cluster.kill(leader.id)
        new = cluster.leader()
        assert new.id != leader.id
        assert new.execute(Add("x", 0)) == total
        cluster.start(leader.id)  # comes back and catches up
        cluster.converge("x", total)


def test_restarted_follower_catches_up_by_snapshot(tmp_path):
    c = Cluster(tmp_path, snapshot_every=30, segment_bytes=4096)
    try:
        leader = c.leader()
        lagging = next(i for i in c.ids if i != leader.id)
        c.kill(lagging)
        for _ in range(200):
            leader.execute(Add("x", 1))
        assert leader.storage.journal.first_index > 1  # compacted past what the follower has
        node = c.start(lagging)
        c.converge("x", 200)
        assert node.storage.first_index() > 1  # it was sent a snapshot
    finally:
        c.stop()


def test_graceful_stop_of_the_leader_hands_over(cluster):
    leader = cluster.leader()
    leader.execute(Add("x", 5))
    node = cluster.net.nodes.pop(leader.id)
    node.stop(transfer=True)
    new = cluster.leader(timeout=1.0)
    assert new.execute(Add("x", 1)) == 6


def test_leader_hooks_start_on_the_leader_only_and_stop_when_it_loses(tmp_path):
    events: list[tuple[str, str]] = []
    net = LocalNetwork()
    ids = ["n1", "n2", "n3"]
    m = Membership(tuple(ids))
    for i in ids:
        node = Node(i, str(tmp_path / i), Store, net.transport(i), membership=m,
                    on_leader_start=lambda i=i: events.append(("start", i)),
                    on_leader_stop=lambda i=i: events.append(("stop", i)))
        net.nodes[i] = node
        node.start()
    try:
        deadline = time.monotonic() + 5
        while not any(e[0] == "start" for e in events):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        first = next(i for kind, i in events if kind == "start")
        assert net.nodes[first].is_leader and events == [("start", first)]
        net.nodes[first].transfer_leadership(next(i for i in ids if i != first))
        deadline = time.monotonic() + 5
        while len(events) < 3:
            assert time.monotonic() < deadline, events
            time.sleep(0.01)
        assert ("stop", first) in events  # the old leader's side effects stop...
        second = [i for kind, i in events if kind == "start"][1]
        assert second != first and net.nodes[second].is_leader  # ...and resume on the new one
    finally:
        for n in net.nodes.values():
            n.stop(transfer=False)


def test_membership_change_is_reported_only_once_committed(cluster):
    """An operator told "removed" stops that node; told "promoted" counts on it. Neither
    may be said of a change a leader only appended: cut off, it could still lose it."""
    from concurrent.futures import TimeoutError as FutureTimeout

    from replication.apply import EntryLost
    from replication.membership import ConfigChange

    leader = cluster.leader()
    leader.execute(Add("x", 1))
    others = [i for i in cluster.ids if i != leader.id]
    cluster.net.cut |= {(leader.id, o) for o in others}
    with pytest.raises((FutureTimeout, EntryLost)):
        leader.change_membership(ConfigChange.remove_voter(others[0]), timeout=1.0)
    cluster.net.cut.clear()
    new = cluster.leader()
    assert new.id in others  # the change was lost with the old leader's term
    assert new.change_membership(ConfigChange.remove_voter(leader.id), timeout=5.0) > 0
    assert leader.id not in new.core.membership.voters


def test_a_follower_on_a_slow_disk_writes_off_the_receiving_thread(tmp_path, caplog, monkeypatch):
    """A follower acks on the thread that received the append after writing there; when
    its disk is slow it moves its writes to the writer thread, so that the transport
    (which takes a delivery unanswered for 1 s for a hung peer) is not held up."""
    import logging

    import replication.node as node_mod
    from replication.journal_storage import JournalStorage

    c = Cluster(tmp_path)
    try:
        leader = c.leader()
        leader.execute(Add("x", 1))
        follower = next(n for n in c.net.nodes.values() if n is not leader)
        original = JournalStorage.sync
        threads = []

        def slow_sync(self):
            if self is follower.storage:
                threads.append(threading.current_thread().name)
                time.sleep(node_mod.SLOW_WRITE + 0.02)
            return original(self)

        monkeypatch.setattr(JournalStorage, "sync", slow_sync)
        with caplog.at_level(logging.WARNING, logger="replication.node"):
            for _ in range(3):
                leader.execute(Add("x", 1))
        assert f"{follower.id}: a journal write took" in caplog.text
        writer = f"write-{follower.id}"
        assert threads[0] != writer and threads[1:] and set(threads[1:]) == {writer}, threads
        c.converge("x", 4)
    finally:
        c.stop()


def test_snapshot_files_are_written_on_the_apply_thread(tmp_path, monkeypatch):
    """Whichever thread steps the core must not wait for a snapshot file to be written:
    on a follower that thread's reply to the leader is its ack."""
    from prevalence.snapshots import SnapshotStore

    original = SnapshotStore.write
    writers = []

    def recording(self, meta, body, **kw):
        writers.append(threading.current_thread().name)
        return original(self, meta, body, **kw)

    monkeypatch.setattr(SnapshotStore, "write", recording)
    c = Cluster(tmp_path, snapshot_every=20)
    try:
        leader = c.leader()
        for _ in range(100):
            leader.execute(Add("x", 1))
        c.converge("x", 100)
        deadline = time.monotonic() + 5
        while len(writers) < 3 * 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(writers) >= 3 * 4, writers  # every node took snapshots
        assert all(name.startswith("apply-") for name in writers), writers
    finally:
        c.stop()


def test_a_change_asked_of_a_new_leader_waits_until_it_has_heard_the_voters(cluster):
    """Right after an election the leader has not heard every live voter yet (nor
    committed its no-op): a change it would allow a moment later was refused, and
    `grid replace` or `cluster remove` run just then failed for a healthy cluster."""
    from replication.membership import ConfigChange

    cluster.stop()
    net, ids = LocalNetwork(), cluster.ids
    cluster.net = net
    net.cut |= {("n3", o) for o in ids}  # n3 runs but no leader hears it before it is elected
    for i in ids:
        cluster.start(i)
    leader = cluster.leader()
    assert leader.id != "n3"
    other = next(i for i in ids if i not in (leader.id, "n3"))
    threading.Timer(0.1, net.cut.clear).start()  # n3's answers arrive a heartbeat later
    assert leader.change_membership(ConfigChange.remove_voter(other), timeout=5.0) > 0
    assert leader.core.membership.voters == tuple(sorted((leader.id, "n3")))


def test_a_node_whose_snapshots_fail_says_so_in_its_status_until_one_succeeds(tmp_path, monkeypatch):
    """A snapshot that fails (a full or failing disk) is retried with a back-off and was
    only logged: the journal grows without bound while status looks healthy."""
    import errno

    from prevalence.snapshots import SnapshotStore

    original = SnapshotStore.write

    def failing(self, meta, body, **kw):
        raise OSError(errno.ENOSPC, "No space left on device\x1b[2J")

    monkeypatch.setattr(SnapshotStore, "write", failing)
    c = Cluster(tmp_path, snapshot_every=20)
    try:
        leader = c.leader()
        for _ in range(30):
            leader.execute(Add("x", 1))
        deadline = time.monotonic() + 5
        while not leader.status().get("snapshot_error") and time.monotonic() < deadline:
            time.sleep(0.05)
        problem = leader.status()["snapshot_error"]
        assert "No space left on device" in problem and problem.isprintable(), problem
        monkeypatch.setattr(SnapshotStore, "write", original)
        leader.snapshot()
        assert leader.status()["snapshot_error"] is None
    finally:
        c.stop()

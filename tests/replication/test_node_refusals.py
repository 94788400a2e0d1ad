"""What a client hears when the node it talks to cannot finish its command: only what is
true. A command that may have committed is never answered "failed" (issue 13, item 5)."""
from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from prevalence.errors import CodecError, EngineHaltedError
from prevalence.sessions import RegisterSession
from replication.errors import ProposalRefused
from tests.prevalence.domain import Add, Get, Store
from tests.replication.test_node import Cluster, cluster  # noqa: F401 - the fixture


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


def test_an_apply_failure_halts_the_node_instead_of_leaving_a_replica_behind(tmp_path):
    """A replica that cannot apply an entry must stop acknowledging and voting (its
    process exits through on_fatal), not serve on with its state stuck."""
    import threading

    from replication.membership import Membership
    from replication.node import Node, NodeOptions

    fatal: list[str] = []
    called = threading.Event()

    class Recording(Cluster):
        def start(self, i):
            node = Node(i, str(self.base / i), Store,
                        self.net.transport(i), membership=self.membership, options=NodeOptions(),
                        on_fatal=lambda why, i=i: (fatal.append(f"{i}: {why}"), called.set()))
            self.net.nodes[i] = node
            return node.start()

    c = Recording(tmp_path)
    try:
        leader = c.leader()
        victim = next(n for n in c.net.nodes.values() if n is not leader)

        def broken(*_a, **_kw):
            raise RuntimeError("the state machine broke")

        victim.sm.apply_entry = broken
        assert leader.execute(Add("x", 1)) == 1  # the other two still commit
        assert called.wait(2), "the apply failure went unnoticed"
        assert fatal == [f"{victim.id}: the apply thread died: the state machine broke"]
        with pytest.raises(ProposalRefused, match="stopped"):
            victim.submit(Add("x", 1)).result(1)
        assert leader.execute(Add("x", 1)) == 2
    finally:
        c.stop()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names an fd's file through /proc")
def test_a_failed_automatic_snapshot_leaves_no_temp_file_and_backs_off(tmp_path, monkeypatch):
    attempts = []
    real_fsync = os.fsync

    def failing_fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".snap.tmp"):
            attempts.append(fd)
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    c = Cluster(tmp_path, snapshot_every=5)
    try:
        leader = c.leader()
        monkeypatch.setattr(os, "fsync", failing_fsync)
        for _ in range(60):
            leader.execute(Add("x", 1))
        monkeypatch.setattr(os, "fsync", real_fsync)
        assert 1 <= len(attempts) <= 3 * len(c.net.nodes), attempts  # not one per apply batch
        for n in c.net.nodes.values():
            snaps = os.path.join(n.storage.directory, "snapshots")
            assert not [f for f in os.listdir(snaps) if f.endswith(".tmp")]
        assert leader.query(Get("x")) == 60
    finally:
        c.stop()


def test_a_command_the_journal_cannot_hold_fails_alone_and_the_node_serves_on(cluster):
    """Before, a session id past 64 bits raised OverflowError inside the Raft loop."""
    leader = cluster.leader()
    bad = leader.submit(Add("x", 1), session=(2**64, 1))
    good = leader.submit(Add("x", 1))
    with pytest.raises(CodecError, match="cannot journal this command"):
        bad.result(2)
    assert good.result(2) == 1
    assert leader.execute(Add("x", 1)) == 2


def test_a_command_or_read_sent_to_a_stopped_node_is_refused_at_once(cluster):
    """stop() answers what waits when it stops; a caller that comes later was left
    waiting for its whole timeout (10 s by default) instead of hearing "stopped"."""
    leader = cluster.leader()
    leader.stop()
    started = time.monotonic()
    with pytest.raises(ProposalRefused, match="stopped"):
        leader.submit(Add("x", 1)).result(3)
    with pytest.raises(ProposalRefused, match="stopped"):
        leader.query(Get("x"), timeout=3)
    assert time.monotonic() - started < 1.0


def test_a_stopped_node_keeps_none_of_the_input_it_refuses(cluster):
    """Nothing steps a stopped node's inbox any more, yet what peers and callers still
    sent it (a LocalNetwork that keeps it among its nodes, a node process until its
    transport closes) was kept there for as long as the node object lived."""
    node = cluster.net.nodes["n1"]  # still reachable: the others' messages keep coming
    node.stop(transfer=False)
    for _ in range(200):
        node.receive(b"x" * 100, "n2")
        node.receive_batch([b"y" * 100] * 4, reply_to="n3")
        with pytest.raises(ProposalRefused, match="stopped"):
            node.submit(Add("x", 1)).result(1)
    assert node._inbox.qsize() == 0


def test_a_caller_arriving_while_a_failed_node_halts_is_answered_at_once(tmp_path):
    """A thread halting a failed node answers what waits, then let go of the core lock
    and returned: a caller that queued its command meanwhile (its own _kick found the
    lock held and left the input to the holder) waited for its whole timeout once the
    raft thread, which halts the node too, had ended, and until some other input came
    (a peer's message, a disk report): a single node got none."""
    c = Cluster(tmp_path, n=1)
    try:
        node = c.leader()
        node.execute(Add("x", 1))
        node._fatal("a test's failure", RuntimeError("boom"))
        node._raft_thread.join(2)
        assert not node._raft_thread.is_alive()
        time.sleep(0.1)  # the disk lane's last report is in
        halt = node._halt_locked
        late: list = []

        def halting():
            halt()
            if not late:
                t = threading.Thread(target=lambda: late.append(node.submit(Add("x", 1))))
                t.start()
                t.join(2)  # its _kick finds the core lock held: the input is left to this thread

        node._halt_locked = halting
        with pytest.raises(ProposalRefused):
            node.submit(Add("x", 2)).result(1.0)  # this caller halts the node again
        assert late, "the late caller never got its future"
        with pytest.raises(ProposalRefused):
            late[0].result(1.0)
    finally:
        c.stop()


def test_a_caller_that_cancels_its_future_cannot_halt_the_node(cluster):
    """A Future from submit() or a query could be cancelled while it waited; the thread
    that later completed it (the stepping or the apply thread) then raised
    InvalidStateError, and the node halted. The futures are running once handed out:
    cancel() refuses, and the answer arrives."""
    leader = cluster.leader()
    followers = [i for i in cluster.ids if i != leader.id]
    for i in followers:
        cluster.kill(i)  # nothing commits until they are back
    pending = leader.submit(Add("cancelled", 1))
    assert pending.cancel() is False and not pending.cancelled()
    for i in followers:
        cluster.start(i)
    assert pending.result(10) == 1
    assert cluster.leader().execute(Add("cancelled", 1), timeout=10) == 2


def test_a_snapshot_call_that_times_out_leaves_no_caller_behind(cluster, monkeypatch):
    """Node.snapshot kept its caller's token after its own timeout: one more future held
    for the node's life per call that gave up (a maintenance loop retrying it)."""
    from concurrent.futures import TimeoutError as FutureTimeout

    leader = cluster.leader()
    monkeypatch.setattr(leader.machine, "request_snapshot", lambda token: None)  # never written
    before = len(leader._callers._waiting)
    for _ in range(3):
        with pytest.raises(FutureTimeout):
            leader.snapshot(timeout=0.05)
    assert len(leader._callers._waiting) == before

"""The node reports durability to the core in Ready order, whichever thread wrote.

A follower writes a Ready on the thread that received it when the disk lane is idle,
and on the writer thread otherwise. Both kinds of write must reach
``RaftNode.persisted`` in the order the Readies were taken: the core trusts that
order (docs/raft.md), and after a snapshot a report out of order stops the Raft loop.
"""
from __future__ import annotations

import threading
import time

import pytest

import replication.node as node_mod
from prevalence.entry import Entry, EntryKind
from replication.journal_storage import JournalStorage
from replication.membership import Membership
from replication.errors import RaftError
from replication.messages import Append, AppendResp, decode, encode
from replication.node import Node, NodeOptions
from tests.prevalence.domain import Store

WAIT = 5.0


class Recorder:
    """A transport that keeps what the node sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def send(self, to: str, payload: bytes) -> None:
        self.sent.append((to, payload))


def append(index: int) -> bytes:
    """The fake leader n1's append of entry ``index`` (term 1, nothing committed)."""
    e = Entry(index, 1, int(EntryKind.NOOP), b"")
    return encode(Append("n1", "n2", 1, index - 1, 1 if index > 1 else 0, [e], 0))


def follower(tmp_path, transport) -> Node:
    # ticks far apart: no election, and the raft thread stays out of the way
    opts = NodeOptions(tick_interval=30.0)
    return Node("n2", str(tmp_path / "n2"), Store, transport,
                membership=Membership(("n1", "n2", "n3")), options=opts).start()


def test_a_report_queued_by_the_writer_reaches_the_core_before_a_later_inline_write(tmp_path, monkeypatch):
    """The section-1 race of RUNTIME.md, staged step by step.

    rd1 is written on the writer thread; its report is queued; the writer goes idle.
    Meanwhile thread T, holding the core lock with the inbox already drained, takes
    rd2, finds the disk idle and writes rd2 itself. The core must still learn rd1
    first.
    """
    monkeypatch.setattr(node_mod, "SLOW_WRITE", 0.0)  # every inline write backs off...
    monkeypatch.setattr(node_mod, "SLOW_WRITE_BACKOFF", 0.2)  # ...for a moment only
    monkeypatch.setattr(node_mod, "SLOW_LANE_WRITE", 60.0)  # rd1's held write must not keep T's off the thread

    release_writer = threading.Event()
    writer_done = threading.Event()
    t_in_ready = threading.Event()
    original_sync = JournalStorage.sync

    def sync(self) -> None:
        if threading.current_thread().name.startswith("write-"):
            assert release_writer.wait(WAIT)  # rd1 stays on the disk until T has drained
        original_sync(self)

    original_kick = Node._kick

    def kick(self, *args, **kw) -> None:
        original_kick(self, *args, **kw)
        if threading.current_thread().name.startswith("write-"):
            writer_done.set()  # rd1 written, reported, writer idle; T holds the core lock

    monkeypatch.setattr(JournalStorage, "sync", sync)
    monkeypatch.setattr(Node, "_kick", kick)

    transport = Recorder()
    node = follower(tmp_path, transport)
    try:
        taken: list = []  # Readies in the order the core handed them out
        reported: list = []  # Readies in the order the core heard they are durable
        core = node.core
        core_ready, core_persisted = core.ready, core.persisted
        hold_ready = threading.Event()

        def ready():
            if hold_ready.is_set() and threading.current_thread().name == "T":
                hold_ready.clear()
                t_in_ready.set()
                assert writer_done.wait(WAIT)  # rd1's report is queued behind us
            rd = core_ready()
            taken.append(rd)
            return rd

        def persisted(rd) -> None:
            reported.append(rd)
            core_persisted(rd)

        monkeypatch.setattr(core, "ready", ready)
        monkeypatch.setattr(core, "persisted", persisted)

        assert node.receive_batch([append(1)], reply_to="n1")  # inline (acked in the reply), then backs off
        node.receive_batch([append(2)], reply_to="n1")  # rd1: to the writer thread, held in its fsync
        time.sleep(0.3)  # the backoff ends: the next follower write may go inline again

        replies: list[bytes] = []
        hold_ready.set()
        t = threading.Thread(target=lambda: replies.extend(node.receive_batch([append(3)], reply_to="n1")),
                             name="T")
        t.start()
        assert t_in_ready.wait(WAIT)  # T holds the core lock and has drained the inbox
        release_writer.set()
        t.join(WAIT)
        assert not t.is_alive()

        deadline = time.monotonic() + WAIT
        while len(reported) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        order = {id(rd): k for k, rd in enumerate(taken)}
        written = [rd.entries[-1].index for rd in taken if rd.entries]
        assert written == [1, 2, 3]
        assert [rd.entries[-1].index for rd in reported if rd.entries] == written  # rd1 before rd2
        assert [order[id(rd)] for rd in reported] == sorted(order[id(rd)] for rd in reported)
        acks = [decode(p) for p in replies]
        assert [(type(m), m.index) for m in acks] == [(AppendResp, 3)]  # rd2 was written inline
        assert node._failed is None
    finally:
        release_writer.set()
        node.stop(transfer=False)


def wait_for(cond, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def acks(transport: Recorder) -> list[int]:
    return [m.index for m in (decode(p) for _to, p in transport.sent) if type(m) is AppendResp]


def test_a_report_out_of_sequence_stops_the_node(tmp_path, caplog):
    """Two report paths, or a lost report, would let the core count the wrong entries
    as stored: the node stops loudly instead of carrying on."""
    transport = Recorder()
    node = follower(tmp_path, transport)
    try:
        assert node.receive_batch([append(1)], reply_to="n1")
        node._report_persisted([7])  # no write 7 was submitted
        node._kick()
        assert isinstance(node._failed, RaftError) and "out of order" in str(node._failed)
        assert "stopping: the raft loop failed" in caplog.text
        assert node.receive_batch([append(2)], reply_to="n1") == [] and acks(transport) == []
    finally:
        node.stop(transfer=False)


@pytest.mark.parametrize("where", ["inline", "lane thread"])
def test_a_failed_write_stops_the_node_before_any_ack(tmp_path, monkeypatch, where):
    """A write that failed may have left nothing on disk: its ack must not go out, and
    neither may any later one (the node stops; its service manager restarts it)."""
    if where == "lane thread":
        monkeypatch.setattr(node_mod, "SLOW_WRITE", 0.0)  # the first inline write sends the rest to the lane
    original_sync = JournalStorage.sync
    calls = []

    def sync(self) -> None:
        calls.append(threading.current_thread().name)
        if len(calls) == (1 if where == "inline" else 2):
            raise OSError(5, "Input/output error")
        original_sync(self)

    monkeypatch.setattr(JournalStorage, "sync", sync)
    transport = Recorder()
    node = follower(tmp_path, transport)
    try:
        index = 1
        if where == "lane thread":
            assert node.receive_batch([append(1)], reply_to="n1")
            index = 2
        replies = node.receive_batch([append(index)], reply_to="n1")
        assert wait_for(lambda: node._failed is not None)
        assert isinstance(node._failed, OSError)
        assert calls[-1].startswith("write-") == (where == "lane thread")
        assert replies == [] and acks(transport) == []
        assert node.receive_batch([append(index + 1)], reply_to="n1") == [] and acks(transport) == []
    finally:
        node.stop(transfer=False)


def test_the_lane_runs_work_inline_only_when_idle_and_reports_in_submission_order(tmp_path):
    from replication.persist import DiskLane, DiskWork
    from replication.ready import Ready

    storage = JournalStorage(str(tmp_path / "j"), initial_membership=Membership(("a",)))
    reports: list[tuple[str, list[int]]] = []
    hold = threading.Event()
    writing = threading.Event()
    original_sync = storage.sync

    def sync() -> None:
        if threading.current_thread().name == "lane":
            writing.set()
            assert hold.wait(WAIT)
        original_sync()

    storage.sync = sync
    lane = DiskLane(storage, lambda to, payload: None,
                    lambda seqs: reports.append((threading.current_thread().name, seqs)),
                    lambda exc: None, "lane")
    lane.start()
    try:
        def work(seq: int) -> DiskWork:
            return DiskWork(seq, Ready(entries=[Entry(seq, 1, int(EntryKind.NOOP), b"")]))

        assert lane.submit(work(1)) is False  # to the lane thread, held in its fsync
        assert writing.wait(WAIT)
        assert lane.submit(work(2), inline=True) is False  # busy: queued behind 1, not run here
        hold.set()
        assert wait_for(lambda: len(reports) == 2 and not lane._busy and not lane._queue)  # idle again
        assert lane.submit(work(3), inline=True) is True  # idle: run on this thread
        me = threading.current_thread().name
        assert reports == [("lane", [1]), ("lane", [2]), (me, [3])]
        assert storage.last_index() == 3
    finally:
        hold.set()
        lane.stop()
        storage.close()


"""The Raft storage on SimFileSystem: hard state and entries survive crashes by the journal's rule.

After any sequence of appends (with conflicting suffixes), syncs, hard-state changes,
truncations, snapshots and reopens, and a power cut at any operation: the term and vote
are the last ones stored (or, cut during that store, the one being stored), the log is
a prefix of the node's log at least as long as what was synced, and the stored commit
never names an entry the disk lacks.
"""
from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from prevalence.entry import Entry
from prevalence.errors import DiskFull, EngineHaltedError
from prevalence.simfs import SimFileSystem
from prevalence.snapshots import SnapshotMeta as FileMeta
from replication.journal_storage import HardStateFile, JournalStorage, create_node_data, node_data_identity
from replication.messages import HardState

from tests.replication.test_journal_storage import M, StorageAgreement, save_snapshot

DIR = "/cluster/n1"


class SimStorageAgreement(StorageAgreement):
    """The MemoryStorage agreement model, run on the simulated disk."""

    def make_fs(self):
        return SimFileSystem(random.Random(0))


SimStorageAgreement.TestCase.settings = StorageAgreement.TestCase.settings
test_storage_agreement_on_simfs = SimStorageAgreement.TestCase

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 6), st.integers(1, 20), st.booleans()),
        st.tuples(st.just("sync"), st.just(0), st.just(0), st.just(False)),
        st.tuples(st.just("hard_state"), st.integers(0, 2), st.integers(0, 40), st.booleans()),
        st.tuples(st.just("truncate"), st.integers(0, 10), st.just(0), st.just(False)),
        st.tuples(st.just("snapshot"), st.integers(0, 10), st.just(0), st.just(False)),
        st.tuples(st.just("reopen"), st.just(0), st.just(0), st.just(False)),
    ),
    max_size=25,
)


class Node:
    def __init__(self, fs: SimFileSystem):
        self.fs = fs
        self.log: dict[int, Entry] = {}
        self.snap = 0
        self.snaps_written = [0]
        self.synced = 0
        self.commit = 0  # Raft never truncates at or below it
        self.term = 1
        self.stored = HardState()  # the term and vote on disk
        self.storing: HardState | None = None
        self.open()

    def open(self) -> None:
        self.s = JournalStorage(DIR, initial_membership=M, segment_bytes=4096, fs=self.fs)

    @property
    def last(self) -> int:
        return max(self.log, default=self.snap)

    def run(self, op: str, a: int, b: int, flag: bool) -> None:
        s = self.s
        if op == "append":
            start = max(self.snap + 1, self.commit + 1, self.last + 1 - a)
            self.term += flag
            ents = [Entry(i, self.term, 1, b"%d/%d" % (i, self.term) * 3) for i in range(start, start + b)]
            self.synced = min(self.synced, start - 1)  # a conflicting suffix goes: as for truncate
            s.append(ents)
            for i in [i for i in self.log if i >= start]:
                del self.log[i]
            self.log.update((e.index, e) for e in ents)
        elif op == "sync":
            s.sync()
            self.synced = self.last
        elif op == "hard_state":
            self.commit = max(self.commit, min(b, self.last))  # never back, never past the log
            hs = HardState(self.term + a, "b" if flag else None, self.commit)
            changes = s.hard_state_needs_write(hs)
            self.storing = hs if changes else None
            s.set_hard_state(hs)
            if changes:
                self.stored, self.storing = hs, None
        elif op == "truncate" and self.last > max(self.snap, self.commit):
            frm = max(self.snap + 1, self.commit + 1, self.last - a)
            # from the call on, a power cut may leave the entries from frm gone: asked for
            self.synced = min(self.synced, frm - 1)
            s.truncate(frm)
            for i in range(frm, self.last + 1):
                self.log.pop(i, None)
        elif op == "snapshot" and self.last > self.snap:
            s.sync()  # a node snapshots applied, so durable, entries
            self.synced = self.last
            index = max(self.snap + 1, self.last - a)
            self.snaps_written.append(index)
            save_snapshot(s, FileMeta(index, 0, 0, "pickle"), b"state")
            s.compact()
            self.snap = index
            for i in [i for i in self.log if i <= index]:
                del self.log[i]
        elif op == "reopen":
            s.close()
            self.synced = self.last
            self.open()


@given(seed=st.integers(0, 2**32), ops=OPS, cut=st.one_of(st.none(), st.integers(0, 400)))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# a power cut while a synced entry is truncated: it may be gone, as asked
@example(seed=0, ops=[("append", 0, 1, False), ("reopen", 0, 0, False), ("append", 0, 1, False),
                      ("reopen", 0, 0, False), ("truncate", 0, 0, False)], cut=47)
@example(seed=0, ops=[("append", 0, 2, False), ("hard_state", 0, 0, False), ("hard_state", 1, 0, False),
                      ("reopen", 0, 0, False), ("hard_state", 0, 0, False), ("reopen", 0, 0, False),
                      ("append", 1, 1, False)], cut=63)  # and during an append replacing a suffix
def test_hard_state_and_entries_survive_a_crash_at_any_point(seed, ops, cut):
    fs = SimFileSystem(random.Random(seed))
    create_node_data(DIR, "n1", "new-cluster", fs=fs)
    node = Node(fs)
    if cut is not None:
        fs.cut_power_after(cut)
    try:
        for op in ops:
            node.run(*op)
    except Exception:  # noqa: BLE001 - the power cut
        assert fs.crashed
    after = fs.crash()
    assert node_data_identity(DIR, "n1", fs=after).node == "n1"
    s = JournalStorage(DIR, initial_membership=M, segment_bytes=4096, fs=after)
    hs, _membership = s.initial_state()
    assert (hs.term, hs.vote) in {(h.term, h.vote) for h in (node.stored, node.storing) if h is not None}
    snap, last = s.first_index() - 1, s.last_index()
    assert snap in node.snaps_written
    assert last >= node.synced, (last, node.synced)  # nothing synced lost
    assert hs.commit <= last  # the stored commit names only entries on disk
    if last > snap:
        assert s.entries(snap + 1, last + 1, None) == [node.log[i] for i in range(snap + 1, last + 1)]
    s.close()


def test_a_full_disk_refuses_then_resumes_with_nothing_lost():
    fs = SimFileSystem(random.Random(5))
    s = JournalStorage(DIR, initial_membership=M, fs=fs)
    s.append([Entry(i, 1, 1, b"e%d" % i) for i in range(1, 6)])
    s.sync()
    s.set_hard_state(HardState(1, "a", 5))
    fs.fill()
    s.append([Entry(i, 2, 1, b"e%d" % i) for i in range(6, 9)])
    with pytest.raises(DiskFull):
        s.sync()
    with pytest.raises(DiskFull):
        s.set_hard_state(HardState(2, "b", 5))
    assert HardStateFile(DIR, fs).load() == HardState(1, "a", 5)  # the old file, untouched
    fs.capacity = None
    s.sync()  # the same calls, retried
    s.set_hard_state(HardState(2, "b", 8))
    again = JournalStorage(DIR, initial_membership=M, fs=fs.crash())
    assert again.initial_state()[0] == HardState(2, "b", 8) and again.last_index() == 8


def test_a_failed_fsync_stops_the_storage_for_good():
    fs = SimFileSystem(random.Random(6))
    s = JournalStorage(DIR, initial_membership=M, fs=fs)
    s.append([Entry(1, 1, 1, b"x")])
    fs.fail_fsync = True
    with pytest.raises(EngineHaltedError):
        s.sync()
    fs.fail_fsync = False
    with pytest.raises(EngineHaltedError):
        s.sync()
    with pytest.raises(EngineHaltedError):
        s.append([Entry(2, 1, 1, b"y")])


@pytest.mark.parametrize("retry", ["sync", "append"])
def test_retrying_after_a_full_disk_leaves_the_files_of_a_disk_that_never_filled(retry):
    """The retry may be the same sync, or the whole disk work again (append, then sync)."""
    refused = []

    def run(fill_at: int | None) -> dict[str, bytes]:
        fs = SimFileSystem(random.Random(9))
        s = JournalStorage(DIR, initial_membership=M, segment_bytes=4096, fs=fs)
        for k in range(0, 300, 30):
            batch = [Entry(i, 1, 1, b"entry %d" % i) for i in range(k + 1, k + 31)]
            if k == fill_at:
                fs.fill()
            s.append(batch)
            try:
                s.sync()
            except DiskFull:
                refused.append(k)
                fs.capacity = None
                if retry == "append":
                    s.append(batch)
                s.sync()
        s.close()
        return fs.files()

    never = run(None)
    assert all(run(k) == never for k in (0, 120, 270))
    assert refused == [0, 120, 270]


@pytest.mark.parametrize("fields", [[-1, None, 0], [1, 7, 0], [1, None, "x"], [1.5, None, 0]])
def test_a_hard_state_with_a_valid_checksum_but_wrong_fields_is_refused(fields):
    import msgpack
    from zlib import crc32

    from prevalence.fs import write_file_durably
    from replication.errors import RaftError

    fs = SimFileSystem(random.Random(0))
    fs.makedirs(DIR)
    body = msgpack.packb(fields)
    write_file_durably(fs, DIR + "/raft-state", [body + crc32(body).to_bytes(4, "little")])
    with pytest.raises(RaftError, match="malformed hard state"):
        HardStateFile(DIR, fs).load()


def test_the_disk_worker_keeps_a_batch_on_a_full_disk_and_writes_it_once_space_returns():
    """The disk lane's worker on a full disk: nothing written, sent or reported, the
    news told once; the same batch later writes, sends and reports as if never full."""
    import random as _random

    from prevalence.entry import Entry, EntryKind
    from prevalence.simfs import SimFileSystem
    from replication.membership import Membership
    from replication.messages import AppendResp
    from replication.persist import DiskWorker
    from replication.ready import Ready
    from replication.runtime.events import DiskWork
    from replication.storage import HardState

    fs = SimFileSystem(_random.Random(1))
    st = JournalStorage("/d", initial_membership=Membership(("n1", "n2", "n3")), fs=fs)
    sent, reports, news = [], [], []
    worker = DiskWorker(st, lambda dst, p: sent.append(dst), reports.append, news.append)
    rd = Ready()
    rd.entries = [Entry(i, 1, int(EntryKind.NOOP), b"x" * 100) for i in range(1, 4)]
    rd.hard_state = HardState(1, "n1", 0)
    rd.persisted_messages = [AppendResp("n2", "n1", 1, 3)]
    batch = [DiskWork(1, rd)]
    fs.fill()
    assert worker.run(batch) is False and worker.run(batch) is False
    assert (sent, reports, news) == ([], [], [True])
    fs.capacity = None
    assert worker.run(batch) is True
    assert (sent, reports, news) == (["n1"], [[1]], [True, False])
    assert [e.index for e in st.entries(1, 4, None)] == [1, 2, 3]
    crashed = JournalStorage("/d", initial_membership=Membership(("n1", "n2", "n3")), fs=fs.crash())
    assert crashed.last_index() == 3 and crashed.initial_state()[0] == HardState(1, "n1", 0)

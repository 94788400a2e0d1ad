"""The journal-backed Raft storage behaves exactly like MemoryStorage, across reopens."""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from prevalence.entry import Entry
from prevalence.errors import EngineHaltedError
from prevalence.fs import OS
from prevalence.snapshots import SnapshotMeta as FileMeta
from prevalence.snapshots import decode_file, encode_file
from replication.errors import CompactedError, RaftError, UnavailableError
from replication.journal_storage import HardStateFile, JournalStorage
from replication.membership import Membership
from replication.messages import HardState, Snapshot, SnapshotMeta
from replication.storage import MemoryStorage

M = Membership(("a", "b", "c"))


def save_snapshot(disk: JournalStorage, meta: FileMeta, body: bytes) -> None:
    """The node's three steps (it writes the file off the core's thread)."""
    disk.write_snapshot(meta, body, M, disk.snapshot_term(meta.index))
    disk.publish_snapshot(meta, M)


def snapshot_file(index: int, term: int, membership: Membership) -> bytes:
    meta = FileMeta(index, term, 123, "pickle", extra={"membership": membership.to_wire()})
    return b"".join(encode_file(meta, b"state at %d" % index))


class StorageAgreement(RuleBasedStateMachine):
    def make_fs(self):
        return OS

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="jstorage-")
        self.fs = self.make_fs()
        self.mem = MemoryStorage(M)
        self.disk = JournalStorage(self.dir, initial_membership=M, segment_bytes=4096, fs=self.fs)
        self.term = 1

    @rule(back=st.integers(0, 8), n=st.integers(1, 30), bump=st.booleans(), size=st.integers(0, 300))
    def append(self, back, n, bump, size):
        start = max(self.mem.first_index(), self.mem.last_index() + 1 - back)
        self.term += bump
        ents = [Entry(i, self.term, 1, bytes([i % 256]) * size) for i in range(start, start + n)]
        self.mem.append(ents)
        self.disk.append(ents)

    @precondition(lambda self: self.mem.last_index() >= self.mem.first_index())
    @rule(data=st.data())
    def truncate(self, data):
        frm = data.draw(st.integers(self.mem.first_index(), self.mem.last_index()))
        self.mem.truncate(frm)
        self.disk.truncate(frm)

    @rule(term=st.integers(0, 5), vote=st.sampled_from([None, "a", "b"]), commit=st.integers(0, 50))
    def hard_state(self, term, vote, commit):
        hs = HardState(self.term + term, vote, commit)
        self.mem.set_hard_state(hs)
        self.disk.set_hard_state(hs)

    @precondition(lambda self: self.mem.last_index() >= self.mem.first_index())
    @rule(data=st.data())
    def snapshot_and_compact(self, data):
        i = data.draw(st.integers(self.mem.first_index(), self.mem.last_index()))
        self.mem.create_snapshot(SnapshotMeta(i, self.mem.term(i), M), b"s")
        self.mem.compact(i)
        save_snapshot(self.disk, FileMeta(i, 0, 0, "pickle"), b"body")
        self.disk.compact()

    @rule(ahead=st.integers(-5, 20), learner=st.booleans())
    def install_snapshot(self, ahead, learner):
        index = self.mem.last_index() + ahead
        if index < self.mem.first_index():
            return
        self.term += 1
        m = Membership(("a", "b"), ("c",)) if learner else M
        self.mem.apply_snapshot(Snapshot(SnapshotMeta(index, self.term, m), b"x"))
        self.disk.apply_snapshot(Snapshot(SnapshotMeta(index, self.term, m), snapshot_file(index, self.term, m)))

    @rule()
    def reopen(self):
        self.disk.close()
        self.disk = JournalStorage(self.dir, initial_membership=M, segment_bytes=4096, fs=self.fs)
        # close() synced the journal; the stored commit never names more than that log
        hs = self.mem.hard_state
        self.mem.set_hard_state(HardState(hs.term, hs.vote, min(hs.commit, self.mem.last_index())))

    @invariant()
    def agree(self):
        mem, disk = self.mem, self.disk
        assert (disk.first_index(), disk.last_index()) == (mem.first_index(), mem.last_index())
        assert disk.initial_state() == mem.initial_state()
        for i in range(mem.first_index() - 1, mem.last_index() + 1):
            assert disk.term(i) == mem.term(i), i
        lo, hi = mem.first_index(), mem.last_index() + 1
        assert disk.entries(lo, hi, None) == mem.entries(lo, hi, None)
        if mem.first_index() >= 2:
            with pytest.raises(CompactedError):
                disk.term(mem.first_index() - 2)
        with pytest.raises(UnavailableError):
            disk.term(mem.last_index() + 1)

    def teardown(self):
        self.disk.close()
        shutil.rmtree(self.dir, ignore_errors=True)


StorageAgreement.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_storage_agreement = StorageAgreement.TestCase


def test_vote_is_durable_before_it_is_acknowledged(tmp_path):
    s = JournalStorage(tmp_path, initial_membership=M)
    s.set_hard_state(HardState(3, "b", 0))
    # no close(): a crash right after persisting
    again = JournalStorage(tmp_path, initial_membership=M)
    assert again.initial_state()[0][:2] == (3, "b")


def test_damaged_hard_state_refuses_to_start(tmp_path):
    s = JournalStorage(tmp_path, initial_membership=M)
    s.set_hard_state(HardState(3, "b", 0))
    s.close()
    p = tmp_path / "raft-state"
    p.write_bytes(p.read_bytes()[:-1] + b"\x00")
    with pytest.raises(RaftError, match="damaged hard state file"):
        JournalStorage(tmp_path, initial_membership=M)


def test_missing_entries_between_snapshot_and_journal_refuse_to_start(tmp_path):
    s = JournalStorage(tmp_path, initial_membership=M, segment_bytes=4096)
    s.append([Entry(i, 1, 1, b"x" * 100) for i in range(1, 200)])
    save_snapshot(s, FileMeta(150, 0, 0, "pickle"), b"body")
    s.compact()
    s.close()
    for f in (tmp_path / "snapshots").iterdir():
        f.unlink()  # the snapshot is lost; the journal no longer starts at 1
    with pytest.raises(RaftError, match="are missing"):
        JournalStorage(tmp_path, initial_membership=M)


# -- durability: a cluster node promises only what is on disk ---------------------------

def fsync_spy(monkeypatch) -> list[tuple[int, int]]:
    """(fd, size of its file at that moment) for every os.fsync from here on."""
    calls: list[tuple[int, int]] = []
    real = os.fsync

    def spy(fd: int) -> None:
        calls.append((fd, os.fstat(fd).st_size))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return calls


def fsynced_in_full(storage: JournalStorage, calls: list[tuple[int, int]]) -> bool:
    """The newest segment was fsynced holding every byte appended to it."""
    seg = storage.journal._segments[-1]
    size = os.path.getsize(seg.path)
    return (seg.wfd, size) in calls


def entries(lo: int, hi: int, term: int = 1) -> list[Entry]:
    return [Entry(i, term, 1, b"x" * 50) for i in range(lo, hi + 1)]


def test_sync_makes_every_appended_entry_durable(tmp_path, monkeypatch):
    s = JournalStorage(tmp_path, initial_membership=M)
    s.append(entries(1, 5))
    calls = fsync_spy(monkeypatch)
    s.sync()
    assert fsynced_in_full(s, calls)
    assert s.journal.durable_index == 5
    s.close()


@pytest.mark.parametrize("mode", ["batch", "never"])
def test_modes_that_acknowledge_before_the_disk_are_refused(tmp_path, mode):
    # The engine's "batch" and "never" hand entries to the OS only; a node that acked
    # (AppendResp, votes) on that could lose acknowledged entries at a power failure.
    with pytest.raises(RaftError) as info:
        JournalStorage(tmp_path, initial_membership=M, fsync=mode)
    msg = str(info.value)
    assert f'"{mode}"' in msg and '"always"' in msg and '"unsafe-no-fsync"' in msg and "\n" not in msg


def test_unknown_mode_is_refused(tmp_path):
    with pytest.raises(RaftError, match='fsync must be "always" or "unsafe-no-fsync", got \'often\''):
        JournalStorage(tmp_path, initial_membership=M, fsync="often")


def test_unsafe_no_fsync_hands_entries_to_the_os_only(tmp_path, monkeypatch):
    s = JournalStorage(tmp_path, initial_membership=M, fsync="unsafe-no-fsync")
    s.append(entries(1, 5))
    calls = fsync_spy(monkeypatch)
    s.sync()
    assert not fsynced_in_full(s, calls)  # what it gives up
    assert s.journal.written_index == 5  # a crash of the process alone loses nothing
    s.set_hard_state(HardState(2, "a", 5))
    assert HardStateFile(str(tmp_path)).load().commit == 0  # nothing past the durable log
    s.close()  # a clean stop syncs: the commit is kept
    assert HardStateFile(str(tmp_path)).load() == HardState(2, "a", 5)


def test_stored_commit_never_passes_the_durable_journal(tmp_path):
    s = JournalStorage(tmp_path, initial_membership=M)
    s.append(entries(1, 3))
    s.sync()
    s.append(entries(4, 6))  # not yet durable
    s.set_hard_state(HardState(2, "a", 6))  # a term/vote change: stored at once
    assert HardStateFile(str(tmp_path)).load() == HardState(2, "a", 3)
    assert s.initial_state()[0] == HardState(2, "a", 6)  # the core's view is not clamped
    s.sync()
    s.close()
    assert HardStateFile(str(tmp_path)).load() == HardState(2, "a", 6)


def test_close_after_a_write_failure_stores_no_commit_past_the_durable_journal(tmp_path, monkeypatch):
    s = JournalStorage(tmp_path, initial_membership=M)
    s.append(entries(1, 3))
    s.sync()
    s.set_hard_state(HardState(2, "a", 3))
    s.append(entries(4, 6))
    with monkeypatch.context() as m:
        def broken(fd, data):
            raise OSError(5, "Input/output error")  # a full disk is DiskFull and resumes instead

        m.setattr(os, "write", broken)
        with pytest.raises(EngineHaltedError):
            s.sync()
    s.note_commit(HardState(2, "a", 6))
    s.close()
    assert HardStateFile(str(tmp_path)).load().commit <= 3
    again = JournalStorage(tmp_path, initial_membership=M)
    assert again.last_index() == 3 and again.initial_state()[0] == HardState(2, "a", 3)
    again.close()


def test_unsafe_no_fsync_does_not_replace_the_hard_state_file_on_every_batch(tmp_path, monkeypatch):
    """With "unsafe-no-fsync" the durable journal stays where the node started, so the
    commit kept in memory is never "stored" by a capped write: asking again on every batch
    replaced and fsynced raft-state each time, the fsyncs the mode exists to avoid."""
    s = JournalStorage(tmp_path, initial_membership=M, fsync="unsafe-no-fsync")
    s.set_hard_state(HardState(1, "a", 0))
    stores = []
    real = s._hs_file.store
    monkeypatch.setattr(s._hs_file, "store", lambda hs: (stores.append(hs), real(hs)))
    for i in range(1, 3001):  # a leader's disk lane: a batch, then the commit it learned
        s.append([Entry(i, 1, 1, b"x")])
        s.sync()
        s.note_commit(HardState(1, "a", i))
        s.refresh_commit()
    assert len(stores) <= 20, f"raft-state replaced {len(stores)} times for 3000 batches"
    s.close()
    assert HardStateFile(str(tmp_path)).load() == HardState(1, "a", 3000)


def test_the_snapshot_sent_to_a_follower_is_the_file_its_meta_names_while_a_newer_one_is_published(tmp_path):
    """A follower far behind was sent a snapshot labelled 14605 whose bytes were the file
    at 14551, and exited ("snapshot file is at index 14551, the message says 14605"): the
    leader's disk lane published a newer snapshot while the core was reading the file."""
    disk = JournalStorage(str(tmp_path), initial_membership=M)
    disk.append([Entry(i, 1, 1, b"x") for i in range(1, 31)])
    save_snapshot(disk, FileMeta(10, 0, 123, "pickle"), b"state at 10")
    read = disk.snapshots.read_encoded

    def read_while_the_disk_lane_publishes(index: int) -> bytes:
        data = read(index)
        save_snapshot(disk, FileMeta(20, 0, 123, "pickle"), b"state at 20")  # the other thread, meanwhile
        return data

    disk.snapshots.read_encoded = read_while_the_disk_lane_publishes
    snap = disk.snapshot()
    meta, body = decode_file("sent", snap.data)
    assert (meta.index, bytes(body)) == (snap.meta.index, b"state at %d" % snap.meta.index)


@pytest.mark.parametrize("read", ["term", "entries"])
def test_a_log_read_overtaken_by_the_disk_lanes_compaction_says_compacted(tmp_path, read):
    """The core reads the log (a leader feeding a lagging follower) while the disk lane
    publishes a snapshot and compacts the journal under it: the read must say
    "compacted" (the leader then sends the snapshot), not raise an IndexError that
    stops the leader's raft loop."""
    # one snapshot kept (``[snapshots] keep = 1``): compaction reaches the newest one
    disk = JournalStorage(str(tmp_path), initial_membership=M, segment_bytes=4096, keep_snapshots=1)
    disk.append([Entry(i, 1, 1, b"x" * 300) for i in range(1, 61)])
    save_snapshot(disk, FileMeta(10, 0, 123, "pickle"), b"state at 10")
    real = getattr(disk.journal, read)

    def overtaken(*args):
        setattr(disk.journal, read, real)
        save_snapshot(disk, FileMeta(50, 0, 123, "pickle"), b"state at 50")  # the disk lane, meanwhile
        assert disk.compact()
        return real(*args)

    setattr(disk.journal, read, overtaken)
    with pytest.raises(CompactedError):
        disk.term(15) if read == "term" else disk.entries(15, 20, None)


def test_a_voter_whose_journal_directory_was_deleted_refuses_to_start_every_time(tmp_path):
    """`rm -r journal` under a voter whose raft-state says it took part in a term: a start
    recreated an empty journal and, unless the stored commit happened to show the loss,
    the node ran with its vote and no log (a CI run saw it start); and once recreated,
    every later start took the empty directory for its log."""
    directory = str(tmp_path / "n1")
    M = Membership(("n1", "n2", "n3"))
    s = JournalStorage(directory, initial_membership=M)
    s.set_hard_state(HardState(3, "n2", 0))
    s.close()
    shutil.rmtree(os.path.join(directory, "journal"))
    for _ in range(2):
        with pytest.raises(RaftError, match="journal is missing, yet raft-state says this node took part in term 3"):
            JournalStorage(directory, initial_membership=M)
    assert not os.path.exists(os.path.join(directory, "journal"))
    JournalStorage(directory, initial_membership=M, lost_tail_ok=True).close()  # cluster recover keeps what is left

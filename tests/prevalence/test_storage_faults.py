"""The real journal, snapshots and recovery on SimFileSystem: crashes, a failed fsync, a full disk.

The rule checked: after any sequence of appends, syncs, truncations and snapshots, and a
power cut at any point (inside an operation too), recovery yields a prefix of the log as
it was, at least as long as what was synced: nothing synced lost, nothing unsynced
invented, a torn tail dropped cleanly.
"""
from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from prevalence.codec import CODEC
from prevalence.entry import Entry, EntryKind
from prevalence.errors import DiskFull, EngineHaltedError
from prevalence.fs import OS
from prevalence.journal import Journal
from prevalence.recovery import recover
from prevalence.simfs import SimFileSystem
from prevalence.snapshots import SnapshotMeta, SnapshotStore, serialize
from prevalence.state import encode_command

from .domain import Put, Store

JDIR, SDIR = "/node/journal", "/node/snapshots"
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 12), st.integers(0, 400)),
        st.tuples(st.just("sync"), st.just(0), st.just(0)),
        st.tuples(st.just("truncate"), st.integers(0, 15), st.just(0)),
        st.tuples(st.just("snapshot"), st.just(0), st.just(0)),
        st.tuples(st.just("reopen"), st.just(0), st.just(0)),
    ),
    max_size=25,
)


def command(index: int, value: int) -> Entry:
    data = encode_command(1_000 + index, CODEC.to_plain(Put(f"k{index}", value)))
    return Entry(index, 0, int(EntryKind.COMMAND), data)


def state_of(values: list[int], upto: int) -> dict:
    return {f"k{i}": v for i, v in enumerate(values[:upto], 1)}


class Machine:
    """A node's storage on a simulated disk, with the model of what it must keep."""

    def __init__(self, fs: SimFileSystem, policy: str, segment: int):
        self.fs, self.policy, self.segment = fs, policy, segment
        self.log: list[int] = []  # the log as the node sees it: entry i puts log[i - 1] at "ki"
        self.synced = 0  # every index up to here must survive a crash
        self.snap = 0  # the newest snapshot's index
        self.open()

    def open(self) -> None:
        self.j = Journal(JDIR, fsync=self.policy, segment_bytes=self.segment, fs=self.fs)
        self.s = SnapshotStore(SDIR, fs=self.fs)

    def run(self, op: str, a: int, b: int, rng: random.Random) -> None:
        j = self.j
        if op == "append":
            for _ in range(a):
                value = rng.randrange(10**6)
                j.append(*command(len(self.log) + 1, value))
                self.log.append(value)
            if b % 2:
                j.wait(j.last_index)
                if self.policy == "always":
                    self.synced = len(self.log)
        elif op == "sync":
            j.sync()
            self.synced = len(self.log)
        elif op == "truncate":
            k = max(len(self.log) - a, self.snap, j.first_index - 1)
            # asked for from here on: a power cut inside the truncation may leave the
            # entries after k or not (both are a prefix of the log as it was)
            self.synced = min(self.synced, k)
            j.truncate_after(k)
            del self.log[k:]
        elif op == "snapshot" and self.log:
            j.sync()  # as the engine does: a snapshot never runs ahead of the journal
            self.synced = index = len(self.log)
            root = Store()
            root.values.update(state_of(self.log, index))
            body, ser = serialize(root)
            self.s.write(SnapshotMeta(index, 0, 1_000 + index, ser), body)
            self.snap = index
            j.compact(min(self.s.indexes()))
        elif op == "reopen":
            j.close()  # a clean close syncs
            self.synced = len(self.log)
            self.open()


def recover_and_check(fs: SimFileSystem, m: Machine) -> None:
    j = Journal(JDIR, fs=fs, segment_bytes=m.segment)
    sm, _warnings = recover(j, SnapshotStore(SDIR, fs=fs), Store)
    got = sm.applied_index
    assert m.synced <= got <= len(m.log), (m.synced, got, len(m.log))  # nothing synced lost or invented
    assert sm.root.values == state_of(m.log, got)  # exactly that prefix, never a stale or torn record
    assert all("torn tail" in w for w in j.warnings)
    j.append(*command(j.last_index + 1, 7))  # the cut tail leaves a journal that takes appends
    j.close()
    again = Journal(JDIR, fs=fs)
    assert again.last_index == got + 1 and not again.warnings
    again.close()


@given(seed=st.integers(0, 2**32), ops=OPS, cut=st.one_of(st.none(), st.integers(0, 300)),
       policy=st.sampled_from(["always", "never"]), segment=st.sampled_from([4096, 1 << 20]))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(seed=0, ops=[("append", 1, 0), ("snapshot", 0, 0), ("append", 1, 0), ("reopen", 0, 0), ("truncate", 1, 0)],
         cut=33, policy="always", segment=4096)  # a cut inside the truncation of a synced entry
def test_after_a_crash_at_any_point_recovery_yields_the_synced_prefix(seed, ops, cut, policy, segment):
    rng = random.Random(seed)
    fs = SimFileSystem(rng)
    m = Machine(fs, policy, segment)
    if cut is not None:
        fs.cut_power_after(cut)
    try:
        for op in ops:
            m.run(*op, rng)
    except Exception:  # noqa: BLE001 - the power cut, seen by the journal as an I/O error
        assert fs.crashed
    recover_and_check(fs.crash(), m)


def test_a_failed_fsync_poisons_the_journal_for_good():
    fs = SimFileSystem(random.Random(1))
    j = Journal(JDIR, fs=fs)
    for i in range(1, 4):
        j.append(*command(i, i))
    j.sync()
    j.append(*command(4, 4))
    fs.fail_fsync = True
    with pytest.raises(EngineHaltedError, match="Input/output error"):
        j.sync()
    fs.fail_fsync = False  # the disk "works" again: the journal must not believe it
    fsyncs = fs.counts["fsync"]
    for attempt in (j.sync, lambda: j.wait(4), lambda: j.append(*command(5, 5)), lambda: j.truncate_after(2),
                    lambda: j.compact(3), lambda: j.reset(10)):
        with pytest.raises(EngineHaltedError, match="stopped after a write failure"):
            attempt()
    assert fs.counts["fsync"] == fsyncs  # never retried
    j.close()
    after = Journal(JDIR, fs=fs.crash())
    assert after.last_index == 3  # entry 4's pages were dropped: a retried fsync would have "saved" zeros


@pytest.mark.parametrize("op", ["truncate", "compact", "rollover"])
def test_a_failed_fsync_in_maintenance_poisons_too(op):
    fs = SimFileSystem(random.Random(2))
    j = Journal(JDIR, fs=fs, segment_bytes=4096)
    for i in range(1, 200):
        j.append(*command(i, i))
    j.sync()
    fs.fail_fsync = True
    with pytest.raises(EngineHaltedError):
        if op == "truncate":
            j.truncate_after(100)
        elif op == "compact":
            j.compact(150)
        else:
            for i in range(200, 400):
                j.append(*command(i, i))
            j.wait(399)
    fs.fail_fsync = False
    with pytest.raises(EngineHaltedError):
        j.append(*command(j.last_index + 1, 0))


def _fill_journal(fs: SimFileSystem, n: int, *, full_at: int | None, free_at: int | None) -> list[str]:
    """Append n entries one sync at a time; the disk fills before entry full_at and is
    freed before free_at; every DiskFull is answered by retrying the same sync later."""
    j = Journal(JDIR, fs=fs, segment_bytes=4096)
    refused = []
    for i in range(1, n + 1):
        if i == full_at:
            fs.fill()
        if i == free_at:
            fs.capacity = None
        j.append(*command(i, i * 31))
        try:
            j.sync()
        except DiskFull as exc:
            refused.append(str(exc))
    while True:  # space is back: the same sync, retried, writes what was kept
        try:
            j.sync()
            break
        except DiskFull:
            fs.capacity = None
    assert [e.index for e in j.iter_entries(1)] == list(range(1, n + 1))
    j.close()
    return refused


@given(seed=st.integers(0, 2**32), n=st.integers(5, 150), data=st.data())
@settings(max_examples=60, deadline=None)
def test_disk_full_then_retry_after_freeing_space_equals_never_full(seed, n, data):
    full_at = data.draw(st.integers(1, n))
    free_at = data.draw(st.integers(full_at, n + 1))
    never = SimFileSystem(random.Random(seed))
    _fill_journal(never, n, full_at=None, free_at=None)
    filled = SimFileSystem(random.Random(seed))
    refused = _fill_journal(filled, n, full_at=full_at, free_at=free_at)
    assert refused or free_at == full_at or full_at == n + 1
    assert all("disk full" in r for r in refused)
    assert filled.files() == never.files()  # byte for byte
    assert filled.crash().files() == never.files()  # and all of it durable


def test_disk_full_while_rolling_over_to_a_new_segment_leaves_no_debris():
    fs = SimFileSystem(random.Random(3))
    j = Journal(JDIR, fs=fs, segment_bytes=4096)
    i = 0
    while True:
        i += 1
        j.append(*command(i, i))
        if len(j.segment_files()) == 2:
            break  # entry i is buffered for a second segment that does not exist yet
        j.sync()
    fs.fill()
    with pytest.raises(DiskFull):
        j.sync()
    assert fs.listdir(JDIR) == [os.path.basename(j.segment_files()[0])]  # the new one's header is gone
    fs.capacity = None
    j.sync()
    j.close()
    assert [e.index for e in Journal(JDIR, fs=fs.crash()).iter_entries(1)] == list(range(1, i + 1))


class _NoEntryFs(SimFileSystem):
    """A full disk that cannot even hold a new directory entry (a full MFT on NTFS, no
    free inode or directory block): creating a file is ENOSPC, not only writing one."""

    no_new_files = False

    def open(self, path, flags, mode=0o644):
        if self.no_new_files and flags & os.O_CREAT and not self.exists(path):
            raise OSError(28, "No space left on device", path)
        return super().open(path, flags, mode)


def test_a_full_disk_that_refuses_the_new_segment_file_is_disk_full_not_a_poisoned_journal():
    fs = _NoEntryFs(random.Random(5))
    j = Journal(JDIR, fs=fs, segment_bytes=4096)
    i = 0
    while True:
        i += 1
        j.append(*command(i, i))
        if len(j.segment_files()) == 2:
            break
        j.sync()
    fs.no_new_files = True
    with pytest.raises(DiskFull):
        j.sync()
    fs.no_new_files = False
    j.sync()  # usable: the same sync retried once space returns
    j.close()
    assert [e.index for e in Journal(JDIR, fs=fs.crash()).iter_entries(1)] == list(range(1, i + 1))


def test_a_snapshot_on_a_full_disk_is_disk_full_and_leaves_no_temp_file():
    fs = SimFileSystem(random.Random(4))
    store = SnapshotStore(SDIR, fs=fs)
    store.write(SnapshotMeta(1, 0, 0, "pickle"), b"old")
    fs.fill()
    with pytest.raises(DiskFull, match="disk full"):
        store.write(SnapshotMeta(2, 0, 0, "pickle"), b"x" * 1000)
    assert fs.listdir(SDIR) == ["snapshot-00000000000000000001.snap"]
    fs.capacity = None
    store.write(SnapshotMeta(2, 0, 0, "pickle"), b"x" * 1000)
    assert SnapshotStore(SDIR, fs=fs.crash()).indexes() == [2, 1]


def test_the_engine_on_a_full_disk_refuses_then_resumes(tmp_path, monkeypatch):
    """What docs/architecture.md promises: the transaction refused with DiskFull is applied
    in memory and becomes durable at the next successful flush; queries never show it
    before that."""
    import prevalence

    from .domain import Get

    db = prevalence.open(str(tmp_path), Store)
    db.execute(Put("a", 1))
    real = os.write

    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(DiskFull):
        db.execute(Put("a", 2))
    with pytest.raises(DiskFull):
        db.query(Get("a"))
    monkeypatch.setattr(os, "write", real)
    assert db.query(Get("a")) == 2  # written now
    assert db.execute(Put("b", 3)) == 3
    db.close()
    with prevalence.open(str(tmp_path), Store) as again:
        assert (again.query(Get("a")), again.query(Get("b"))) == (2, 3)


def test_the_batch_timer_keeps_retrying_a_full_disk_and_syncs_once_space_returns():
    import time

    fs = SimFileSystem(random.Random(8))
    j = Journal(JDIR, fs=fs, fsync="batch", batch_interval=0.001)
    j.append(*command(1, 1))
    j.wait(1)
    fs.fill()
    j.append(*command(2, 2))
    with pytest.raises(DiskFull):
        j.wait(2)
    writes, deadline = fs.counts["write"], time.monotonic() + 5
    while fs.counts["write"] < writes + 3 and time.monotonic() < deadline:
        time.sleep(0.002)  # until the timer has met the full disk a few times
    fs.capacity = None
    deadline = time.monotonic() + 5
    while j.durable_index < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert j.durable_index == 2  # the timer did not give up at the first DiskFull
    j.close()


def test_the_engine_says_a_transaction_refused_on_a_full_disk_is_applied_not_to_be_run_again(tmp_path, monkeypatch):
    """The journal's DiskFull invites a retry of the same ``wait``; from ``execute`` the
    transaction is already applied and buffered, so running it again would count it twice."""
    import prevalence

    from .domain import Add, Get

    db = prevalence.open(str(tmp_path), Store)
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(DiskFull) as refused:
        db.execute(Add("a", 5))
    message = str(refused.value)
    assert "applied" in message and "do not execute it again" in message and "index 1" in message
    monkeypatch.setattr(os, "write", real)
    assert db.query(Get("a")) == 5  # once, durable now: nothing to run again
    db.close()
    with prevalence.open(str(tmp_path), Store) as again:
        assert again.query(Get("a")) == 5


@pytest.mark.parametrize("disk", ["os", "sim"])
@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_segment_deleted_or_replaced_under_the_journal_stops_it_before_it_says_durable(tmp_path, disk, how):
    """An operator's `rm -r`, or a cleaner of old files in /tmp, took the segment being
    written: the writes still succeed into the unlinked file and fsync says yes, but
    nothing of it survives a restart. The journal must stop instead of calling those
    entries durable (its node then stops, and refuses to start on what is left)."""
    fs = SimFileSystem(random.Random(2)) if disk == "sim" else OS
    jdir = str(tmp_path / "journal") if disk == "os" else JDIR
    j = Journal(jdir, fs=fs)
    j.append(*command(1, 1))
    j.sync()
    path = j.segment_files()[-1]
    fs.remove(path)
    if how == "replaced":  # a restore from backup put another file in its place
        fd = fs.open(path, os.O_WRONLY | os.O_CREAT)
        fs.close(fd)
    j.append(*command(2, 2))
    with pytest.raises(EngineHaltedError, match="deleted or replaced"):
        j.sync()
    assert j.durable_index == 1
    with pytest.raises(EngineHaltedError):
        j.append(*command(3, 3))
    j.close()

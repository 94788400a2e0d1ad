"""The journal on its own: a model-checked log, torn tails, damage in the middle."""
from __future__ import annotations

import logging
import os
import threading
import time

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from prevalence import EngineHaltedError, Entry, Journal, JournalCorruptError, PrevalenceError
from prevalence.errors import DiskFull
from prevalence.segment import RECORD_HEADER, SEGMENT_HEADER

from .disks import make_disk


def fill(j: Journal, n: int, start: int | None = None, term: int = 1, size: int = 10) -> list[Entry]:
    start = j.last_index + 1 if start is None else start
    out = []
    for i in range(start, start + n):
        e = Entry(i, term, 1, bytes([i % 251]) * size)
        j.append(*e)
        out.append(e)
    j.wait(j.last_index)
    return out


class JournalModel(RuleBasedStateMachine):
    """Every operation a Raft log needs, against a plain list, with reopen in between."""

    kind = "os"

    def __init__(self):
        super().__init__()
        import tempfile

        self.dir = tempfile.mkdtemp(prefix="journal-model-")
        self.fs = make_disk(self.kind, self.dir).fs
        self.model: dict[int, Entry] = {}
        self.first = 1
        self.next = 1
        self.term = 1

    @initialize(segment=st.sampled_from([4096, 8192, 1 << 20]), policy=st.sampled_from(["always", "batch", "never"]))
    def open(self, segment, policy):
        self.segment, self.policy = segment, policy
        self.j = Journal(self.dir, segment_bytes=segment, fsync=policy, fs=self.fs)

    @rule(payloads=st.lists(st.binary(max_size=700), min_size=1, max_size=20), bump=st.booleans())
    def append(self, payloads, bump):
        if bump:
            self.term += 1
        entries = [Entry(self.next + k, self.term, k % 3, p) for k, p in enumerate(payloads)]
        self.j.extend(entries)
        for e in entries:
            self.model[e.index] = e
        self.next += len(entries)

    @rule(back=st.integers(0, 30))
    def truncate(self, back):
        index = max(self.first - 1, self.next - 1 - back)
        self.j.truncate_after(index)
        for i in range(index + 1, self.next):
            del self.model[i]
        self.next = index + 1

    @rule(ahead=st.integers(-3, 120))
    def compact(self, ahead):
        upto = self.first - 1 + ahead
        self.j.compact(upto)
        new_first = self.j.first_index
        assert new_first == self.first or new_first <= upto + 1  # nothing after upto is lost
        for i in range(self.first, new_first):
            del self.model[i]
        self.first = new_first

    @rule(gap=st.integers(1, 50))
    def reset(self, gap):
        self.next = self.next + gap
        self.j.reset(self.next)
        self.model.clear()
        self.first = self.next

    @rule()
    def reopen(self):
        self.j.close()
        self.j = Journal(self.dir, segment_bytes=self.segment, fsync=self.policy, fs=self.fs)
        if not self.model:  # an empty journal forgets where it was reset to
            self.first = self.next = self.j.last_index + 1

    @rule(data=st.data())
    def read_with_budget(self, data):
        if self.next == self.first:
            return
        lo = data.draw(st.integers(self.first, self.next - 1))
        hi = data.draw(st.integers(lo, self.next))
        budget = data.draw(st.one_of(st.none(), st.integers(1, 3000)))
        got = self.j.entries(lo, hi, budget)
        want = [self.model[i] for i in range(lo, hi)]
        if budget is None or not want:
            assert got == want
        else:
            assert got == want[: len(got)] and len(got) >= 1
            framed = sum(RECORD_HEADER.size + len(e.data) for e in got)
            assert len(got) == 1 or framed <= budget

    @invariant()
    def matches(self):
        if not hasattr(self, "j"):
            return
        assert self.j.first_index == self.first
        assert self.j.last_index == self.next - 1
        assert list(self.j.iter_entries(self.first)) == [self.model[i] for i in range(self.first, self.next)]
        for i in range(self.first, self.next):
            assert self.j.term(i) == self.model[i].term

    def teardown(self):
        if hasattr(self, "j"):
            self.j.close()
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


JournalModel.TestCase.settings = settings(
    max_examples=60, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_journal_model = JournalModel.TestCase


class SimJournalModel(JournalModel):
    kind = "sim"


SimJournalModel.TestCase.settings = JournalModel.TestCase.settings
test_journal_model_on_simfs = SimJournalModel.TestCase


def test_out_of_order_append_is_refused(disk):
    with Journal(disk.dir, fs=disk.fs) as j:
        j.append(1, 0, 1, b"a")
        with pytest.raises(PrevalenceError, match="out of order: got index 3, expected 2"):
            j.append(3, 0, 1, b"c")


def test_segments_roll_over_and_reads_span_them(disk):
    with Journal(disk.dir, segment_bytes=4096, fs=disk.fs) as j:
        entries = fill(j, 500, size=50)
        assert len(j.segment_files()) > 5
        assert j.entries(1, 501) == entries
        assert j.entries(37, 400, max_bytes=500) == entries[36 : 36 + len(j.entries(37, 400, max_bytes=500))]
    with Journal(disk.dir, segment_bytes=4096, fs=disk.fs) as j:
        assert list(j.iter_entries(1)) == entries


def _last_record_offset(data: bytes) -> int:
    pos, last = SEGMENT_HEADER.size, None
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "little")
        last = pos
        pos += RECORD_HEADER.size + length
    return last


def test_torn_tail_at_every_byte_offset_is_cut_off_with_a_warning(disk, caplog):
    src = disk.path("src")
    with Journal(src, fs=disk.fs) as j:
        entries = fill(j, 5, size=40)
    seg = j.segment_files()[0]
    good = disk.read(seg)
    start = _last_record_offset(good)
    for cut in range(start, len(good)):
        d = disk.path(f"cut{cut}")
        disk.fs.makedirs(d)
        disk.write(os.path.join(d, os.path.basename(seg)), good[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="prevalence.journal"):
            with Journal(d, fs=disk.fs) as j:
                assert list(j.iter_entries(1)) == entries[:4], cut
                j.append(5, 1, 1, b"again")
                j.wait(5)
        if cut > start:
            assert "torn tail" in caplog.text
        assert disk.size(os.path.join(d, os.path.basename(seg))) == start + RECORD_HEADER.size + 5
        with Journal(d, fs=disk.fs) as j:
            assert j.last_index == 5 and j.entries(5, 6)[0].data == b"again"


def test_torn_tail_of_zeros_after_the_last_record_is_cut(disk):
    with Journal(disk.dir, fs=disk.fs) as j:
        entries = fill(j, 3)
    seg = j.segment_files()[0]
    disk.write(seg, disk.read(seg) + b"\0" * 300)  # a filesystem that extended the file before the crash
    with Journal(disk.dir, fs=disk.fs) as j:
        assert list(j.iter_entries(1)) == entries
        assert j.warnings and "torn tail" in j.warnings[0]


@pytest.mark.parametrize("where", ["header", "payload"])
def test_flipped_byte_mid_file_is_an_error_naming_file_and_offset(disk, where):
    with Journal(disk.dir, fs=disk.fs) as j:
        fill(j, 10, size=30)
    seg = j.segment_files()[0]
    data = bytearray(disk.read(seg))
    rec = SEGMENT_HEADER.size + 4 * (RECORD_HEADER.size + 30)  # the 5th record
    data[rec + (6 if where == "header" else RECORD_HEADER.size + 3)] ^= 0x40
    disk.write(seg, bytes(data))
    before = bytes(data)
    with pytest.raises(JournalCorruptError) as info:
        Journal(disk.dir, fs=disk.fs)
    assert info.value.path == seg and info.value.offset == rec
    assert seg in str(info.value) and f"offset {rec}" in str(info.value)
    assert disk.read(seg) == before  # nothing modified


def test_flipped_byte_in_an_older_segment_is_an_error(disk):
    with Journal(disk.dir, segment_bytes=4096, fs=disk.fs) as j:
        fill(j, 300, size=40)
    first = j.segment_files()[0]
    data = bytearray(disk.read(first))
    data[-5] ^= 1  # inside the last record of a segment that is not the last one
    disk.write(first, bytes(data))
    with pytest.raises(JournalCorruptError, match="payload checksum mismatch"):
        Journal(disk.dir, fs=disk.fs)


def test_missing_segment_is_an_error(disk):
    with Journal(disk.dir, segment_bytes=4096, fs=disk.fs) as j:
        fill(j, 300, size=40)
    files = j.segment_files()
    disk.fs.remove(files[1])
    with pytest.raises(JournalCorruptError, match="a segment is missing"):
        Journal(disk.dir, fs=disk.fs)


def test_group_commit_many_writers_share_fsyncs(tmp_path, monkeypatch):
    calls = []
    real = os.fsync

    def slow_fsync(fd):  # a disk's fsync takes time: writers arriving meanwhile must share the next
        calls.append(fd)
        real(fd)
        time.sleep(0.002)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    j = Journal(tmp_path)
    lock = threading.Lock()
    done = []

    def writer(n):
        for _ in range(n):
            with lock:
                i = j.last_index + 1
                j.append(i, 0, 1, b"x" * 20)
            j.wait(i)
            done.append(i)

    threads = [threading.Thread(target=writer, args=(50,)) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    j.close()
    assert sorted(done) == list(range(1, 801))
    assert len(calls) < 400  # shared: far fewer fsyncs than acknowledged entries


def test_write_io_error_halts_the_journal(tmp_path, monkeypatch):
    j = Journal(tmp_path)
    fill(j, 2)

    def broken(fd, data):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "write", broken)
    j.append(3, 0, 1, b"x")
    with pytest.raises(EngineHaltedError, match="Input/output error"):
        j.wait(3)
    monkeypatch.undo()
    with pytest.raises(PrevalenceError, match="stopped after a write failure"):
        j.append(4, 0, 1, b"y")
    with pytest.raises(EngineHaltedError, match="stopped after a write failure"):
        j.sync()  # not retried, though the disk works again
    j.close()
    with Journal(tmp_path) as j2:
        assert j2.last_index == 2


def test_a_full_disk_on_the_real_os_path_is_disk_full_and_the_retry_writes(tmp_path, monkeypatch):
    """ENOSPC as os.write reports it: a short write, then the error (SimFileSystem tears harder)."""
    j = Journal(tmp_path)
    fill(j, 2)
    real = os.write
    calls = []

    def short_then_full(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real(fd, bytes(data[:7]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full)
    j.append(3, 0, 1, b"x" * 30)
    with pytest.raises(DiskFull, match="No space left on device"):
        j.wait(3)
    assert os.path.getsize(j.segment_files()[0]) == SEGMENT_HEADER.size + 2 * (RECORD_HEADER.size + 10)
    monkeypatch.undo()
    j.append(4, 0, 1, b"y")  # still usable
    j.wait(4)
    j.close()
    with Journal(tmp_path) as j2:
        assert [e.data for e in j2.iter_entries(3)] == [b"x" * 30, b"y"] and not j2.warnings


def test_compact_removes_exactly_the_segments_wholly_covered(disk):
    with Journal(disk.dir, segment_bytes=4096, fs=disk.fs) as j:
        entries = fill(j, 400, size=40)
        firsts = [int(os.path.basename(p)[:20]) for p in j.segment_files()]
        seg2_last = firsts[2] - 1  # the last index of the second segment
        assert j.compact(seg2_last - 1) == 1  # the second segment still holds seg2_last
        assert j.first_index == firsts[1]
        assert j.compact(seg2_last) == 1
        assert j.first_index == firsts[2]
        assert list(j.iter_entries(j.first_index)) == entries[firsts[2] - 1 :]
        assert j.compact(10_000) == len(firsts) - 3  # never the newest segment
        assert j.last_index == 400 and j.entries(400, 401) == entries[-1:]


def test_reads_after_truncate_and_rewrite_see_the_new_records(disk):
    """Regression: a buffered read handle served the old bytes of a rewritten region."""
    with Journal(disk.dir, fs=disk.fs) as j:
        fill(j, 20, term=1, size=30)
        assert [e.term for e in j.entries(5, 6)] == [1]  # a buffered reader would keep what follows
        j.truncate_after(10)
        for i in range(11, 21):
            j.append(i, 2, 1, b"new-%d" % i)
        j.wait(20)
        got = j.entries(5, 21)
        assert [e.term for e in got] == [1] * 6 + [2] * 10
        assert got[-1].data == b"new-20"

"""The journal: a segmented, append-only log of entries with group commit.

Built to be the Raft log as well as the engine's journal: every entry carries an index and
a term, a range is read by index through in-memory offsets, a suffix can be truncated
(a follower dropping a conflicting tail), a prefix compacted (segments a snapshot covers),
and the whole log reset to start after an installed snapshot.

Concurrency: appends are cheap (frame into a memory buffer under a lock). ``wait(index)``
makes an entry durable: the first waiting thread that finds no flush under way writes the
whole buffer and fsyncs once for everybody (group commit); the others sleep until it is
done. So with one writer there is no thread hand-off at all, and with many, one fsync
covers many transactions.

All file I/O goes through an injected :class:`~prevalence.fs.FileSystem`. Storage failures
(docs/architecture.md): a failed fsync, or any I/O error while the journal changes its
files, *poisons* it: EngineHaltedError now and for every later write. An fsync is never
retried: after a failed one the kernel may have dropped the dirty pages, so a retry that
"succeeds" proves nothing (PostgreSQL's "fsyncgate"); reopening recovers from the disk.
A write that finds the disk full (ENOSPC) cuts the segment back to its last whole record,
keeps the unwritten records buffered and raises DiskFull; the journal stays usable, and
the same ``wait``/``sync`` retried once space returns leaves files byte for byte those of
a journal that never filled.
"""
from __future__ import annotations

import bisect
import logging
import os
import threading
from typing import Callable, Iterable, Iterator

from . import _platform
from .entry import Entry
from .errors import ClosedError, DiskFull, EngineHaltedError, JournalCorruptError, PrevalenceError
from .fs import CREATE, OS, READ, WRITE, FileSystem, make_dirs, read_range, write_all
from .segment import MAX_SEGMENT_BYTES, SEGMENT_HEADER, OpenSegment, frame, parse_records, scan_directory, segment_header, segment_name

log = logging.getLogger("prevalence.journal")

FSYNC_POLICIES = ("always", "batch", "never")
DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024


class _NoSpace(Exception):
    """Internal: a write found the disk full; ``left`` are the chunks not written."""

    def __init__(self, left: list, exc: OSError):
        super().__init__(str(exc))
        # copies: the traceback keeps views of the written buffers alive, and a bytearray
        # with a live view cannot grow when the next append extends it
        self.left, self.exc = [(seg, bytearray(data)) for seg, data in left], exc


def _first(seg: OpenSegment) -> int:
    return seg.first


class Journal:
    """Segmented log of :class:`Entry` with group commit; see the module docstring."""

    def __init__(
        self,
        directory: str,
        *,
        fsync: str = "always",
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        batch_interval: float = 0.005,
        read_only: bool = False,
        fs: FileSystem = OS,
    ):
        if fsync not in FSYNC_POLICIES:
            raise PrevalenceError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, not {fsync!r}")
        self.directory = os.path.abspath(directory)
        self.fs = fs
        self._fs_write = fs.write  # bound once: the append path is hot
        self.fsync = fsync
        self.read_only = read_only
        self._segment_bytes = min(MAX_SEGMENT_BYTES, max(4096, int(segment_bytes)))  # scans refuse longer files
        self._cond = threading.Condition(threading.Lock())
        self._read_lock = threading.Lock()
        self._segments: list[OpenSegment] = []
        self._term_starts: list[int] = []
        self._term_values: list[int] = []
        self._pending: list[tuple[OpenSegment, bytearray]] = []
        self._writer: OpenSegment | None = None
        self._flushing = False
        self._waiters = 0  # threads sleeping until a flush completes
        self._failed: BaseException | None = None
        self._full = False  # the last write found the disk full (said once, not per retry)
        self._closed = False
        self.warnings: list[str] = []
        if not read_only:
            make_dirs(fs, self.directory)
        self._recover()
        self._next_index = self._segments[-1].last + 1 if self._segments else 1
        self._written = self._synced = self._next_index - 1
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        if fsync == "batch" and not read_only:
            self._batch_interval = batch_interval
            self._timer = threading.Thread(target=self._batch_loop, name="journal-fsync", daemon=True)
            self._timer.start()

    # -- recovery ---------------------------------------------------------------------
    def _recover(self) -> None:
        fs = self.fs
        for path, res in scan_directory(self.directory, fs):
            if res.torn is not None:
                self._cut_tail(path, res.valid_bytes, res.file_bytes, res.torn)
                if res.valid_bytes < SEGMENT_HEADER.size or not res.offsets:
                    if not self.read_only:
                        fs.remove(path)
                        fs.fsync_dir(self.directory)
                    continue
            self._segments.append(OpenSegment(res.first_index, path, res.offsets, res.valid_bytes))
            for start, term in res.terms:
                self._note_term(start, term)
        if self._segments and not self.read_only:
            tail = self._segments[-1]
            tail.wfd = fs.open(tail.path, WRITE)
            fs.lseek(tail.wfd, 0, os.SEEK_END)
            self._writer = tail

    def _cut_tail(self, path: str, valid: int, size: int, why: str) -> None:
        msg = f"{path}: cut off a torn tail at byte offset {valid} ({size - valid} bytes): {why}"
        self.warnings.append(msg)
        if self.read_only:
            log.warning("%s (read-only: file left as it is)", msg)
            return
        log.warning("%s", msg)
        fd = self.fs.open(path, WRITE)
        try:
            self.fs.ftruncate(fd, valid)
            self.fs.fsync(fd)
        finally:
            self.fs.close(fd)

    def _note_term(self, index: int, term: int) -> None:
        if not self._term_values or self._term_values[-1] != term:
            self._term_starts.append(index)
            self._term_values.append(term)

    # -- positions --------------------------------------------------------------------
    @property
    def first_index(self) -> int:
        """The oldest index still held (``last_index + 1`` when the journal is empty)."""
        return self._segments[0].first if self._segments else self._next_index

    @property
    def last_index(self) -> int:
        """The newest index appended, durable or not (0 when nothing was ever written)."""
        return self._next_index - 1

    @property
    def written_index(self) -> int:
        return self._written

    @property
    def durable_index(self) -> int:
        return self._synced

    def term(self, index: int) -> int:
        # under the read lock: a compaction between the check and the lookup made it
        # return the newest term for an index it had just removed
        with self._read_lock:
            if not (self.first_index <= index <= self.last_index):
                raise IndexError(f"index {index} is not in the journal ({self.first_index}..{self.last_index})")
            k = bisect.bisect_right(self._term_starts, index) - 1
            return self._term_values[k]

    # -- appending --------------------------------------------------------------------
    def append(self, index: int, term: int, kind: int, data: bytes) -> None:
        """Buffer one entry; it is durable once ``wait(index)`` returns."""
        rec = frame(index, term, kind, data)
        with self._cond:
            self._check_usable()
            if index != self._next_index:
                raise PrevalenceError(f"journal append out of order: got index {index}, expected {self._next_index}")
            self._add(index, term, rec)

    def extend(self, entries: Iterable[Entry]) -> None:
        """Buffer several entries (a Raft batch) under one lock."""
        with self._cond:
            self._check_usable()
            for e in entries:
                if e.index != self._next_index:
                    raise PrevalenceError(f"journal append out of order: got index {e.index}, expected {self._next_index}")
                self._add(e.index, e.term, frame(e.index, e.term, e.kind, e.data))

    def _add(self, index: int, term: int, rec: bytes) -> None:
        seg = self._segments[-1] if self._segments else None
        if seg is None or (seg.size >= self._segment_bytes and seg.offsets):
            seg = OpenSegment(index, os.path.join(self.directory, segment_name(index)))
            self._segments.append(seg)
        seg.offsets.append(seg.size)
        seg.size += len(rec)
        if self._pending and self._pending[-1][0] is seg:
            self._pending[-1][1].extend(rec)
        else:
            self._pending.append((seg, bytearray(rec)))
        if not self._term_values or self._term_values[-1] != term:
            self._term_starts.append(index)
            self._term_values.append(term)
        self._next_index = index + 1

    def _check_usable(self) -> None:
        if self._closed:
            raise ClosedError(f"journal {self.directory} is closed")
        if self.read_only:
            raise PrevalenceError(f"journal {self.directory} was opened read-only")
        if self._failed is not None:
            raise EngineHaltedError(
                f"journal {self.directory} stopped after a write failure ({self._failed!r}); "
                "reopen it to recover from what is on disk"
            )

    # -- durability -------------------------------------------------------------------
    def wait(self, index: int) -> None:
        """Return once entry ``index`` is acknowledged under the fsync policy.

        ``always``: on disk (fsynced). ``batch`` and ``never``: handed to the operating
        system, so a crash of this process loses nothing; ``batch`` fsyncs every few ms.
        """
        self._flush(index, durable=self.fsync == "always")

    def sync(self) -> None:
        """Force everything appended so far onto the disk, whatever the policy."""
        self._flush(self.last_index, durable=True)

    def _flush(self, index: int, durable: bool) -> None:
        if (self._synced if durable else self._written) >= index and self._failed is None:
            return  # the common case for queries: nothing to wait for, no lock taken
        with self._cond:
            while True:
                if self._failed is not None:
                    self._check_usable()
                if (self._synced if durable else self._written) >= index:
                    return
                if not self._flushing:
                    break
                self._waiters += 1
                self._cond.wait()
                self._waiters -= 1
            self._flushing = True
            chunks, self._pending = self._pending, []
            target = self._next_index - 1
        do_sync = durable or self.fsync == "always"
        try:
            self._write(chunks, do_sync)
        except BaseException as exc:
            with self._cond:
                self._flushing = False
                self._cond.notify_all()
                err = self._failure(exc)
            raise err from (exc.exc if isinstance(exc, _NoSpace) else exc)
        with self._cond:
            if self._full:
                self._full = False
                log.warning("journal %s: writing again after a full disk", self.directory)
            self._written = max(self._written, target)
            if do_sync:
                self._synced = max(self._synced, target)
            self._flushing = False
            if self._waiters:
                self._cond.notify_all()

    def _failure(self, exc: BaseException) -> PrevalenceError:
        """The error to raise for a failed write: DiskFull (the unwritten chunks go back
        in front of the buffer), else the journal is poisoned. Called with ``_cond`` held."""
        if isinstance(exc, _NoSpace):
            self._pending[:0] = exc.left
            if not self._full:
                log.warning("journal %s: disk full; unwritten entries kept for a retry", self.directory)
            self._full = True
            return DiskFull(f"journal {self.directory}: disk full ({exc.exc}); nothing lost, retry once space returns")
        if self._failed is None:
            self._failed = exc
        log.error("journal %s: write failed: %r", self.directory, exc)
        return EngineHaltedError(f"journal {self.directory}: write failed: {exc}")

    def _write(self, chunks: list[tuple[OpenSegment, bytearray]], do_sync: bool) -> None:
        """Write buffered chunks in order; called only by the thread holding the flush token.

        A full disk raises _NoSpace after cutting the file back to where the failed chunk
        began (the end of a whole record); any other error propagates and poisons.
        """
        write = self._fs_write
        for n, (seg, data) in enumerate(chunks):
            if seg is not self._writer:
                self._open_segment(seg, chunks[n:])
            view = memoryview(data)
            try:
                while view:
                    view = view[write(seg.wfd, view):]
            except OSError as exc:
                if not _platform.is_disk_full(exc):
                    raise
                self.fs.ftruncate(seg.wfd, seg.written)  # a shorter file needs no space
                self.fs.lseek(seg.wfd, seg.written, os.SEEK_SET)
                raise _NoSpace(chunks[n:], exc) from exc
            seg.written += len(data)
        writer = self._writer
        if do_sync and writer is not None and writer.wfd is not None:
            self.fs.fsync(writer.wfd)
            # Written and synced into a file that an `rm -r` or a cleaner of old files took
            # away, it is on no disk a restart will read: not durable, whatever fsync said.
            if not self.fs.same_file(writer.wfd, writer.path):
                raise PrevalenceError(f"journal segment {writer.path} was deleted or replaced while this process "
                                      "wrote it: what it held since is on no disk a restart reads")

    def _open_segment(self, seg: OpenSegment, left: list) -> None:
        fs = self.fs
        old = self._writer
        if old is not None and old.wfd is not None:
            fs.fsync(old.wfd)  # an older segment is always complete on disk before a newer one exists
            fs.close(old.wfd)
            old.wfd = None
        try:
            fd = fs.open(seg.path, CREATE)  # a full disk may refuse the directory entry itself
        except OSError as exc:
            if not _platform.is_disk_full(exc):
                raise
            raise _NoSpace(left, exc) from exc
        try:
            write_all(fs, fd, segment_header(seg.first))
        except OSError as exc:
            fs.close(fd)
            if not _platform.is_disk_full(exc):
                raise
            fs.remove(seg.path)  # recreated by the retry; a crash before would drop it as torn
            raise _NoSpace(left, exc) from exc
        seg.written = SEGMENT_HEADER.size
        fs.fsync(fd)
        fs.fsync_dir(self.directory)
        seg.wfd = fd
        self._writer = seg

    def _batch_loop(self) -> None:
        while not self._stop.wait(self._batch_interval):
            if self._synced < self._next_index - 1 and not self._closed:
                try:
                    self._flush(self._next_index - 1, durable=True)
                except DiskFull:
                    continue  # retried at the next tick: space may have returned
                except PrevalenceError:
                    return

    # -- exclusive maintenance (truncate, compact, reset) -----------------------------
    def _take_token(self) -> list[tuple[OpenSegment, bytearray]]:
        with self._cond:
            self._check_usable()
            while self._flushing:
                self._waiters += 1
                self._cond.wait()
                self._waiters -= 1
                self._check_usable()
            self._flushing = True
            chunks, self._pending = self._pending, []
            return chunks

    def _give_token(self, exc: BaseException | None = None) -> PrevalenceError | None:
        """Release the flush token; for a failed operation, the error to raise (see _failure)."""
        with self._cond:
            self._flushing = False
            self._cond.notify_all()
            return None if exc is None else self._failure(exc)

    def _exclusive(self, work: Callable[[list], int | None]) -> int | None:
        """Run ``work(chunks)`` holding the flush token; a failure poisons the journal,
        except a full disk while writing what was buffered (DiskFull, nothing changed)."""
        chunks = self._take_token()
        try:
            result = work(chunks)
        except BaseException as exc:
            err = self._give_token(exc)
            raise err from (exc.exc if isinstance(exc, _NoSpace) else exc)
        self._give_token()
        return result

    def truncate_after(self, index: int) -> None:
        """Remove every entry after ``index`` (a Raft follower dropping a conflicting suffix)."""
        if index >= self.last_index:
            return
        if index < self.first_index - 1:
            raise PrevalenceError(f"cannot truncate after {index}: entries before {self.first_index} were compacted")
        self._exclusive(lambda chunks: self._truncate(chunks, index))

    def _truncate(self, chunks: list[tuple[OpenSegment, bytearray]], index: int) -> None:
        fs = self.fs
        self._write(chunks, False)
        with self._read_lock, self._cond:
            while self._segments and self._segments[-1].first > index:
                seg = self._segments.pop()
                seg.close(fs)
                if fs.exists(seg.path):
                    fs.remove(seg.path)
                if self._writer is seg:
                    self._writer = None
            if self._segments:
                seg = self._segments[-1]
                cut = seg.end_of(index)
                del seg.offsets[index - seg.first + 1 :]
                seg.size = seg.written = cut
                if seg.wfd is None:
                    seg.wfd = fs.open(seg.path, WRITE)
                    self._writer = seg
                fs.ftruncate(seg.wfd, cut)
                fs.lseek(seg.wfd, 0, os.SEEK_END)
                fs.fsync(seg.wfd)
            fs.fsync_dir(self.directory)
            k = bisect.bisect_right(self._term_starts, index)
            del self._term_starts[k:], self._term_values[k:]
            self._next_index = index + 1
            self._written = min(self._written, index)
            self._synced = min(self._synced, index)

    def compact(self, upto: int) -> int:
        """Delete whole segments holding only entries <= ``upto``; returns how many.

        The newest segment is never deleted, so the log keeps its last index.
        """
        def work(chunks: list[tuple[OpenSegment, bytearray]]) -> int:
            fs, removed = self.fs, 0
            self._write(chunks, False)
            with self._read_lock, self._cond:
                while len(self._segments) > 1 and self._segments[0].last <= upto:
                    seg = self._segments[0]
                    seg.close(fs)
                    try:
                        fs.remove(seg.path)
                    except OSError as exc:  # a reader holds it (Windows): kept with all after it, no hole
                        log.warning("journal %s: %s kept for the next compaction: %s", self.directory, seg.path, exc)
                        break
                    self._segments.pop(0)
                    removed += 1
                if removed:
                    fs.fsync_dir(self.directory)
                    first = self.first_index
                    k = max(0, bisect.bisect_right(self._term_starts, first) - 1)
                    del self._term_starts[:k], self._term_values[:k]
            return removed

        return self._exclusive(work) or 0

    def reset(self, next_index: int) -> None:
        """Drop every entry; the next append gets ``next_index`` (after installing a snapshot)."""
        def work(_chunks: list[tuple[OpenSegment, bytearray]]) -> None:
            fs = self.fs
            with self._read_lock, self._cond:
                for seg in self._segments:
                    seg.close(fs)
                    if fs.exists(seg.path):
                        fs.remove(seg.path)
                self._segments.clear()
                self._writer = None
                fs.fsync_dir(self.directory)
                self._term_starts.clear()
                self._term_values.clear()
                self._next_index = next_index
                self._written = self._synced = next_index - 1

        self._exclusive(work)

    # -- reading ----------------------------------------------------------------------
    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``lo <= index < hi``; with ``max_bytes``, as many as fit (at least one)."""
        if lo < self.first_index or hi > self._next_index or lo > hi:
            raise IndexError(f"entries {lo}..{hi - 1} are not all in the journal ({self.first_index}..{self.last_index})")
        if lo == hi:
            return []
        self._flush(hi - 1, durable=False)
        out: list[Entry] = []
        budget = max_bytes
        with self._read_lock:
            if lo < self.first_index:  # compacted since the check above (another thread)
                raise IndexError(f"entries {lo}..{hi - 1} are not all in the journal ({self.first_index}.."
                                 f"{self.last_index})")
            k = self._segment_at(lo)
            while lo < hi:
                seg = self._segments[k]
                stop = min(hi, seg.last + 1)
                start_off = seg.offsets[lo - seg.first]
                truncated = False
                if budget is not None:
                    # the offsets tell how many records fit, without reading them
                    limit = start_off + budget
                    j = lo
                    while j < stop and (seg.end_of(j) <= limit or (j == lo and not out)):
                        j += 1
                    if j == lo:
                        break
                    truncated, stop = j < stop, j
                end_off = seg.end_of(stop - 1)
                out.extend(parse_records(self._read(seg, start_off, end_off), seg.path, start_off))
                if budget is not None:
                    budget -= end_off - start_off
                    if truncated or budget <= 0:
                        break
                lo = stop
                k += 1
        return out

    def iter_entries(self, lo: int, hi: int | None = None, chunk: int = 4096) -> Iterator[Entry]:
        """Stream entries from ``lo`` (for replay and dumps) without holding them all."""
        hi = self._next_index if hi is None else min(hi, self._next_index)
        lo = max(lo, self.first_index)
        while lo < hi:
            batch = self.entries(lo, min(hi, lo + chunk))
            yield from batch
            lo += len(batch)

    def _segment_at(self, index: int) -> int:
        return bisect.bisect_right(self._segments, index, key=_first) - 1

    def _read(self, seg: OpenSegment, start: int, end: int) -> bytes:
        if seg.rfd is None:
            # Unbuffered reads: a buffered reader would serve bytes it read ahead of a
            # region that a truncation has since rewritten.
            seg.rfd = self.fs.open(seg.path, READ)
        data = read_range(self.fs, seg.rfd, start, end - start)
        if len(data) != end - start:
            raise JournalCorruptError(f"short read ({len(data)} of {end - start} bytes)", path=seg.path, offset=start)
        return data

    def segment_files(self) -> list[str]:
        return [s.path for s in self._segments]

    # -- closing ----------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        try:
            if not self.read_only and self._failed is None:
                self.sync()
        finally:
            self._stop.set()
            if self._timer is not None:
                self._timer.join()
            with self._cond:
                self._closed = True
                for seg in self._segments:
                    seg.close(self.fs)

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

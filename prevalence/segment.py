"""The on-disk format of journal segments, and the scan that validates one.

A segment is ``<first index, 20 digits>.log``: a 20-byte header, then records. A record is
a 29-byte header (payload length, index, term, kind, header CRC32, payload CRC32) and the
payload. The header has its own checksum so that a damaged length is never trusted: we
can tell a torn tail (nothing valid after it: cut it off) from damage in the middle
(valid records follow: refuse, name the file and offset).
"""
from __future__ import annotations

import os
import struct
from array import array
from dataclasses import dataclass, field
from typing import Iterator
from zlib import crc32

from .entry import Entry
from .errors import JournalCorruptError, PrevalenceError
from .fs import OS, READ, FileSystem, read_range

SEGMENT_MAGIC = b"PVJL"
SEGMENT_FORMAT = 1
SEGMENT_HEADER = struct.Struct("<4sHHQI")  # magic, format, reserved, first index, crc32
RECORD_HEADER = struct.Struct("<IQQBII")  # length, index, term, kind, header crc, payload crc
_HCRC_SPAN = 21  # bytes of the record header covered by the header crc
MAX_RECORD = 256 * 1024 * 1024  # a length above this is damage, not data
MAX_SEGMENT_BYTES = 256 * 1024 * 1024  # the most a journal lets a segment grow before it rolls over
#: the largest file a journal writes as one segment: it rolls over once past MAX_SEGMENT_BYTES,
#: so a segment holds at most that and one more record; anything longer is damage
MAX_SEGMENT_FILE = SEGMENT_HEADER.size + MAX_SEGMENT_BYTES + RECORD_HEADER.size + MAX_RECORD
SUFFIX = ".log"

_pack_rec = RECORD_HEADER.pack
_unpack_rec = RECORD_HEADER.unpack_from
_pack_hcrc_span = struct.Struct("<IQQB").pack


def segment_name(first_index: int) -> str:
    return f"{first_index:020d}{SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    stem, ext = os.path.splitext(name)
    if ext != SUFFIX or len(stem) != 20 or not stem.isdigit():
        return None
    return int(stem)


def segment_header(first_index: int) -> bytes:
    head = struct.pack("<4sHHQ", SEGMENT_MAGIC, SEGMENT_FORMAT, 0, first_index)
    return head + struct.pack("<I", crc32(head))


def frame(index: int, term: int, kind: int, data: bytes) -> bytes:
    """One record, ready to append."""
    if len(data) > MAX_RECORD:  # a record the scan would refuse as damage is never written
        raise PrevalenceError(f"a journal record holds at most {MAX_RECORD} bytes, not {len(data)} (entry {index})")
    span = _pack_hcrc_span(len(data), index, term, kind)
    return _pack_rec(len(data), index, term, kind, crc32(span), crc32(data)) + data


def parse_records(buf: bytes | memoryview, path: str, base_offset: int) -> list[Entry]:
    """Decode a run of records already validated by a scan (checksums checked again)."""
    out: list[Entry] = []
    append = out.append
    pos, end = 0, len(buf)
    hsize = RECORD_HEADER.size
    mv = memoryview(buf)
    while pos < end:
        length, index, term, kind, hcrc, pcrc = _unpack_rec(buf, pos)
        data = bytes(mv[pos + hsize : pos + hsize + length])
        if crc32(data) != pcrc or crc32(mv[pos : pos + _HCRC_SPAN]) != hcrc:
            raise JournalCorruptError(f"checksum mismatch in record {index}", path=path, offset=base_offset + pos)
        append(Entry(index, term, kind, data))
        pos += hsize + length
    return out


@dataclass
class ScanResult:
    """What a scan learned about one segment file."""

    first_index: int
    offsets: array = field(default_factory=lambda: array("Q"))
    terms: list[tuple[int, int]] = field(default_factory=list)  # (first index, term) runs
    valid_bytes: int = 0  # the end of the last good record
    file_bytes: int = 0
    torn: str | None = None  # why the bytes after valid_bytes were judged a torn tail

    @property
    def last_index(self) -> int:
        return self.first_index + len(self.offsets) - 1


def scan(path: str, buf: bytes, expected_first: int | None, *, last: bool) -> ScanResult:
    """Validate every record of a segment; raise JournalCorruptError on mid-file damage.

    ``last`` says whether this is the newest segment, the only one that may end torn.
    """
    hsize = SEGMENT_HEADER.size
    if len(buf) < hsize or buf[:4] != SEGMENT_MAGIC or crc32(buf[: hsize - 4]) != struct.unpack_from("<I", buf, hsize - 4)[0]:
        if last and len(buf) <= hsize + RECORD_HEADER.size and expected_first is not None:
            # created but never written: a crash while rolling over
            res = ScanResult(expected_first, file_bytes=len(buf), torn="incomplete segment header")
            return res
        raise JournalCorruptError("bad segment header (not a journal segment, or damaged)", path=path, offset=0)
    magic, fmt, _res, first, _crc = SEGMENT_HEADER.unpack_from(buf, 0)
    if fmt != SEGMENT_FORMAT:
        raise JournalCorruptError(f"unknown segment format {fmt}", path=path, offset=4)
    if expected_first is not None and first != expected_first:
        raise JournalCorruptError(
            f"segment starts at index {first}, expected {expected_first} (a segment is missing)", path=path, offset=8
        )
    res = ScanResult(first, file_bytes=len(buf))
    offsets = res.offsets
    terms = res.terms
    pos, end, want = hsize, len(buf), first
    rsize = RECORD_HEADER.size
    mv = memoryview(buf)
    last_term = -1
    problem = None
    while pos < end:
        if end - pos < rsize:
            problem = "incomplete record header"
            break
        length, index, term, kind, hcrc, pcrc = _unpack_rec(buf, pos)
        if crc32(mv[pos : pos + _HCRC_SPAN]) != hcrc:
            problem = "record header checksum mismatch"
            break
        if index != want:
            raise JournalCorruptError(f"record has index {index}, expected {want}", path=path, offset=pos)
        if length > MAX_RECORD:
            raise JournalCorruptError(f"record length {length} is implausible", path=path, offset=pos)
        if pos + rsize + length > end:
            problem = f"record {index} is incomplete ({end - pos - rsize} of {length} payload bytes)"
            break
        if crc32(mv[pos + rsize : pos + rsize + length]) != pcrc:
            problem = f"record {index} payload checksum mismatch"
            break
        offsets.append(pos)
        if term != last_term:
            terms.append((index, term))
            last_term = term
        pos += rsize + length
        want += 1
    res.valid_bytes = pos
    if problem is not None:
        if not last or _valid_record_follows(buf, pos, want):
            raise JournalCorruptError(problem + " (valid records follow it)" if last else problem, path=path, offset=pos)
        res.torn = problem
    return res


def _valid_record_follows(buf: bytes, pos: int, bad_index: int) -> bool:
    """Is there an intact record after ``pos``? Then the damage is not a torn tail."""
    rsize = RECORD_HEADER.size
    mv = memoryview(buf)
    needle = struct.pack("<Q", bad_index + 1)
    hit = buf.find(needle, pos + 1)
    while hit != -1:
        start = hit - 4  # the index follows the 4-byte length
        if start > pos and start + rsize <= len(buf):
            if crc32(mv[start : start + _HCRC_SPAN]) == _unpack_rec(buf, start)[4]:
                return True
        hit = buf.find(needle, hit + 1)
    return False


def scan_directory(directory: str, fs: FileSystem = OS) -> Iterator[tuple[str, ScanResult]]:
    """Validate the segments of ``directory`` oldest first (see segment.scan).

    Raises JournalCorruptError at the first damage that is not a torn tail of the newest
    segment, or at a gap between segments.
    """
    if not fs.isdir(directory):
        return
    firsts = sorted(f for f in map(parse_segment_name, fs.listdir(directory)) if f is not None)
    expected: int | None = None
    prev: tuple[str, int] | None = None  # the previous segment's path and the end of its last record
    for n, first in enumerate(firsts):
        path = os.path.join(directory, segment_name(first))
        if prev is not None and expected is not None and first > expected:
            # the hole is where the previous segment ends: name that file, which either
            # lost its end or was followed by a segment now gone
            raise JournalCorruptError(
                f"the segment ends at index {expected - 1}, but the next one ({segment_name(first)}) starts at "
                f"index {first}: entries {expected}..{first - 1} are gone (this segment was cut short, or a "
                "segment is missing)", path=prev[0], offset=prev[1])
        buf, size = _read_segment(fs, path)
        res = scan(path, buf, first if expected is None else expected, last=n == len(firsts) - 1)
        if size > len(buf):
            raise JournalCorruptError(f"the file is {size} bytes, longer than any segment ({MAX_SEGMENT_FILE} bytes "
                                      "at most): damage after its last whole record", path=path, offset=res.valid_bytes)
        yield path, res
        prev = (path, res.valid_bytes)
        if res.offsets:
            expected = res.last_index + 1
        elif expected is None:
            expected = first


def _read_segment(fs: FileSystem, path: str) -> tuple[bytes, int]:
    """(at most MAX_SEGMENT_FILE bytes of the file, its size): a hostile size costs no more
    memory than the largest real segment. An OSError names the file."""
    try:
        fd = fs.open(path, READ)
        try:
            size = fs.size(fd)
            return read_range(fs, fd, 0, min(size, MAX_SEGMENT_FILE)), size
        finally:
            fs.close(fd)
    except OSError as exc:
        if exc.filename is None:  # a read of a directory says only "Is a directory"
            exc.filename = path
        raise


class OpenSegment:
    """A segment of an open journal: where its records are, and its file descriptors."""

    __slots__ = ("first", "path", "offsets", "size", "written", "wfd", "rfd")

    def __init__(self, first: int, path: str, offsets: array | None = None, size: int = SEGMENT_HEADER.size):
        self.first = first
        self.path = path
        self.offsets = offsets if offsets is not None else array("Q")
        self.size = size  # bytes including those still buffered in memory
        self.written = size  # bytes in the file (a new segment: once its header is written)
        self.wfd: int | None = None
        self.rfd: int | None = None

    @property
    def last(self) -> int:
        return self.first + len(self.offsets) - 1

    def end_of(self, index: int) -> int:
        """Byte offset just past record ``index`` (which must be in this segment)."""
        k = index - self.first + 1
        return self.offsets[k] if k < len(self.offsets) else self.size

    def close(self, fs: FileSystem) -> None:
        if self.wfd is not None:
            fd, self.wfd = self.wfd, None
            fs.close(fd)
        if self.rfd is not None:
            fd, self.rfd = self.rfd, None
            fs.close(fd)

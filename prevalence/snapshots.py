"""Snapshots of the whole root: a pickled object graph with the index it is current at.

Written to a temporary file, fsynced, renamed into place, checksummed, through an injected
:class:`~prevalence.fs.FileSystem`. A full disk raises :class:`DiskFull` (the temp file is
removed: the disk keeps the space it had; retry later); any other failure SnapshotError. The plain C pickler
is tried first because it is an order of magnitude faster than dill's pure-Python one;
dill takes over for what pickle cannot handle (lambdas, nested functions, closures), and
dill's loader, which is the C unpickler, reads both. Snapshot files are only ever read
from the node's own disk (or, later, from an authenticated peer): unpickling runs code.
"""
from __future__ import annotations

import gc
import logging
import os
import pickle
import struct
from dataclasses import dataclass, field
from typing import Any, Callable
from zlib import crc32

import dill
import msgpack

from . import _platform
from .codec import unpack_reply
from .errors import DiskFull, SnapshotError, UnpicklableSnapshot
from .fs import OS, READ, FileSystem, make_dirs, read_range, write_file_durably

log = logging.getLogger("prevalence.snapshots")

MAGIC = b"PVSN"
FORMAT = 1
_HEAD = struct.Struct("<4sHHI")  # magic, format, reserved, meta length
_BODY = struct.Struct("<Q")
_CRC = struct.Struct("<I")
PREFIX, SUFFIX = "snapshot-", ".snap"


@dataclass
class SnapshotMeta:
    index: int
    term: int
    timestamp_us: int
    serializer: str
    path: str = ""
    size: int = 0
    extra: dict = field(default_factory=dict)  # e.g. the Raft membership at ``index``


def serialize(root: Any) -> tuple[bytes, str]:
    """The root as bytes, and which serializer made them."""
    try:
        data = pickle.dumps(root, protocol=pickle.HIGHEST_PROTOCOL)
        # Classes of a script run as __main__ are pickled by reference and could not be
        # found by another program (or `prevalence state`); dill stores them by value.
        if b"__main__" not in data:
            return data, "pickle"
    except Exception as exc:  # pickle refuses lambdas, closures, some locals...
        log.debug("pickle could not serialize the root (%s); using dill", exc)
    try:
        return dill.dumps(root, protocol=pickle.HIGHEST_PROTOCOL), "dill"
    except Exception as exc:
        raise SnapshotError(f"cannot serialize the root for a snapshot: {exc!r}") from exc


def deserialize(body: bytes) -> Any:
    # A million-object graph triggers the cyclic GC hundreds of times while it is built;
    # nothing is garbage yet, so that work is wasted.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return dill.loads(body)
    finally:
        if enabled:
            gc.enable()


def encode_file(meta: SnapshotMeta, body: bytes) -> list[bytes]:
    m = msgpack.packb(
        {"index": meta.index, "term": meta.term, "timestamp_us": meta.timestamp_us,
         "serializer": meta.serializer, "extra": meta.extra},
        use_bin_type=True,
    )
    head = _HEAD.pack(MAGIC, FORMAT, 0, len(m)) + m + _BODY.pack(len(body))
    crc = crc32(body, crc32(head))
    return [head, body, _CRC.pack(crc)]


def decode_file(path: str, data: bytes) -> tuple[SnapshotMeta, memoryview]:
    """Validate a whole snapshot file; SnapshotError says what is wrong with it."""
    mv = memoryview(data)
    mlen, body_at = _check_lengths(path, len(data), lambda at, n: mv[at:at + n])
    blen = len(data) - body_at - _CRC.size
    (crc,) = _CRC.unpack_from(data, body_at + blen)
    if crc32(mv[body_at : body_at + blen], crc32(mv[:body_at])) != crc:
        raise SnapshotError(f"{path}: checksum mismatch (the file is damaged)")
    return _meta(path, len(data), mv[_HEAD.size : _HEAD.size + mlen]), mv[body_at : body_at + blen]


def _check_lengths(path: str, size: int, read: Callable[[int, int], Any]) -> tuple[int, int]:
    """(meta length, body offset) once the header's lengths agree with the file's size;
    SnapshotError otherwise. ``read(offset, n)`` reads the file: only its header is read,
    so a file of any claimed size costs a few bytes here."""
    head = read(0, _HEAD.size)
    if len(head) < _HEAD.size or head[:4] != MAGIC:
        raise SnapshotError(f"{path}: not a snapshot file (bad magic)")
    _m, fmt, _r, mlen = _HEAD.unpack_from(head, 0)
    if fmt != FORMAT:
        raise SnapshotError(f"{path}: unknown snapshot format {fmt}")
    body_at = _HEAD.size + mlen + _BODY.size
    if size < body_at + _CRC.size:
        raise SnapshotError(f"{path}: truncated ({size} bytes)")
    (blen,) = _BODY.unpack(read(body_at - _BODY.size, _BODY.size))
    if size != body_at + blen + _CRC.size:
        raise SnapshotError(f"{path}: truncated or padded ({size} bytes, expected {body_at + blen + _CRC.size})")
    return mlen, body_at


def _meta(path: str, size: int, meta_bytes: Any) -> SnapshotMeta:
    try:
        m = unpack_reply(meta_bytes)  # its sessions' replies: results may have int keys
        return SnapshotMeta(m["index"], m["term"], m["timestamp_us"], m["serializer"], path, size, m.get("extra") or {})
    except Exception as exc:  # msgpack and a malformed map raise several types: all are damage
        raise SnapshotError(f"{path}: damaged metadata: {exc}") from None


def embedded_size(f: Any, at: int) -> int | None:
    """The size of the snapshot file that starts at offset ``at`` of the open binary file
    ``f``, as its header says (None: no snapshot header there); reads 20 bytes or so."""
    f.seek(at)
    head = f.read(_HEAD.size)
    if len(head) < _HEAD.size or head[:4] != MAGIC:
        return None
    mlen = _HEAD.unpack(head)[3]
    f.seek(at + _HEAD.size + mlen)
    blen = f.read(_BODY.size)
    if len(blen) < _BODY.size:
        return None
    return _HEAD.size + mlen + _BODY.size + _BODY.unpack(blen)[0] + _CRC.size


def check_file(path: str, fs: FileSystem = OS, chunk: int = 1 << 20) -> SnapshotMeta:
    """Validate a snapshot file as :func:`decode_file` does, reading it in chunks: memory
    stays bounded whatever size the file claims or has (for ``journal verify``)."""
    fd = fs.open(path, READ)
    try:
        size = fs.size(fd)
        mlen, body_at = _check_lengths(path, size, lambda at, n: read_range(fs, fd, at, n))
        crc, pos, end = 0, 0, size - _CRC.size
        while pos < end:
            part = read_range(fs, fd, pos, min(chunk, end - pos))
            if not part:
                raise SnapshotError(f"{path}: truncated while read ({pos} bytes)")
            crc, pos = crc32(part, crc), pos + len(part)
        if _CRC.unpack(read_range(fs, fd, end, _CRC.size))[0] != crc:
            raise SnapshotError(f"{path}: checksum mismatch (the file is damaged)")
        meta_bytes = read_range(fs, fd, _HEAD.size, mlen)  # checksummed above
    finally:
        fs.close(fd)
    return _meta(path, size, meta_bytes)


def snapshot_name(index: int) -> str:
    return f"{PREFIX}{index:020d}{SUFFIX}"


def parse_snapshot_name(name: str) -> int | None:
    if not (name.startswith(PREFIX) and name.endswith(SUFFIX)):
        return None
    digits = name[len(PREFIX) : -len(SUFFIX)]
    return int(digits) if len(digits) == 20 and digits.isdigit() else None


class SnapshotStore:
    """The snapshot files of one data directory, newest first; keeps ``keep`` of them."""

    def __init__(self, directory: str, *, keep: int = 2, read_only: bool = False, fs: FileSystem = OS):
        if keep < 1:
            raise SnapshotError(f"keep must be at least 1, not {keep}")
        self.directory = os.path.abspath(directory)
        self.keep = keep
        self.read_only = read_only
        self.fs = fs
        if not read_only:
            make_dirs(fs, self.directory)
            for name in fs.listdir(self.directory):
                if name.endswith(".tmp"):  # a snapshot that was being written when we died
                    fs.remove(os.path.join(self.directory, name))

    def indexes(self) -> list[int]:
        """Indexes of the snapshot files present, newest first (not yet validated)."""
        if not self.fs.isdir(self.directory):
            return []
        found = (parse_snapshot_name(n) for n in self.fs.listdir(self.directory))
        return sorted((i for i in found if i is not None), reverse=True)

    def path_of(self, index: int) -> str:
        return os.path.join(self.directory, snapshot_name(index))

    def write(self, meta: SnapshotMeta, body: bytes, *, prune: bool = True) -> SnapshotMeta:
        """Durably store a snapshot, then (unless told not to) prune the oldest beyond ``keep``."""
        parts = encode_file(meta, body)
        meta.path, meta.size = self._install(meta.index, parts, prune), sum(map(len, parts))
        return meta

    def write_encoded(self, data: bytes) -> SnapshotMeta:
        """Store a whole snapshot file received from elsewhere (a Raft leader), validated first."""
        meta, _body = decode_file("received snapshot", data)
        meta.path, meta.size = self._install(meta.index, [data]), len(data)
        return meta

    def read_encoded(self, index: int) -> bytes:
        """The whole file, validated, as it would be sent to a peer."""
        meta, body = self.read(index)
        return body.obj  # the memoryview's underlying bytes: the whole file

    def _install(self, index: int, parts: list[bytes], prune: bool = True) -> str:
        if self.read_only:
            raise SnapshotError(f"{self.directory} was opened read-only")
        final = self.path_of(index)
        try:
            write_file_durably(self.fs, final, parts)  # no debris left on failure
        except OSError as exc:
            if _platform.is_disk_full(exc):
                raise DiskFull(f"cannot write snapshot {final}: disk full ({exc}); retry once space returns") from exc
            raise SnapshotError(f"cannot write snapshot {final}: {exc}") from exc
        if prune:
            self.prune()
        return final

    def prune(self) -> None:
        for index in self.indexes()[self.keep :]:
            try:
                self.fs.remove(self.path_of(index))
            except OSError as exc:
                log.warning("could not remove old snapshot %s: %s", self.path_of(index), exc)

    def read(self, index: int) -> tuple[SnapshotMeta, memoryview]:
        path = self.path_of(index)
        try:
            fd = self.fs.open(path, READ)
            try:
                size = self.fs.size(fd)
                _check_lengths(path, size, lambda at, n: read_range(self.fs, fd, at, n))  # a hostile size is never read whole
                data = read_range(self.fs, fd, 0, size)
            finally:
                self.fs.close(fd)
        except OSError as exc:
            raise SnapshotError(f"{path}: cannot read: {exc}") from exc
        meta, body = decode_file(path, data)
        if meta.index != index:  # renamed or copied by hand: which entries follow it is unknown
            raise SnapshotError(f"{path}: named for index {index} but holds index {meta.index}")
        return meta, body

    def load(self, index: int) -> tuple[SnapshotMeta, Any]:
        meta, body = self.read(index)
        try:
            return meta, deserialize(body)
        except MemoryError:  # this process's state, not the file's: skipped as damaged, a node started stuck
            raise
        except Exception as exc:
            raise UnpicklableSnapshot(f"{meta.path}: cannot unpickle the root: {exc!r}") from exc

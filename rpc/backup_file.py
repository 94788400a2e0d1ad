"""The backup file: its layout, and its reading with every check.

::

    b"PVLBACKUP1\\n"  header (one line of JSON)  b"\\n"  snapshot file  sha256(all before)

The header names the cluster id and epoch, the snapshot's index and term, the
application's root factory and imports, and when and where it was taken. The trailing
SHA-256 covers everything before it; the snapshot file inside carries its own CRC. A
backup is a pickle of the whole state: restore only a file from a trusted place.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from typing import Any

from prevalence.errors import PrevalenceError
from prevalence.snapshots import decode_file, embedded_size

__all__ = ["MAGIC", "DIGEST_SIZE", "BackupError", "BackupInfo", "read_backup", "describe"]

MAGIC = b"PVLBACKUP1\n"
DIGEST_SIZE = 32  # the trailing SHA-256


class BackupError(PrevalenceError):
    """A backup file that cannot be trusted or used: damaged, truncated, not a backup."""


@dataclass(frozen=True)
class BackupInfo:
    cluster: str
    epoch: int
    index: int
    term: int
    root: str
    imports: tuple[str, ...]
    created: str
    node: str
    sha256: str


def read_backup(path: str) -> tuple[BackupInfo, memoryview]:
    """The header and the snapshot file of a backup, after every check; BackupError (one
    line naming the file) otherwise."""
    damaged = f"{path}: damaged backup (SHA-256 mismatch: truncated or altered); nothing restored"
    try:
        with open(path, "rb") as f:
            # the magic first: a device or a file of another program is refused before
            # its size (endless for /dev/zero) is read into memory
            if f.read(len(MAGIC)) != MAGIC:
                raise BackupError(f"{path}: not a prevalence backup (bad magic)")
            size = os.fstat(f.fileno()).st_size
            claimed = _claimed_size(f) if stat.S_ISREG(os.fstat(f.fileno()).st_mode) else size
            if claimed != size:  # padded or cut: refused before its size is read into memory
                raise BackupError(f"{path}: damaged backup (truncated or altered: {size} bytes, its headers "
                                  f"{f'say {claimed}' if claimed is not None else 'cannot be read'}); nothing restored")
            f.seek(len(MAGIC))
            blob = MAGIC + f.read()
    except OSError as exc:
        raise BackupError(f"{path}: cannot read the backup: {exc.strerror or exc}") from None
    whole = memoryview(blob)  # slices below copy nothing
    digest = hashlib.sha256(whole[:-DIGEST_SIZE]).digest() if len(blob) >= len(MAGIC) + DIGEST_SIZE + 2 else b""
    if digest != blob[-DIGEST_SIZE:]:
        raise BackupError(damaged)
    end = blob.find(b"\n", len(MAGIC), len(blob) - DIGEST_SIZE)
    if end < 0:
        raise BackupError(f"{path}: damaged backup header: no end of line")
    try:
        h = json.loads(blob[len(MAGIC):end])
        if type(h["imports"]) is not list:  # tuple() would make a string its letters
            raise TypeError(f"imports {h['imports']!r:.60} is not a list of module names")
        info = BackupInfo(h["cluster"], h["epoch"], h["index"], h["term"], h["root"], tuple(h["imports"]),
                          h["created"], h["node"], digest.hex())
        problem = _header_problem(info)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        problem = str(exc)
    if problem:
        raise BackupError(f"{path}: damaged backup header: {problem}") from None
    snapshot = whole[end + 1:-DIGEST_SIZE]
    try:
        meta, _ = decode_file(path, snapshot)
    except PrevalenceError as exc:
        raise BackupError(f"{path}: the snapshot inside is damaged: {exc}") from None
    if (meta.index, meta.term) != (info.index, info.term):
        raise BackupError(f"{path}: the header says index {info.index} term {info.term}, the snapshot is at "
                          f"{meta.index} term {meta.term}")
    return info, snapshot


_NAME = re.compile(r"[A-Za-z_][\w.]*")


def _header_problem(info: BackupInfo) -> str | None:
    """What is wrong with a header's fields (their types and shapes), or None: a digest
    proves only that the file is as written, and restore puts these fields into configs."""
    for name in ("epoch", "index", "term"):
        value = getattr(info, name)
        if type(value) is not int or value < 0:
            return f"{name} {value!r:.40} is not a whole number"
    for name in ("cluster", "created", "node"):
        if type(getattr(info, name)) is not str:
            return f"{name} {getattr(info, name)!r:.40} is not a string"
    module, sep, attr = info.root.partition(":") if type(info.root) is str else ("", "", "")
    if not (sep and _NAME.fullmatch(module) and _NAME.fullmatch(attr)):
        return f"root {info.root!r:.60} is not MODULE:FACTORY"
    if not all(type(m) is str and _NAME.fullmatch(m) for m in info.imports):
        return f"imports {info.imports!r:.60} is not a list of module names"
    return None


_HEADER_MAX = 1 << 20  # a header line is a few hundred bytes


def _claimed_size(f: Any) -> int | None:
    """The size a backup file's header line and snapshot header add up to (None: they
    cannot be found): compared with the file's size before the whole is read."""
    f.seek(len(MAGIC))
    end = f.read(_HEADER_MAX).find(b"\n")
    if end < 0:
        return None
    snapshot_at = len(MAGIC) + end + 1
    inner = embedded_size(f, snapshot_at)
    return None if inner is None else snapshot_at + inner + DIGEST_SIZE


def describe(info: BackupInfo) -> str:
    return (f"index {info.index} term {info.term} of cluster {info.cluster or '(unknown)'} epoch {info.epoch}, "
            f"taken {info.created} on {info.node}; root {info.root}; sha256 {info.sha256[:16]}")

"""The disk as an injected interface: what the journal, snapshots and Raft storage need.

The storage classes (``Journal``, ``SnapshotStore``, ``HardStateFile``, ``JournalStorage``)
do all their file I/O through a :class:`FileSystem`, so that the deterministic simulator
can run the real code on a simulated disk (``prevalence.simfs.SimFileSystem``) that loses
unsynced writes at a crash, tears them at any byte, fails an fsync or fills up.
:class:`OsFileSystem` is the real disk. The interface is fd-level, as ``os`` is, and holds
only what those classes use. Platform differences stay in ``prevalence._platform``.
"""
from __future__ import annotations

import os
from typing import Protocol

from . import _platform

#: flags for :meth:`FileSystem.open`; O_BINARY keeps Windows from translating newlines
READ = os.O_RDONLY | _platform.O_BINARY
WRITE = os.O_WRONLY | _platform.O_BINARY
CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _platform.O_BINARY


class FileSystem(Protocol):
    """fd-level file operations, named as in ``os``; errors are ``OSError`` with an errno."""

    def listdir(self, path: str) -> list[str]: ...
    def isdir(self, path: str) -> bool: ...
    def exists(self, path: str) -> bool: ...
    def makedirs(self, path: str) -> None: ...  # exist_ok; durability: see make_dirs
    def open(self, path: str, flags: int, mode: int = 0o644) -> int: ...
    def write(self, fd: int, data: bytes | memoryview) -> int: ...  # may write less than asked
    def pread(self, fd: int, n: int, offset: int) -> bytes: ...  # may read less than asked
    def size(self, fd: int) -> int: ...
    def lseek(self, fd: int, pos: int, how: int) -> int: ...
    def ftruncate(self, fd: int, length: int) -> None: ...
    def fsync(self, fd: int) -> None: ...
    def close(self, fd: int) -> None: ...
    def remove(self, path: str) -> None: ...
    def replace(self, src: str, dst: str) -> None: ...  # atomic rename over dst
    def fsync_dir(self, path: str) -> None: ...  # creations, renames, removals in path made durable
    def same_file(self, fd: int, path: str) -> bool: ...  # ``path`` still names the file ``fd`` has open


class OsFileSystem:
    """The real disk. Each call looks ``os`` up when it runs, so tests may patch ``os``."""

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags, mode)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        return _platform.pread(fd, n, offset)

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def lseek(self, fd: int, pos: int, how: int) -> int:
        return os.lseek(fd, pos, how)

    def ftruncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def remove(self, path: str) -> None:
        os.remove(path)

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def fsync_dir(self, path: str) -> None:
        _platform.fsync_dir(path)

    def same_file(self, fd: int, path: str) -> bool:
        if _platform.WINDOWS:
            # a file opened here cannot be deleted or renamed over (no FILE_SHARE_DELETE):
            # the path names it still; and st_ino/st_dev from a path and from a handle
            # disagree on some volumes (ReFS, network drives), which read as "replaced"
            return True
        try:
            return os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            return False


OS = OsFileSystem()


# -- helpers over the interface -----------------------------------------------------------

def write_all(fs: FileSystem, fd: int, data: bytes | memoryview) -> None:
    """Write every byte (``write`` may write fewer)."""
    view = memoryview(data)
    while view:
        view = view[fs.write(fd, view):]


def read_range(fs: FileSystem, fd: int, offset: int, n: int) -> bytes:
    """Up to ``n`` bytes at ``offset``; fewer only at the end of the file."""
    data = fs.pread(fd, n, offset)
    while len(data) < n:  # a read may return less than asked
        more = fs.pread(fd, n - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


def read_file(fs: FileSystem, path: str) -> bytes:
    """The whole file (``FileNotFoundError`` if there is none)."""
    fd = fs.open(path, READ)
    try:
        return read_range(fs, fd, 0, fs.size(fd))
    finally:
        fs.close(fd)


def write_file_durably(fs: FileSystem, path: str, parts: list[bytes]) -> None:
    """Replace ``path`` atomically and durably: temp file, fsync, rename, fsync the directory.

    On failure the temp file is removed (a full disk keeps the space it had) and the
    ``OSError`` propagates, naming ``path`` when the OS named no file (a write or fsync
    on a descriptor: else the operator reads "No space left on device" and guesses
    which file); ``path`` is then as it was.
    """
    tmp = path + ".tmp"
    try:
        fd = fs.open(tmp, CREATE)
        try:
            for p in parts:
                write_all(fs, fd, p)
            fs.fsync(fd)
        finally:
            fs.close(fd)
        fs.replace(tmp, path)
    except OSError as exc:
        try:
            fs.remove(tmp)
        except OSError:
            pass
        if exc.filename is None:  # the same errno (and subclass), with the file it was for
            raise OSError(exc.errno, exc.strerror or str(exc), path) from exc
        raise
    fs.fsync_dir(os.path.dirname(path))


def make_dirs(fs: FileSystem, path: str) -> None:
    """Create ``path`` and its missing parents durably: each new entry's parent is fsynced
    (a directory created and never fsynced into its parent may vanish at a power cut,
    taking every fsynced file inside it along)."""
    missing = []
    p = os.path.abspath(path)
    while not fs.isdir(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    if not missing:
        return
    fs.makedirs(path)
    for p in reversed(missing):
        fs.fsync_dir(os.path.dirname(p))

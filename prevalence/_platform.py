"""The few calls that differ between Windows and POSIX, kept in one guarded place."""
from __future__ import annotations

import errno
import os
import stat
import sys
from typing import Callable

from .errors import LockedError

WINDOWS = sys.platform == "win32"

_PID_WIDTH = 20  # the lock file holds its holder's pid, padded: always one whole write
_LOCKED_BYTE = 64  # Windows locks a byte range; this one, past the pid (beyond EOF is allowed)

if WINDOWS:  # pragma: no cover - exercised on Windows only
    import msvcrt

    def fsync_dir(path: str) -> None:
        """Windows has no directory fsync; NTFS journals metadata, renames are durable."""

    def _lock(fd: int) -> None:
        # a locked range cannot be read by others: lock one byte past the holder's pid
        os.lseek(fd, _LOCKED_BYTE, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd: int) -> None:
        os.lseek(fd, _LOCKED_BYTE, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def fsync_dir(path: str) -> None:
        """Make a create, rename or unlink inside ``path`` durable."""
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def ephemeral_ports() -> tuple[int, int]:
    """The range the OS takes the source ports of outgoing connections from."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
                low, high = (int(x) for x in f.read().split())
            return low, high
        except (OSError, ValueError):
            return 32768, 60999  # the kernel's default
    return 49152, 65535  # Windows and macOS: IANA's dynamic range


O_BINARY = getattr(os, "O_BINARY", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # POSIX; Windows has no FIFOs in its file system


class NotRegularFile(OSError):
    """A FIFO, device or socket where an operator's file (a config, a key, a layout) belongs."""


def read_small_file(path: str, limit: int) -> tuple[bytes, os.stat_result]:
    """At most ``limit`` + 1 bytes of the regular file at ``path`` (more than ``limit``:
    the caller's "too large"), and the file's stat, of the very file read. Opening a FIFO waits for a writer and reading a device may
    never end, so anything but a regular file raises :class:`NotRegularFile` at once (a
    directory: IsADirectoryError), naming ``path``."""
    fd = os.open(path, os.O_RDONLY | _O_NONBLOCK | O_BINARY)
    with open(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file (a device, a pipe or a socket)", path)
        return f.read(limit + 1), st

if hasattr(os, "pread"):
    pread = os.pread
else:  # pragma: no cover - Windows: no pread; callers serialise reads of one fd
    def pread(fd: int, n: int, offset: int) -> bytes:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, n)

_DISK_FULL_WINERRORS = (39, 112)  # ERROR_HANDLE_DISK_FULL, ERROR_DISK_FULL


def is_disk_full(exc: BaseException) -> bool:
    """Did this error come from a full disk (or quota), as opposed to a failing one?"""
    import errno

    return isinstance(exc, OSError) and (
        exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
        or getattr(exc, "winerror", None) in _DISK_FULL_WINERRORS)


class DirectoryLock:
    """An exclusive lock on a data directory, released when the process dies.

    The lock file names its holder's pid, so that a refused process can say who holds it.
    """

    def __init__(self, directory: str):
        self.path = os.path.join(directory, "LOCK")
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | O_BINARY, 0o644)
        try:
            _lock(fd)
        except OSError:
            os.close(fd)
            pid = self.holder()
            raise LockedError(f"{os.path.dirname(self.path)} is in use by another process "
                              f"(pid {pid if pid is not None else 'unknown'}; lock file {self.path})") from None
        self._fd = fd
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, str(os.getpid()).ljust(_PID_WIDTH).encode())
        except OSError:  # a full disk: the lock holds all the same, only its pid goes unsaid
            pass

    def holder(self) -> int | None:
        """The pid written by the process that holds (or last held) the lock, if any."""
        try:
            with open(self.path, "rb") as f:
                text = f.read(_PID_WIDTH).strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def release(self) -> None:
        if self._fd is not None:
            try:
                try:
                    os.lseek(self._fd, 0, os.SEEK_SET)  # no stale pid for the next process to report
                    os.write(self._fd, b" " * _PID_WIDTH)
                except OSError:  # a full or read-only disk: a stale pid is harmless (holder() is a hint),
                    pass         # and this must not replace the error a failed start is stopping for
                _unlock(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None


def private_file_problem(mode: int, owner: int, me: int, *, directory: bool) -> str | None:
    """Why a key file (or the directory holding it) is not private to this user, as a
    clause ("is writable by ..."), or None.

    POSIX: the owner must be this user or root, and nobody else may write it (a directory
    with the sticky bit, like /tmp, lets others add files but not replace ours). Windows
    has no such modes: the ACL to set is in docs/security.md, and None is returned.
    """
    if WINDOWS:  # pragma: no cover - exercised on Windows only
        return None
    import stat

    if owner not in (me, 0):
        return f"is owned by another user (uid {owner}), who could change it"
    bits = stat.S_IMODE(mode)
    if bits & 0o022 and not (directory and mode & stat.S_ISVTX):
        return f"is writable by group or others (mode {bits:o})"
    return None


def others_may_write(mode: int, owner: int, me: int) -> bool:
    """Could another user (root aside) have put a file into this directory? POSIX: it is
    not ours, or group or others may write it (sticky or not). Windows: the ACL decides,
    unseen here (docs/security.md), so False."""
    if WINDOWS:  # pragma: no cover - exercised on Windows only
        return False
    return owner not in (me, 0) or bool(mode & 0o022)


def kill_hard(pid: int) -> None:
    """End a process at once, as a power cut would: no handler, no clean-up in it runs."""
    import signal

    # On Windows os.kill with any signal but the console ones is TerminateProcess.
    os.kill(pid, signal.SIGTERM if WINDOWS else signal.SIGKILL)


def child_dies_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes a child process die with this one (Linux), else None.

    Linux's PR_SET_PDEATHSIG fires when the *thread* that started the child ends, so it
    is offered only on the main thread. Elsewhere the caller must stop its children.
    """
    import threading

    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None

    def hook() -> None:  # runs in the child between fork and exec
        import ctypes
        import signal

        try:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:  # noqa: BLE001 - best effort; the parent still stops its children
            pass

    return hook

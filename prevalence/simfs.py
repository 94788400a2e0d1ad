"""A simulated disk for the deterministic simulator and the crash tests.

:class:`SimFileSystem` implements :class:`prevalence.fs.FileSystem` in memory, so the real
journal, snapshot and Raft storage code runs on it. It keeps what a power cut would keep
and nothing more:

- per file, the *durable* bytes and the current ones; ``fsync`` makes the current bytes
  durable. A crash keeps, per file, a random prefix of the bytes written since (a torn
  write at any byte), or, for a file rewritten or cut since, possibly its old content;
- per directory, which names are durable; ``fsync_dir`` makes the creations, renames and
  removals in that directory durable. A crash forgets the others (a new file or
  directory never fsynced into its parent is gone, with everything inside it).

Faults, switchable at any time: ``fail_fsync`` (every fsync raises EIO, and the bytes it
was to write are lost even if a later fsync succeeds: the kernel dropped them, as in
PostgreSQL's "fsyncgate"), ``capacity`` (bytes of file data; a write past it writes a
random prefix then raises ENOSPC), ``latency`` (seconds per operation name, added up in
``elapsed`` for the simulator's clock; nothing sleeps). ``counts`` and ``trace`` record
the operations. Everything random comes from the injected ``random.Random``.
"""
from __future__ import annotations

import errno
import os
import random
import threading
from collections import Counter
from dataclasses import dataclass, field


class _Dir:
    __slots__ = ()


@dataclass(eq=False)
class _File:
    data: bytearray = field(default_factory=bytearray)
    durable: bytes = b""
    holes: list[list[int]] = field(default_factory=list)  # ranges a failed fsync lost

    def on_disk(self) -> bytes:
        """What the platters would hold if the cache were written now (holes are zeros)."""
        if not self.holes:
            return bytes(self.data)
        out = bytearray(self.data)
        for lo, hi in self.holes:
            hi = min(hi, len(out))
            if lo < hi:
                out[lo:hi] = bytes(hi - lo)
        return bytes(out)


@dataclass(eq=False)
class _Fd:
    file: _File
    path: str
    pos: int
    readable: bool
    writable: bool
    append: bool


def _err(code: int, path: object = None) -> OSError:
    return OSError(code, os.strerror(code), *(() if path is None else (str(path),)))


class SimFileSystem:
    """An in-memory disk with crash semantics and faults; see the module docstring."""

    def __init__(self, rng: random.Random, *, capacity: int | None = None, trace: bool = False):
        self.rng = rng
        self.capacity = capacity  # None: unlimited
        self.fail_fsync = False
        self.latency: dict[str, float] = {}  # operation name -> seconds; "*" for the others
        self.elapsed = 0.0  # simulated seconds spent in operations so far
        self.counts: Counter[str] = Counter()
        self.trace: list[tuple[str, object, int]] | None = [] if trace else None
        self.crashed = False
        self._power_left: int | None = None  # operations until a power cut
        self._nodes: dict[str, _Dir | _File] = {}  # the current namespace
        self._durable: dict[str, _Dir | _File] = {}  # the namespace a crash would leave
        self._fds: dict[int, _Fd] = {}
        self._next_fd = 3  # never reused: a stale descriptor is an error, not another file
        self._lock = threading.RLock()

    # -- bookkeeping ------------------------------------------------------------------
    def _op(self, name: str, what: object, n: int = 0) -> None:
        if self._power_left is not None:
            self._power_left -= 1
            if self._power_left < 0:
                self.crashed = True
        if self.crashed:
            raise _err(errno.EIO, "the simulated machine crashed; use the file system crash() returned")
        self.counts[name] += 1
        self.elapsed += self.latency.get(name, self.latency.get("*", 0.0))
        if self.trace is not None:
            self.trace.append((name, what, n))

    @staticmethod
    def _norm(path: str) -> str:
        return os.path.abspath(os.fspath(path))

    def _is_dir(self, path: str) -> bool:
        return os.path.dirname(path) == path or isinstance(self._nodes.get(path), _Dir)

    def _file(self, path: str) -> _File:
        node = self._nodes.get(path)
        if node is None:
            raise _err(errno.ENOENT, path)
        if isinstance(node, _Dir):
            raise _err(errno.EISDIR, path)
        return node

    def _fd(self, fd: int) -> _Fd:
        try:
            return self._fds[fd]
        except KeyError:
            raise _err(errno.EBADF) from None

    def used(self) -> int:
        """Bytes of file data held (what ``capacity`` limits)."""
        seen = {id(n): len(n.data) for n in self._nodes.values() if isinstance(n, _File)}
        seen.update((id(f.file), len(f.file.data)) for f in self._fds.values())  # unlinked but open
        return sum(seen.values())

    def cut_power_after(self, n: int) -> None:
        """The machine dies just before its ``n``-th next operation (0: the next one), which
        raises like every later one; ``crash()`` then gives the disk it left."""
        self._power_left = n

    def fill(self) -> None:
        """Make the disk full now: the next write that needs space fails."""
        self.capacity = self.used()

    # -- the FileSystem interface -----------------------------------------------------
    def listdir(self, path: str) -> list[str]:
        with self._lock:
            path = self._norm(path)
            self._op("listdir", path)
            if not self._is_dir(path):
                raise _err(errno.ENOENT if path not in self._nodes else errno.ENOTDIR, path)
            return sorted(os.path.basename(p) for p in self._nodes if os.path.dirname(p) == path and p != path)

    def isdir(self, path: str) -> bool:
        with self._lock:
            path = self._norm(path)
            self._op("isdir", path)
            return self._is_dir(path)

    def exists(self, path: str) -> bool:
        with self._lock:
            path = self._norm(path)
            self._op("exists", path)
            return self._is_dir(path) or path in self._nodes

    def makedirs(self, path: str) -> None:
        with self._lock:
            path = self._norm(path)
            self._op("makedirs", path)
            todo = []
            while not self._is_dir(path):
                if path in self._nodes:
                    raise _err(errno.EEXIST, path)
                todo.append(path)
                path = os.path.dirname(path)
            for p in reversed(todo):
                self._nodes[p] = _Dir()

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        with self._lock:
            path = self._norm(path)
            self._op("open", path)
            access = flags & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR)
            node = self._nodes.get(path)
            if node is None:
                if not flags & os.O_CREAT:
                    raise _err(errno.ENOENT, path)
                if not self._is_dir(os.path.dirname(path)):
                    raise _err(errno.ENOENT, path)
                node = self._nodes[path] = _File()
            elif flags & os.O_CREAT and flags & os.O_EXCL:
                raise _err(errno.EEXIST, path)
            elif isinstance(node, _Dir):
                raise _err(errno.EISDIR, path)
            writable = access in (os.O_WRONLY, os.O_RDWR)
            if flags & os.O_TRUNC and writable:
                del node.data[:]
            fd, self._next_fd = self._next_fd, self._next_fd + 1
            self._fds[fd] = _Fd(node, path, 0, access != os.O_WRONLY, writable, bool(flags & os.O_APPEND))
            return fd

    def write(self, fd: int, data: bytes | memoryview) -> int:
        with self._lock:
            f = self._fd(fd)
            self._op("write", f.path, len(data))
            if not f.writable:
                raise _err(errno.EBADF)
            file = f.file
            pos = len(file.data) if f.append else f.pos
            data = bytes(data)
            grow = max(0, pos + len(data) - len(file.data))
            full = self.capacity is not None and self.used() + grow > self.capacity
            if full:
                room = max(0, self.capacity - self.used()) + (len(data) - grow)
                data = data[: self.rng.randint(0, min(room, len(data)))]
            if pos > len(file.data):
                file.data.extend(bytes(pos - len(file.data)))
            file.data[pos : pos + len(data)] = data
            self._fill_holes(file, pos, pos + len(data))
            f.pos = pos + len(data)
            if full:
                raise _err(errno.ENOSPC, f.path)
            return len(data)

    @staticmethod
    def _fill_holes(file: _File, lo: int, hi: int) -> None:
        """Bytes written again are in the cache again: no longer lost."""
        if not file.holes or lo >= hi:
            return
        kept = []
        for a, b in file.holes:
            if a < lo:
                kept.append([a, min(b, lo)])
            if b > hi:
                kept.append([max(a, hi), b])
        file.holes = [h for h in kept if h[0] < h[1]]

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        with self._lock:
            f = self._fd(fd)
            self._op("pread", f.path, n)
            if not f.readable:
                raise _err(errno.EBADF)
            return bytes(f.file.data[offset : offset + n])

    def size(self, fd: int) -> int:
        with self._lock:
            f = self._fd(fd)
            self._op("size", f.path)
            return len(f.file.data)

    def lseek(self, fd: int, pos: int, how: int) -> int:
        with self._lock:
            f = self._fd(fd)
            self._op("lseek", f.path)
            base = {os.SEEK_SET: 0, os.SEEK_CUR: f.pos, os.SEEK_END: len(f.file.data)}[how]
            if base + pos < 0:
                raise _err(errno.EINVAL, f.path)
            f.pos = base + pos
            return f.pos

    def ftruncate(self, fd: int, length: int) -> None:
        with self._lock:
            f = self._fd(fd)
            self._op("ftruncate", f.path, length)
            if not f.writable or length < 0:
                raise _err(errno.EINVAL, f.path)
            data = f.file.data
            if length < len(data):
                del data[length:]
            else:
                data.extend(bytes(length - len(data)))

    def fsync(self, fd: int) -> None:
        with self._lock:
            f = self._fd(fd)
            self._op("fsync", f.path)
            file = f.file
            if self.fail_fsync:
                # the kernel gives up on the dirty pages and marks them clean: a later
                # fsync will not write them again (zeros stand for what the disk holds)
                lo = len(os.path.commonprefix([file.durable, bytes(file.data)]))
                if lo < len(file.data):
                    file.holes.append([lo, len(file.data)])
                raise _err(errno.EIO, f.path)
            file.durable = file.on_disk()

    def close(self, fd: int) -> None:
        with self._lock:
            f = self._fd(fd)
            self._op("close", f.path)
            del self._fds[fd]

    def same_file(self, fd: int, path: str) -> bool:
        """A lookup in the cache, like the kernel's: not an operation that can fail or crash."""
        with self._lock:
            return self._nodes.get(self._norm(path)) is self._fd(fd).file

    def remove(self, path: str) -> None:
        with self._lock:
            path = self._norm(path)
            self._op("remove", path)
            self._file(path)
            del self._nodes[path]

    def replace(self, src: str, dst: str) -> None:
        with self._lock:
            src, dst = self._norm(src), self._norm(dst)
            self._op("replace", src)
            node = self._file(src)
            if not self._is_dir(os.path.dirname(dst)):
                raise _err(errno.ENOENT, dst)
            if isinstance(self._nodes.get(dst), _Dir):
                raise _err(errno.EISDIR, dst)
            del self._nodes[src]
            self._nodes[dst] = node

    def fsync_dir(self, path: str) -> None:
        with self._lock:
            path = self._norm(path)
            self._op("fsync_dir", path)
            if not self._is_dir(path):
                raise _err(errno.ENOENT, path)
            if self.fail_fsync:
                raise _err(errno.EIO, path)
            for p in [p for p in self._durable if os.path.dirname(p) == path and p != path]:
                if p not in self._nodes:
                    del self._durable[p]
            for p, node in self._nodes.items():
                if os.path.dirname(p) == path and p != path:
                    self._durable[p] = node

    # -- crashes and inspection -------------------------------------------------------
    def crash(self) -> "SimFileSystem":
        """A power cut: the disk as a restarted machine finds it, as a new file system
        (with the same rng and faults). This one refuses every later operation."""
        with self._lock:
            after = SimFileSystem(self.rng, capacity=self.capacity, trace=self.trace is not None)
            after.fail_fsync, after.latency, after.elapsed = self.fail_fsync, dict(self.latency), self.elapsed
            images: dict[int, bytes] = {}
            for path in sorted(self._durable, key=lambda p: p.count(os.sep)):
                node = self._durable[path]
                if not after._is_dir(os.path.dirname(path)):
                    continue  # its directory did not survive
                if isinstance(node, _Dir):
                    after._nodes[path] = _Dir()
                else:
                    if id(node) not in images:
                        images[id(node)] = self._image(node)
                    after._nodes[path] = _File(bytearray(images[id(node)]), images[id(node)])
            after._durable = dict(after._nodes)
            self.crashed = True
            self._fds.clear()
            return after

    def _image(self, file: _File) -> bytes:
        """One file's bytes after a crash: durable ones kept, later ones torn anywhere."""
        old, new = file.durable, file.on_disk()
        common = len(os.path.commonprefix([old, new]))
        if common < len(old) and self.rng.random() < 0.5:
            return old  # the rewrite or cut never reached the disk
        extra = len(new) - common
        pick = self.rng.random()
        keep = 0 if pick < 0.25 else extra if pick < 0.5 else self.rng.randint(0, extra)
        return new[: common + keep]

    def files(self) -> dict[str, bytes]:
        """Every file's current bytes by path (for tests comparing two disks)."""
        with self._lock:
            return {p: bytes(n.data) for p, n in self._nodes.items() if isinstance(n, _File)}

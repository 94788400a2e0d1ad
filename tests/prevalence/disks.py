"""The two disks the storage tests run on: the real one and the simulated one."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

from prevalence.fs import CREATE, OS, FileSystem, read_file, write_all
from prevalence.simfs import SimFileSystem


@dataclass
class Disk:
    """A file system and a directory on it, with plain helpers for a test's own file edits."""

    fs: FileSystem
    dir: str

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    def read(self, path: str) -> bytes:
        return read_file(self.fs, path)

    def write(self, path: str, data: bytes) -> None:
        fd = self.fs.open(path, CREATE)
        try:
            write_all(self.fs, fd, data)
        finally:
            self.fs.close(fd)

    def size(self, path: str) -> int:
        return len(self.read(path))


def make_disk(kind: str, tmp_path, seed: int = 0) -> Disk:
    if kind == "os":
        return Disk(OS, str(tmp_path))
    return Disk(SimFileSystem(random.Random(seed)), "/sim/data")

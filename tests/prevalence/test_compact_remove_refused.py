"""A segment that compaction cannot delete (on Windows: a reader such as `prevalence
journal dump` has it open) stays where it is; the journal goes on."""
from __future__ import annotations

import errno
import os

from prevalence.fs import OsFileSystem
from prevalence.journal import Journal


class HeldOpen(OsFileSystem):
    """remove() of the held file fails as Windows fails it for a file another process has open."""

    def __init__(self) -> None:
        self.held: str | None = None

    def remove(self, path: str) -> None:
        if path == self.held:
            raise PermissionError(errno.EACCES, "The process cannot access the file because it is being used "
                                                "by another process", path)
        super().remove(path)


def test_a_segment_compaction_cannot_delete_leaves_the_journal_usable(tmp_path):
    """Seen: the failed delete poisoned the journal: every later write raised
    EngineHaltedError, so one reader holding an obsolete segment halted the engine."""
    fs = HeldOpen()
    j = Journal(str(tmp_path), segment_bytes=4096, fs=fs)
    for i in range(1, 301):
        j.append(i, 1, 1, b"x" * 40)
    j.sync()
    files = j.segment_files()
    assert len(files) >= 4
    fs.held = files[1]  # the first goes, the second is held: nothing after it may go
    removed = j.compact(int(os.path.basename(files[3]).split(".")[0]) - 1)
    assert removed == 1 and os.path.exists(files[1]) and os.path.exists(files[2])
    j.append(301, 1, 1, b"y")
    j.wait(301)
    assert [e.index for e in j.entries(j.first_index, 302)][-1] == 301
    fs.held = None
    assert j.compact(int(os.path.basename(files[3]).split(".")[0]) - 1) == 2  # retried later
    j.close()
    with Journal(str(tmp_path)) as again:
        assert again.first_index == int(os.path.basename(files[3]).split(".")[0]) and again.last_index == 301

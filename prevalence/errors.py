"""The framework's errors. Each says what went wrong and where."""
from __future__ import annotations


class PrevalenceError(Exception):
    """Base of every error the framework raises (a transaction's own exceptions excepted)."""


class CodecError(PrevalenceError):
    """A transaction or query could not be encoded or decoded (unknown type, bad fields)."""


class UnreadableEntry(CodecError):
    """A journaled entry (or a snapshot) this program cannot decode: most often written
    by a newer release (a transaction class it lacks, or a newer version of one). The
    state stops before it, unchanged; ``index`` is the entry's (the snapshot's)."""

    def __init__(self, index: int, reason: str, what: str | None = None, snapshot: bool = False):
        super().__init__(f"{'snapshot' if snapshot else 'entry'} {index}{f' ({what})' if what else ''}: {reason}")
        self.index = index
        self.reason = reason
        self.what = what  # "type name version N", when the entry says that much
        self.snapshot = snapshot  # a snapshot's root, not an entry, is what cannot be read


class JournalCorruptError(PrevalenceError):
    """The journal is damaged before its tail; nothing was modified."""

    def __init__(self, message: str, *, path: str, offset: int):
        super().__init__(f"{path} at byte offset {offset}: {message}")
        self.path = path
        self.offset = offset


class SnapshotError(PrevalenceError):
    """No usable snapshot, or one could not be written."""


class UnpicklableSnapshot(SnapshotError):
    """A whole snapshot file whose root this program cannot unpickle (most often, a newer
    release's classes): not damaged, unreadable here."""


class OutcomeUnknown(PrevalenceError):
    """A command may or may not have been applied, and nobody can tell any more (its
    session expired before the retry): look at the state before sending it again."""


class EngineHaltedError(PrevalenceError):
    """The engine stopped accepting work after a write failure; reopen it to recover."""


class ClosedError(PrevalenceError):
    """The engine or journal was used after close()."""


class LockedError(PrevalenceError):
    """Another process holds the data directory."""


class DiskFull(PrevalenceError):
    """A write found the disk full. Nothing was lost and nothing is poisoned: the journal
    cut its file back to the last whole record and still holds what was not written, so
    the same ``sync``/``wait`` (or snapshot write) succeeds once space returns. Refuse new
    work meanwhile. Any other write or fsync failure halts the journal instead."""

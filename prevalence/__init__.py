"""Object prevalence: plain Python objects made durable by a journal of transactions.

    with prevalence.open("data/", Bank) as db:
        db.execute(Deposit("alice", 10))   # durable when it returns
        db.query(Balance("alice"))
        db.snapshot()
"""
from __future__ import annotations

from typing import Any, Callable

from .codec import CODEC, Codec
from .engine import Engine
from .entry import Entry, EntryKind
from .errors import (
    ClosedError,
    CodecError,
    EngineHaltedError,
    JournalCorruptError,
    LockedError,
    OutcomeUnknown,
    PrevalenceError,
    SnapshotError,
)
from .journal import Journal
from .sessions import SessionExpired
from .snapshots import SnapshotMeta
from .transaction import Context, Query, Transaction

__all__ = [
    "open", "state_at", "Engine", "Transaction", "Query", "Context", "Entry", "EntryKind", "Journal",
    "SnapshotMeta", "CODEC", "Codec", "PrevalenceError", "CodecError", "JournalCorruptError",
    "SnapshotError", "EngineHaltedError", "ClosedError", "LockedError", "OutcomeUnknown", "SessionExpired",
]


def open(path: str, root_factory: Callable[[], Any], **options: Any) -> Engine:  # noqa: A001 - DESIGN.md's name
    """Create or recover the engine kept in directory ``path``; options as :class:`Engine`.

    ``fsync``: "always" (execute returns once the entry is on disk), "batch" (once the
    operating system has it; fsync every few ms) or "never" (left to the OS).
    ``snapshot_every`` / ``snapshot_bytes``: write a snapshot in the background after that
    many entries / journal bytes. ``keep_snapshots``: how many to keep (older ones, and the
    journal segments only they needed, are removed). ``read_only`` with ``at_index``: the
    state as of that index, for inspection; nothing on disk is touched.
    """
    return Engine(path, root_factory, **options)


def state_at(path: str, root_factory: Callable[[], Any], index: int | None = None) -> Engine:
    """A read-only engine holding the state as of ``index`` (default: the newest)."""
    return Engine(path, root_factory, read_only=True, at_index=index)

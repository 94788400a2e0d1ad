"""The storage interface the Raft core reads, and an in-memory implementation.

The core never writes storage: the host persists what a ``Ready`` asks for (entries,
hard state, snapshot) and the core reads it back through :class:`Storage`. The next
issue implements the same protocol on the prevalence journal.

Index conventions: the log holds entries ``first_index() .. last_index()``; the entry
just before, ``first_index() - 1``, is covered by the snapshot and ``term()`` still
answers for it. An empty log has ``last_index() == first_index() - 1``.
"""
from __future__ import annotations

from typing import Protocol, Sequence

from prevalence.entry import Entry
from replication.errors import CompactedError, RaftError, UnavailableError
from replication.membership import Membership
from replication.messages import HardState, Snapshot, SnapshotMeta


class Storage(Protocol):
    """What the core reads. Errors: CompactedError / UnavailableError, nothing else."""

    def initial_state(self) -> tuple[HardState, Membership]:
        """The persisted hard state, and the membership in force at the snapshot index.

        The core derives the current membership by scanning the CONFIG entries stored
        after the snapshot, since a configuration takes effect when appended.
        """

    def first_index(self) -> int:
        """Index of the first entry still stored (snapshot index + 1)."""

    def last_index(self) -> int:
        """Index of the last stored entry (the snapshot index if none)."""

    def term(self, index: int) -> int:
        """Term of the entry at ``index``; valid for ``first_index() - 1`` too.

        Raises CompactedError below that, UnavailableError above ``last_index()``.
        """

    def entries(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry]:
        """Entries ``[lo, hi)``, stopping once ``max_bytes`` of data is exceeded but
        always returning at least one entry. Raises CompactedError if ``lo`` is
        compacted, UnavailableError if ``hi > last_index() + 1``."""

    def snapshot(self) -> Snapshot:
        """The newest snapshot (metadata and state bytes); UnavailableError if it is
        temporarily not available (the leader then retries later)."""


def limit_size(entries: list[Entry], max_bytes: int | None) -> list[Entry]:
    """The longest prefix within ``max_bytes`` of data, but at least one entry."""
    if max_bytes is None or len(entries) <= 1:
        return entries
    total = 0
    for i, e in enumerate(entries):
        total += len(e.data)
        if total > max_bytes and i > 0:
            return entries[:i]
    return entries


_EMPTY = Membership()


class MemoryStorage:
    """In-memory storage for the simulator and tests; the host calls the mutators.

    ``_ents[0]`` is a dummy entry standing for the snapshot (its index and term), so
    ``term()`` answers for the snapshot index like it does for a real entry.
    """

    def __init__(self, membership: Membership = _EMPTY) -> None:
        self.hard_state = HardState()
        self._snapshot = Snapshot(SnapshotMeta(0, 0, membership), b"")
        self._ents: list[Entry] = [Entry(0, 0, 0, b"")]

    # ------------------------------------------------------------------ reads
    def initial_state(self) -> tuple[HardState, Membership]:
        return self.hard_state, self._snapshot.meta.membership

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        return self._ents[0].index + len(self._ents) - 1

    def term(self, index: int) -> int:
        offset = self._ents[0].index
        if index < offset:
            raise CompactedError(index, offset + 1)
        if index - offset >= len(self._ents):
            raise UnavailableError(f"index {index} is past the last stored index {self.last_index()}")
        return self._ents[index - offset].term

    def entries(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry]:
        offset = self._ents[0].index
        if lo <= offset:
            raise CompactedError(lo, offset + 1)
        if hi > self.last_index() + 1:
            raise UnavailableError(f"entries up to {hi - 1} requested, last stored is {self.last_index()}")
        if lo >= hi:
            return []
        return limit_size(self._ents[lo - offset:hi - offset], max_bytes)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # ------------------------------------------------------------------ writes (host)
    def set_hard_state(self, hs: HardState) -> None:
        self.hard_state = hs

    def note_commit(self, hs: HardState) -> None:
        """A commit-only change (nothing to make durable): as JournalStorage.note_commit."""
        self.hard_state = hs

    def truncate(self, from_index: int) -> None:
        """Delete entries at and after ``from_index`` (a follower's conflicting suffix)."""
        offset = self._ents[0].index
        if from_index <= offset:
            raise CompactedError(from_index, offset + 1)
        del self._ents[from_index - offset:]

    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries; an overlap with stored entries replaces them."""
        if not entries:
            return
        offset = self._ents[0].index
        first = entries[0].index
        if first <= offset:  # already covered by the snapshot: skip that part
            entries = entries[offset + 1 - first:]
            if not entries:
                return
            first = entries[0].index
        if first > self.last_index() + 1:
            raise RaftError(f"gap in log: appending {first} after {self.last_index()}")
        del self._ents[first - offset:]
        self._ents.extend(entries)

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Install a received snapshot: the whole log is replaced by it."""
        if snap.meta.index < self._snapshot.meta.index:
            raise RaftError(f"snapshot {snap.meta.index} is older than the stored {self._snapshot.meta.index}")
        self._snapshot = snap
        self._ents = [Entry(snap.meta.index, snap.meta.term, 0, b"")]

    def create_snapshot(self, meta: SnapshotMeta, data: bytes) -> Snapshot:
        """Record a snapshot the host took at ``meta.index`` (see RaftNode.snapshot_meta)."""
        if meta.index <= self._snapshot.meta.index:
            raise RaftError(f"snapshot {meta.index} is not newer than {self._snapshot.meta.index}")
        if meta.index > self.last_index():
            raise UnavailableError(f"snapshot index {meta.index} is past the last index {self.last_index()}")
        self._snapshot = Snapshot(meta, data)
        return self._snapshot

    def compact(self, index: int) -> None:
        """Drop entries up to ``index``; a snapshot at or past it must exist."""
        offset = self._ents[0].index
        if index <= offset:
            return
        if index > self._snapshot.meta.index:
            raise RaftError(f"cannot compact to {index}: the snapshot only covers {self._snapshot.meta.index}")
        dummy = self._ents[index - offset]
        self._ents = [Entry(dummy.index, dummy.term, 0, b"")] + self._ents[index - offset + 1:]

    def clone(self) -> "MemoryStorage":
        """A copy (the simulator's "disk" image of a node)."""
        other = MemoryStorage.__new__(MemoryStorage)
        other.hard_state = self.hard_state
        other._snapshot = self._snapshot
        other._ents = list(self._ents)
        return other

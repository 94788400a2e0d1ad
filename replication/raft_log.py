"""The node's view of the Raft log: stable entries in storage plus unstable ones.

Entries appended by the core (a leader's proposals, a follower's appends, a received
snapshot) are *unstable* until the host reports them durable through ``advance``.
Unstable entries shadow storage from ``offset`` on: after a conflict a follower's new
suffix replaces entries storage still holds, and the host truncates storage from
``offset`` when it persists the Ready.

With asynchronous storage writes the host may hold several writes in flight, so the
log also tracks ``in_progress``: unstable entries below it were handed to the host in
an earlier Ready and are being written; only those from it on go into the next one.

Entries just made stable stay in memory too (``recent``, up to :data:`RECENT_BYTES`),
ending where the unstable ones begin. Reading them back from storage is what costs: the
journal parses and checksums every record. Every node applies its committed entries
from here, and a leader reads a returning follower's backlog from here, under its core
lock, while heartbeats wait (docs/benchmarks.md, catch-up).
"""
from __future__ import annotations

from prevalence.entry import Entry
from replication.errors import CompactedError, RaftError, UnavailableError
from replication.messages import Snapshot
from replication.storage import Storage, limit_size

RECENT_BYTES = 8 << 20  # stable entries kept in memory, by data size plus _ENTRY_COST each
_ENTRY_COST = 160  # what an Entry and its objects take besides the data (CPython 3.11)


class RaftLog:
    __slots__ = ("storage", "unstable", "offset", "pending_snapshot", "committed", "applied",
                 "in_progress", "snap_in_progress", "recent", "recent_bytes")

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.unstable: list[Entry] = []
        self.offset = storage.last_index() + 1  # index of unstable[0]
        self.pending_snapshot: Snapshot | None = None
        self.committed = storage.first_index() - 1
        self.applied = storage.first_index() - 1
        self.in_progress = self.offset  # unstable entries below it are being written
        self.snap_in_progress = False  # pending_snapshot is being written
        self.recent: list[Entry] = []  # the stable entries just below offset, as storage has them
        self.recent_bytes = 0

    # ------------------------------------------------------------------ reading
    def first_index(self) -> int:
        if self.pending_snapshot is not None:
            return self.pending_snapshot.meta.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        if self.unstable:
            return self.unstable[-1].index
        if self.pending_snapshot is not None:
            return self.pending_snapshot.meta.index
        return self.offset - 1

    def last_term(self) -> int:
        return self.term(self.last_index())

    def term(self, index: int) -> int:
        """Term at ``index``; CompactedError / UnavailableError outside the log."""
        if index >= self.offset:
            pos = index - self.offset
            if pos < len(self.unstable):
                return self.unstable[pos].term
            raise UnavailableError(f"index {index} is past the last index {self.last_index()}")
        snap = self.pending_snapshot
        if snap is not None:
            if index == snap.meta.index:
                return snap.meta.term
            raise CompactedError(index, snap.meta.index + 1)
        return self.storage.term(index)

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (CompactedError, UnavailableError):
            return False

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Election restriction: is a candidate's log at least as up-to-date as ours?"""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    def slice(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry]:
        """Entries ``[lo, hi)`` within ``max_bytes`` (at least one)."""
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise CompactedError(lo, self.first_index())
        if hi > self.last_index() + 1:
            raise UnavailableError(f"entries up to {hi - 1} requested, last is {self.last_index()}")
        if lo >= self.offset:
            return limit_size(self.unstable[lo - self.offset:hi - self.offset], max_bytes)
        first_recent = self.offset - len(self.recent)
        if lo >= first_recent:
            return _take(self.recent, lo - first_recent, self.unstable, hi - lo, max_bytes)
        stored = self.storage.entries(lo, min(hi, self.offset), max_bytes)
        if hi <= self.offset or (max_bytes is not None and len(stored) < min(hi, self.offset) - lo):
            return stored
        return limit_size(stored + self.unstable[:hi - self.offset], max_bytes)

    def entries_from(self, lo: int, max_bytes: int | None) -> list[Entry]:
        return self.slice(lo, self.last_index() + 1, max_bytes)

    def find_conflict(self, entries: list[Entry]) -> int:
        """Index of the first entry that is new or conflicts with ours, or 0 if none."""
        if not entries:
            return 0
        last = self.last_index()
        if entries[0].index > last:
            return entries[0].index
        for e in entries:
            if e.index > last or not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest ``i <= index`` whose term is ``<= term``, and that term.

        A rejecting follower sends this as a hint, and the leader uses it to skip a
        whole term of mismatching entries per round trip. Stops at the compaction
        point, returning term 0 there (unknown).
        """
        while index > 0:
            try:
                t = self.term(index)
            except (CompactedError, UnavailableError):
                return index, 0
            if t <= term:
                return index, t
            index -= 1
        return 0, 0

    def _apply_limit(self, allow_unstable: bool) -> int:
        # With async writes a committed entry is applied only once it is durable here
        # too: the state machine (and the snapshots taken of it) never runs ahead of
        # this node's own log.
        return self.committed if allow_unstable else min(self.committed, self.offset - 1)

    def has_next_committed(self, allow_unstable: bool = True) -> bool:
        return self._apply_limit(allow_unstable) > max(self.applied, self.first_index() - 1)

    def next_committed(self, max_bytes: int | None, allow_unstable: bool = True) -> list[Entry]:
        lo = max(self.applied + 1, self.first_index())
        hi = self._apply_limit(allow_unstable)
        if lo > hi:
            return []
        return self.slice(lo, hi + 1, max_bytes)

    def has_unhanded(self) -> bool:
        """Anything the host has not been given to write yet (async writes)?"""
        return self.in_progress < self.offset + len(self.unstable) or (
            self.pending_snapshot is not None and not self.snap_in_progress)

    def take_unhanded(self) -> list[Entry]:
        """The unstable entries not yet handed to the host; they are in progress now."""
        ents = self.unstable[self.in_progress - self.offset:]
        self.in_progress = self.offset + len(self.unstable)
        if self.pending_snapshot is not None:
            self.snap_in_progress = True
        return ents

    # ------------------------------------------------------------------ writing
    def append(self, entries: list[Entry]) -> None:
        """Add entries at ``entries[0].index``, replacing any suffix from there on."""
        first = entries[0].index
        if first <= self.committed:
            raise RaftError(f"refusing to overwrite committed entry {first} (commit is {self.committed})")
        end = self.offset + len(self.unstable)
        if first == end:
            self.unstable.extend(entries)
        elif first <= self.offset:
            self._forget_recent_from(first)  # stable entries being replaced
            self.unstable = list(entries)
            self.offset = first
        elif first < end:
            del self.unstable[first - self.offset:]
            self.unstable.extend(entries)
        else:
            raise RaftError(f"gap in log: appending {first} after {end - 1}")
        if first < self.in_progress:
            self.in_progress = first  # a replaced suffix must be written again

    def commit_to(self, index: int) -> bool:
        if index > self.committed:
            if index > self.last_index():
                raise RaftError(f"commit {index} is past the last index {self.last_index()}")
            self.committed = index
            return True
        return False

    def maybe_commit(self, index: int, term: int) -> bool:
        """Commit ``index`` only if its entry is of ``term`` (the Figure 8 rule)."""
        if index > self.committed and self.match_term(index, term):
            self.committed = index
            return True
        return False

    def stable_to(self, index: int, term: int) -> None:
        """The host made entries up to ``index`` durable (ignored if since replaced)."""
        if index < self.offset:
            return
        pos = index - self.offset
        if pos < len(self.unstable) and self.unstable[pos].term == term:
            self._remember(self.unstable[:pos + 1])
            del self.unstable[:pos + 1]
            self.offset = index + 1
            self.in_progress = max(self.in_progress, self.offset)

    def stable_snapshot_to(self, index: int) -> None:
        if self.pending_snapshot is not None and self.pending_snapshot.meta.index == index:
            self.pending_snapshot = None
            self.snap_in_progress = False

    def restore(self, snap: Snapshot) -> None:
        """Replace the whole log with a received snapshot (made durable by the host)."""
        self.pending_snapshot = snap
        self.snap_in_progress = False
        self.recent, self.recent_bytes = [], 0
        self.unstable = []
        self.offset = self.in_progress = snap.meta.index + 1
        self.committed = snap.meta.index

    # ------------------------------------------------------------------ recent entries
    def _remember(self, entries: list[Entry]) -> None:
        """Entries now stable (they end at the new offset - 1); drop the oldest past the
        limit, a quarter at a time so that trimming stays cheap."""
        self.recent.extend(entries)
        self.recent_bytes += sum(len(e.data) for e in entries) + _ENTRY_COST * len(entries)
        if self.recent_bytes > RECENT_BYTES:
            drop, freed = 0, 0
            while self.recent_bytes - freed > RECENT_BYTES * 3 // 4:
                freed += len(self.recent[drop].data) + _ENTRY_COST
                drop += 1
            del self.recent[:drop]
            self.recent_bytes -= freed

    def _forget_recent_from(self, index: int) -> None:
        """Stable entries from ``index`` on are being replaced (a conflicting suffix)."""
        keep = max(0, index - (self.offset - len(self.recent)))
        if keep < len(self.recent):
            del self.recent[keep:]
            self.recent_bytes = sum(len(e.data) for e in self.recent) + _ENTRY_COST * len(self.recent)


def _take(recent: list[Entry], start: int, unstable: list[Entry], count: int, max_bytes: int | None) -> list[Entry]:
    """``count`` entries from ``recent[start]`` on, continuing into ``unstable``, within
    ``max_bytes`` of data (at least one), without copying more than is returned."""
    end = min(len(recent), start + count)
    if max_bytes is not None:
        total = 0
        for k in range(start, end):
            total += len(recent[k].data)
            if total > max_bytes and k > start:
                return recent[start:k]
    out = recent[start:end]
    rest = count - len(out)
    if rest > 0:
        out += unstable[:rest]
        return limit_size(out, max_bytes)
    return out

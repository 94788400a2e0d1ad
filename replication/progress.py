"""What a leader knows about each follower's log, and quorum arithmetic.

A follower's progress is in one of three states (as in etcd's raft):
PROBE     the leader does not know where the follower's log matches; it sends one
          append per heartbeat interval and waits for the answer (or a heartbeat reply).
REPLICATE the logs match up to ``match``; the leader streams appends optimistically,
          at most ``max_inflight`` unacknowledged messages and ``max_inflight_bytes``
          of entry data at a time (pipelining with flow control, as etcd's
          MaxInflightMsgs and MaxInflightBytes): a follower far behind is fed a
          bounded amount per acknowledgement, never its whole backlog at once.
SNAPSHOT  the follower needs entries the leader has compacted; the leader streams the
          host's snapshot in chunks and sends no appends until the follower has it.
"""
from __future__ import annotations

from collections import deque
from enum import IntEnum

from replication.messages import Snapshot


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Inflights:
    """The unacknowledged appends, oldest first: the last index and the entry bytes of
    each. Full at ``capacity`` messages or at ``max_bytes`` bytes (0: no byte limit)."""

    __slots__ = ("capacity", "max_bytes", "bytes", "_q")

    def __init__(self, capacity: int, max_bytes: int = 0) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0
        self._q: deque[tuple[int, int]] = deque()

    def add(self, last_index: int, size: int = 0) -> None:
        self._q.append((last_index, size))
        self.bytes += size

    def free_le(self, index: int) -> None:
        q = self._q
        while q and q[0][0] <= index:
            self.bytes -= q.popleft()[1]

    def full(self) -> bool:
        return len(self._q) >= self.capacity or 0 < self.max_bytes <= self.bytes

    def count(self) -> int:
        return len(self._q)

    def reset(self) -> None:
        self._q.clear()
        self.bytes = 0


class Progress:
    __slots__ = (
        "match", "next", "state", "probe_sent", "probe_sent_at", "inflights", "recent_active", "was_active", "heard",
        "is_learner", "snapshot", "snap_offset", "snap_moved_at", "lease_seq", "hb_match", "sent_commit",
    )

    def __init__(self, next_index: int, max_inflight: int, is_learner: bool = False,
                 max_inflight_bytes: int = 0) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False  # PROBE: an append is outstanding, wait for an answer
        self.probe_sent_at = 0  # PROBE: the leader tick it went out
        self.inflights = Inflights(max_inflight, max_inflight_bytes)
        self.recent_active = True  # heard from since the last quorum check (CheckQuorum)
        self.was_active = False  # heard from in the check window before that
        self.heard = False  # heard from at all by this leader (recent_active starts True)
        self.is_learner = is_learner
        self.snapshot: Snapshot | None = None  # SNAPSHOT: the one being sent
        self.snap_offset = 0  # SNAPSHOT: bytes the follower has acknowledged
        self.snap_moved_at = 0  # SNAPSHOT: leader tick when a chunk last went out or was acked
        self.lease_seq = -1  # the leader tick of the newest heartbeat it answered
        self.hb_match = -1  # match when the previous heartbeat answer came (stall check)
        self.sent_commit = 0  # the newest commit index sent to it (Append or Heartbeat)

    def heard_lately(self) -> bool:
        """Heard from within the last one or two election timeouts: ``recent_active``
        alone is False for a healthy peer from each quorum check until its next answer."""
        return self.heard and (self.recent_active or self.was_active)

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.inflights.reset()
        self.snapshot = None
        self.snap_offset = 0
        self.snap_moved_at = 0

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT and self.snapshot is not None:
            pending = self.snapshot.meta.index
            self._reset(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snap: Snapshot) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.snapshot = snap

    @property
    def pending_snapshot(self) -> int:
        return self.snapshot.meta.index if self.snapshot is not None else 0

    def maybe_update(self, index: int) -> bool:
        """A successful append response up to ``index``; False if it is stale."""
        updated = False
        if index > self.match:
            self.match = index
            updated = True
            self.probe_sent = False
        if self.next < index + 1:
            self.next = index + 1
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """A rejection of the append at ``rejected``; False if the rejection is stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def stalled(self) -> bool:
        """REPLICATE with appends outstanding, yet no progress between two heartbeat
        answers: the appends were lost, so fall back to probing from ``match``."""
        stalled = self.state == ProgressState.REPLICATE and self.match < self.next - 1 and self.match == self.hb_match
        self.hb_match = self.match
        return stalled

    def commit_behind(self, committed: int) -> bool:
        """Could telling it ``committed`` advance its commit? Only up to what it has."""
        return self.sent_commit < min(committed, self.match)

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def sent_entries(self, count: int, last_index: int, size: int = 0, now: int = 0) -> None:
        """Bookkeeping after sending, at leader tick ``now``, an append carrying
        ``count`` entries of ``size`` bytes of data."""
        if self.state == ProgressState.REPLICATE:
            if count:
                self.next = last_index + 1
                self.inflights.add(last_index, size)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True
            self.probe_sent_at = now

    def heartbeat_answered(self, sent_at: int) -> None:
        """The answer to a heartbeat sent at leader tick ``sent_at``: the follower is
        reachable, so a probe sent no later than that heartbeat may have been lost and
        goes out again. Answers to older heartbeats (a backlog a returning follower
        answers in one burst) say nothing about the probe: each would resend it."""
        if sent_at >= self.probe_sent_at:
            self.probe_sent = False


def quorum(n: int) -> int:
    return n // 2 + 1


def quorum_index(values: list[int]) -> int:
    """The largest value that a majority of ``values`` reach (one value per voter)."""
    if not values:
        return 0
    values.sort(reverse=True)
    return values[quorum(len(values)) - 1]


def committed_index(voters: tuple[str, ...], matches: dict[str, int]) -> int:
    """The largest index stored on a majority of ``voters`` (learners never count)."""
    return quorum_index([matches.get(v, 0) for v in voters])


def vote_result(voters: tuple[str, ...], votes: dict[str, bool]) -> int:
    """1 won, -1 lost, 0 still pending. Only voters count; learners never do."""
    granted = rejected = 0
    for v in voters:
        r = votes.get(v)
        if r is True:
            granted += 1
        elif r is False:
            rejected += 1
    q = quorum(len(voters))
    if granted >= q:
        return 1
    if rejected > len(voters) - q:
        return -1
    return 0

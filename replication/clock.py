"""The journal's clock: the time a leader stamps on the entries it proposes.

A transaction sees ``ctx.now``, session expiry is measured in it, and ``journal dump``
and subscriptions show it, so one node's wrong wall clock must not decide it. The
leader therefore stamps the *voters'* time: each follower sends its wall clock with its
answers to heartbeats (``HeartbeatResp.wall_us``; not with its acknowledgements of
entries, which wait for its disk: behind a slow fsync they read as a clock set back by
seconds); the leader keeps
the latest reading of each, carried forward by its own monotonic clock, and stamps the
lower median of those estimates and its own wall clock (CockroachDB's idea of bounded
offsets, Marzullo-style without the intervals). With 2f + 1 voters, f clocks that are
off by any amount, the leader's included, cannot move the stamp outside the range of
the good ones. The stamp never goes below the newest stamp in the log, so the journal
time is monotonic along the log and what a transaction saw is what the dump shows.

Until the leader has readings from a majority of voters, the stamp is the newest one
in the log (the journal time stands still for the round trip it takes a new leader to
hear from its followers), never its own clock alone; only a log with no stamp yet (a new
cluster, no session to expire) starts from the leader's clock. A voter whose estimate is further
than ``max_offset_us`` from the stamp is reported, so an operator fixes its clock.

Pure: times come in as arguments, nothing here reads a clock.
"""
from __future__ import annotations

from collections import deque
from typing import Iterable

DEFAULT_MAX_OFFSET_US = 500_000  # a wall clock this far from the voters' median is reported
#: A reading is as old as the time its message spent on the way (a lossy link, TCP
#: retransmissions: a second and more): each voter's estimate is the least delayed of its
#: readings of the last READING_WINDOW seconds, as NTP keeps its least delayed sample.
READING_WINDOW = 10.0
#: No message is held up on the way longer than this: a reading further behind the best
#: one is a clock set back, taken at once.
MAX_DELAY_US = 2_000_000


class JournalClock:
    """A leader's view of its voters' wall clocks (kept across terms: readings age well,
    each is carried forward by the monotonic clock)."""

    def __init__(self, node_id: str, max_offset_us: int = DEFAULT_MAX_OFFSET_US) -> None:
        self.id = node_id
        self.max_offset_us = max_offset_us
        self.last_stamp = 0  # the newest stamp this node knows to be in the log
        # node -> its readings as (monotonic s when heard, wall µs minus monotonic µs then),
        # the second falling from the front: the front one is the least delayed one
        self._readings: dict[str, deque[tuple[float, int]]] = {}

    def observe(self, node: str, wall_us: int, mono: float) -> None:
        """``node`` said its wall clock read ``wall_us``; heard at monotonic ``mono``."""
        if wall_us > 0 and node != self.id:
            q = self._readings.setdefault(node, deque())
            offset = wall_us - int(mono * 1_000_000)
            if q and offset < q[0][1] - MAX_DELAY_US:
                q.clear()
            while q and (q[-1][1] <= offset or q[-1][0] > mono):  # a later reading as good or better
                q.pop()
            q.append((mono, offset))
            while q[0][0] < mono - READING_WINDOW:
                q.popleft()

    def saw_stamp(self, stamp_us: int) -> None:
        """A stamp already in the log (a new leader's log tail): never stamp below it."""
        if stamp_us > self.last_stamp:
            self.last_stamp = stamp_us

    def estimates(self, voters: Iterable[str], wall_us: int, mono: float) -> dict[str, int]:
        """Each voter's wall clock now, as far as this node can tell (itself: its own)."""
        out: dict[str, int] = {}
        for v in voters:
            if v == self.id:
                out[v] = wall_us
            else:
                q = self._readings.get(v)
                if q:
                    out[v] = q[0][1] + int(mono * 1_000_000)
        return out

    def stamp(self, voters: tuple[str, ...], wall_us: int, mono: float) -> int:
        """The time of the entries proposed now: monotonic along the log."""
        est = sorted(self.estimates(voters, wall_us, mono).values())
        if len(est) >= len(voters) // 2 + 1:
            median = est[(len(est) - 1) // 2]
            if median > self.last_stamp:
                self.last_stamp = median
        elif self.last_stamp == 0:
            self.last_stamp = wall_us  # a new cluster's first entries: no session to expire yet
        return self.last_stamp

    def outliers(self, voters: tuple[str, ...], wall_us: int, mono: float) -> dict[str, int]:
        """Voters whose clock is further than ``max_offset_us`` from the voters' median,
        with their offset in µs (positive: ahead)."""
        est = self.estimates(voters, wall_us, mono)
        if len(est) < len(voters) // 2 + 1:
            return {}
        values = sorted(est.values())
        median = values[(len(values) - 1) // 2]
        return {v: t - median for v, t in est.items() if abs(t - median) > self.max_offset_us}

"""How long this node's disk takes to write, and how much longer its elections must wait.

Raft needs a vote's round trip well inside the election timeout, and that round trip
holds two fsyncs: the candidate stores its new term and vote before it asks, and each
voter stores them before it answers. On a cheap SD card, or a disk an antivirus scans,
one fsync can take 0.5-2 s while the election timeout is 0.25-0.5 s: every candidate
then gives up before its votes arrive and starts over in a higher term, which the
voters must store again. Measured with three such nodes (0.5 s per fsync, the default
timeouts): no leader for as long as it lasted, terms climbing by some 3 a second, and
clients waiting in silence.

So a node whose own writes are slow waits that much longer before it campaigns (an
*election slack*, in ticks, added to its randomized election timeout): twice its
slowest recent write, for its own fsync and a voter's like it. Safety does not depend
on when a node campaigns, only liveness, and a node with a fast disk is unchanged. A
write counts for SLOW_WRITE_MEMORY seconds, so a disk that recovers gives the timeouts
back; the slack is bounded by MAX_SLACK seconds, so a disk stalled for minutes does not
keep its node out of elections for longer than that after it returns.
"""
from __future__ import annotations

import logging
import math
from collections import deque

log = logging.getLogger("replication.node")

SLOW_WRITE_MEMORY = 30.0  # seconds a slow write keeps counting
MAX_SLACK = 10.0  # seconds added to the election timeout at most
WARN_EVERY = 60.0  # seconds between two warnings about the same slow disk


class DiskPace:
    """The slowest recent write of this node's disk and the election slack it calls for.

    ``observe(seconds, now)`` returns the slack, in ticks, that the core's randomized
    election timeout should carry now (0 while writes take less than a tick)."""

    def __init__(self, node_id: str, tick: float, election_ticks: int) -> None:
        self.id = node_id
        self.tick = tick
        self.election_ticks = election_ticks
        self.slowest = 0.0  # seconds: the slowest write seen since ``since``
        self.since = 0.0
        self.warned_at = -math.inf
        self.proposed: deque[tuple[int, float]] = deque(maxlen=1024)  # (a batch's last index, when proposed)

    def appended(self, last: int, now: float) -> None:
        """A leader proposed entries up to ``last`` at ``now``."""
        self.proposed.append((last, now))

    def proposed_at(self, index: int) -> float | None:
        """When the batch holding ``index`` was proposed here (None: not known), so that a
        leader can tell how long its followers took to commit it."""
        while self.proposed and self.proposed[0][0] < index:
            self.proposed.popleft()
        return self.proposed[0][1] if self.proposed else None

    def observe(self, seconds: float, now: float) -> int:
        if now - self.since > SLOW_WRITE_MEMORY:
            self.slowest, self.since = 0.0, now  # forget writes from before the memory
        if seconds > 0 and seconds >= self.slowest / 2:  # still about as slow: remembered longer
            self.slowest, self.since = max(seconds, self.slowest), now
        if self.slowest < self.tick:
            return 0
        slack = min(2 * self.slowest, MAX_SLACK)
        if 2 * seconds > self.tick * self.election_ticks and now - self.warned_at >= WARN_EVERY:
            self.warned_at = now
            log.warning("%s: a write to this node's disk took %.2f s, more than half the election timeout "
                        "(%.2f s): this node waits %.1f s longer before it campaigns, so that votes, which "
                        "each wait for a write, can come back in time; a slow disk (an SD card, an antivirus "
                        "scan) also slows every commit: see docs/operations.md", self.id, seconds,
                        self.tick * self.election_ticks, slack)
        return math.ceil(slack / self.tick)

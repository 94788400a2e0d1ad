"""The sending policy of one peer link, sans I/O: :class:`PeerLink`.

One ``PeerLink`` per peer decides everything the peer transport decides: the bounded
queue (messages and bytes, the oldest dropped; only the newest ``DOWN_QUEUE_LIMIT``
kept while the peer is down), which frames go out together in one batch,
the in-flight window, when a connection counts as hung, when to dial again (jittered
exponential backoff, reset after a connection that worked for a while), up or down,
and the counters the status shows. It does no I/O: a shell (the threads and sockets
of ``rpc.peer_sender``, or the simulator's network model) performs it and reports
back. Time comes in as ``now`` (monotonic seconds, the shell's clock); randomness from
the ``random.Random`` given.

The shell's side of the contract::

    enqueue(payload)                 a message for the peer (never blocks, may drop the oldest)
    start_connect(now) -> bool       True: dial now (the link is then "connecting")
    connected(now)                   the connection is up
    connect_failed(reason, now)      the attempt failed: the next waits for the backoff
    can_send_direct(size) -> bool    idle link: the caller's thread may write this message itself
    next_batch() -> Batch | None     frames for one batch, in order, within the window
    sent(batch_id, now)              the batch is written: now in flight
    replied(batch_id, now)           the peer answered it (possibly before ``sent``)
    check(now) -> str | None         a reason to kill the connection (the oldest call is overdue)
    lost(reason, now)                the connection is gone: what was in flight counts as failed
    next_deadline() -> float | None  when check() or start_connect() has something to do
    status() -> dict                 the counters (docs/transport.md)
    too_slow(now) -> float | None    answers slower than ``slow_round_trip``: say so (once a minute)

``connected``, ``connect_failed`` and ``lost`` return the previous up/down state when
it changed (for the shell's one log line per transition), else None.
"""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

DOWN_QUEUE_LIMIT = 64  # messages kept for a peer that is not connected
DIRECT_SEND_LIMIT = 16 * 1024  # larger messages always go through the sender thread
ROUND_TRIPS_KEPT = 16  # the link's round trip is the fastest of its last this many answers
SLOW_WARNING_EVERY = 60.0  # seconds between two warnings of a link too slow

IDLE, CONNECTING, OPEN = "idle", "connecting", "open"


@dataclass(frozen=True)
class LinkSettings:
    """The knobs of ``PeerTransport`` that are policy (docs/transport.md)."""

    queue_limit: int = 10_000
    queue_bytes_limit: int = 64 * 1024 * 1024
    max_batch_frames: int = 1024
    max_batch_bytes: int = 1024 * 1024
    max_in_flight: int = 8
    request_timeout: float = 1.0
    backoff_min: float = 0.05
    backoff_max: float = 1.0
    #: answers that all take this long (seconds; the election timeout) are reported; 0: never
    slow_round_trip: float = 0.0


class Batch(NamedTuple):
    id: int
    frames: list


class PeerLink:
    def __init__(self, settings: LinkSettings, rng: random.Random, now: float) -> None:
        self.cfg = settings
        self.rng = rng
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.phase = IDLE  # IDLE (waiting to dial) | CONNECTING | OPEN
        self.state = "unknown"  # what the status shows: "up" | "down" once known
        self.since = now  # when the state last changed
        self.last_error: str | None = None
        self.retry_at = float("-inf")  # the first attempt is at once
        self.attempt = 0  # failed attempts since the last working connection
        self.redial = False  # the address changed during an attempt: the next one at once
        self.opened_at = 0.0
        self.inflight: dict[int, tuple[float, int]] = {}  # batch id -> (sent at, frames), oldest first
        self.writing: tuple[int, int] | None = None  # (batch id, frames) handed out, not yet written
        self.answered_early: int | None = None  # the batch being written, if its answer came already
        self.last_id = 0
        self.sent_frames = self.delivered = self.dropped = self.failed = self.connects = 0
        self.round_trips: deque[float] = deque(maxlen=ROUND_TRIPS_KEPT)  # seconds from write to answer
        self.slow_said_at = float("-inf")

    # -- the queue ------------------------------------------------------------------------------
    def enqueue(self, payload: bytes) -> None:
        q, cfg = self.queue, self.cfg
        q.append(payload)
        self.queued_bytes += len(payload)
        # While the peer is down, keep only the newest few messages: an old backlog replayed
        # on reconnect is stale by then (Raft resends what is still needed, and a node that
        # fell far behind must get a snapshot, not the backlog).
        limit = min(cfg.queue_limit, DOWN_QUEUE_LIMIT) if self.state == "down" else cfg.queue_limit
        while (len(q) > limit or self.queued_bytes > cfg.queue_bytes_limit) and len(q) > 1:
            self.queued_bytes -= len(q.popleft())  # drop the oldest: Raft resends
            self.dropped += 1

    @property
    def queued(self) -> int:
        return len(self.queue)

    @property
    def in_flight(self) -> int:
        return len(self.inflight)

    # -- sending --------------------------------------------------------------------------------
    def can_send_direct(self, size: int) -> bool:
        """An idle open link (nothing queued, in flight or being written) and a message small
        enough for the socket buffer to take at once: the caller may enqueue and write it
        itself (``next_batch`` then hands out just that message), order being kept."""
        return (self.phase == OPEN and not self.queue and not self.inflight and self.writing is None
                and size <= DIRECT_SEND_LIMIT)

    def next_batch(self) -> Batch | None:
        """The next frames to write as one call, oldest first, or None: not open, nothing
        queued, a batch still being written (order), or the window full."""
        q, cfg = self.queue, self.cfg
        if self.phase != OPEN or not q or self.writing is not None or len(self.inflight) >= cfg.max_in_flight:
            return None
        frames = [q.popleft()]
        size = len(frames[0])
        while q and len(frames) < cfg.max_batch_frames and size + len(q[0]) <= cfg.max_batch_bytes:
            frame = q.popleft()
            frames.append(frame)
            size += len(frame)
        self.queued_bytes -= size
        self.last_id += 1
        self.writing = (self.last_id, len(frames))
        self.sent_frames += len(frames)
        return Batch(self.last_id, frames)

    def sent(self, batch_id: int, now: float) -> None:
        """The batch is written (its call is under way); ignored if its connection is gone.
        Answered already (see ``replied``): delivered now."""
        if self.writing is not None and self.writing[0] == batch_id:
            if self.answered_early == batch_id:
                self.delivered += self.writing[1]
                self.answered_early = None
            else:
                self.inflight[batch_id] = (now, self.writing[1])
            self.writing = None

    def replied(self, batch_id: int, now: float) -> None:
        """The peer answered the batch: its frames are delivered. (A peer does not reject
        a batch: bytes that are not one end the connection, which ``lost`` counts.)

        An answer may come while the batch is still being written (the writer has yet
        to return, or the peer answered before reading it all): it then still counts as
        being written, so nothing else is written alongside it, until ``sent``."""
        if self.writing is not None and self.writing[0] == batch_id:
            self.answered_early = batch_id
            return
        item = self.inflight.pop(batch_id, None)
        if item is not None:  # else its connection was lost: already counted
            self.delivered += item[1]
            self.round_trips.append(max(0.0, now - item[0]))

    @property
    def round_trip(self) -> float | None:
        """The fastest of the last answers (a pause or a slow fsync on the peer delays
        some answers, a slow link all of them); None before any."""
        return min(self.round_trips) if self.round_trips else None

    def too_slow(self, now: float) -> float | None:
        """The round trip, when every recent answer took ``slow_round_trip`` or more and
        it was not said within SLOW_WARNING_EVERY seconds: the shell logs it. Over such a
        link the votes of an election come back after their candidate started over."""
        limit = self.cfg.slow_round_trip
        if (not limit or len(self.round_trips) < ROUND_TRIPS_KEPT or min(self.round_trips) < limit
                or now - self.slow_said_at < SLOW_WARNING_EVERY):
            return None
        self.slow_said_at = now
        return min(self.round_trips)

    # -- the connection -------------------------------------------------------------------------
    def start_connect(self, now: float) -> bool:
        """True if an attempt is due now; the link is then connecting until the shell reports."""
        if self.phase != IDLE or now < self.retry_at:
            return False
        self.phase = CONNECTING
        return True

    def connected(self, now: float) -> str | None:
        self.phase = OPEN
        self.opened_at = now
        self.connects += 1
        return self._set("up", now)

    def connect_failed(self, reason: str, now: float) -> str | None:
        if self.phase != CONNECTING:
            return None
        self.phase = IDLE
        self.last_error = reason
        self._backoff(now)
        return self._set("down", now)

    def lost(self, reason: str, now: float) -> str | None:
        """The open connection died (or the shell closed it): whatever was in flight or
        being written may or may not have arrived, and counts as failed. A no-op unless open."""
        if self.phase != OPEN:
            return None
        if now - self.opened_at > 2 * self.cfg.backoff_max:
            self.attempt = 0  # it was a working connection: reconnect quickly
        self.failed += sum(n for _, n in self.inflight.values())
        if self.writing is not None:
            self.failed += self.writing[1]
            self.writing = None
        self.answered_early = None
        self.inflight.clear()
        self.phase = IDLE
        self.last_error = reason
        self._backoff(now)
        return self._set("down", now)

    def address_changed(self, now: float) -> None:
        """The peer moved: the next attempt (after the shell closes the connection) is at once."""
        if self.phase == IDLE:
            self.retry_at = now
        else:
            self.redial = True

    def check(self, now: float) -> str | None:
        """Why the connection must be killed now (then call ``lost``), or None: the oldest
        call has had no answer for longer than ``request_timeout``."""
        if self.phase == OPEN and self.inflight:
            sent_at = next(iter(self.inflight.values()))[0]
            if now - sent_at > self.cfg.request_timeout:
                return f"no answer within {self.cfg.request_timeout:g} s (peer hung?)"
        return None

    def next_deadline(self) -> float | None:
        """When ``check`` may find the oldest call overdue (open) or an attempt is due (idle)."""
        if self.phase == OPEN:
            if self.inflight:
                return next(iter(self.inflight.values()))[0] + self.cfg.request_timeout
            return None
        return self.retry_at if self.phase == IDLE else None

    def _backoff(self, now: float) -> None:
        cfg = self.cfg
        delay = min(cfg.backoff_max, cfg.backoff_min * (2 ** min(self.attempt, 20)))
        self.attempt += 1
        self.retry_at = now + delay * self.rng.uniform(0.5, 1.0)
        if self.redial:
            self.redial = False
            self.retry_at = now

    def _set(self, state: str, now: float) -> str | None:
        was = self.state
        if was == state:
            return None
        self.state, self.since = state, now
        return was

    # -- what status shows ----------------------------------------------------------------------
    def status(self) -> dict:
        """The counters of ``PeerTransport.peer_status()`` except the address; ``since`` is
        in the shell's monotonic time."""
        return {
            "connected": self.state == "up",
            "queued": len(self.queue),
            "queued_bytes": self.queued_bytes,
            "in_flight": len(self.inflight),
            "sent": self.sent_frames,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "failed": self.failed,
            "reconnects": max(0, self.connects - 1),
            "last_error": self.last_error,
            "since": self.since,
            "round_trip": self.round_trip,
        }

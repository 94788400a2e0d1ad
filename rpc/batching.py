"""Coalescing one client's concurrent commands into one call ("first waiter leads").

A node serves each client connection on one thread, one request at a time, so threads
that share a client and each send their own ``execute`` wait in line for round trips.
Instead, a caller that finds no call in flight *leads*: it sends its command at once
(a lone caller pays no added latency). Callers that arrive while a call is in flight
queue up; when the call returns, the leader completes everyone it carried and hands the
lead to the first one queued, who sends everything queued so far as the next batch.
It is the group commit of the engine's journal, on the client side. The next batch
waits (at most ``linger``, 1 ms) for the callers the last call answered to call again:
they come back a thread wake-up later, and without it they would always miss the call
that leaves at once and ride the one after, the callers split in two alternating halves.

Up to ``max_in_flight`` calls travel at once (default one), each on a *lane* of its own
(the client gives every lane its own connection, which the node serves on its own
thread): the cycle of one call (the node's write, the followers' round trip, the reply)
is mostly waiting, so a second call in flight fills it. A caller that finds a lane free
leads at once; when a call returns and commands are queued, its lane passes to the
first of them. With one lane, commands apply in the order their calls leave (a
pipelining thread's in the order sent, across failovers too: a batch is retried until
it is answered before the next leaves); with more, two calls in flight are proposed in
whichever order the node's threads reach the leader's log.

Pipelined commands (``submit``, behind ``execute_async``) have no thread waiting on
them: when one of them is due to lead, a pump thread of the coalescer (as many as lanes)
sends the batch instead, and each such command's ``callback`` is called once it is done. Synchronous
and pipelined commands share the queue, so both fill the same batches.

Every command keeps its own session and sequence number, so the node applies each one
exactly once however often the batch is retried, and each caller gets its own result
or exception. A batch is bounded by ``max_count`` commands and ``max_bytes`` of encoded
transactions (a single larger command goes alone, and the node judges its size).
"""
from __future__ import annotations

import _thread
import logging
import threading
import time
from collections import deque
from queue import SimpleQueue
from typing import Any, Callable

from rpc.subscription import ClusterUnavailable

log = logging.getLogger("rpc.batching")

#: Commands per call at most; beyond a few dozen the node's own batching gains little.
MAX_BATCH = 64
#: Encoded bytes per call at most: half the node's default request limit (1 MiB).
MAX_BATCH_BYTES = 512 * 1024
#: Calls travelling at once, each on its own connection. One keeps a pipelining thread's
#: commands in the order sent; two apply them in an order the node's threads decide, and
#: carry more only where the nodes have CPU to spare (docs/benchmarks.md).
CALLS_IN_FLIGHT = 1
#: At most this many: each is a connection the node serves on a thread of its own.
MAX_CALLS_IN_FLIGHT = 16
#: Seconds a call waits, at most, for the callers the previous call answered (a few
#: thread wake-ups); after waiting in vain, the next LINGER_SKIP calls do not wait.
LINGER = 0.001
LINGER_SKIP = 16


class _Latch:
    """A one-shot event for the one thread waiting on a command: a lock held until set.
    A ``threading.Event`` costs a Condition to make and a new lock at each wait, about
    10 µs a command in all, and the client's callers wake one after another on it.

    Whether it is set is a flag, not the lock's state: an exception raised in the waiter
    right after its acquire returned (a Ctrl-C that lands as the latch is set is raised
    there, at the end of the call) leaves the lock held, and ``Coalescer._abandon`` must
    still see that the caller was handed the lead."""

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._set = False
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def set(self) -> None:
        self._set = True  # first: a waiter woken by the release sees it
        try:
            self._lock.release()
        except RuntimeError:  # set already
            pass

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """True once set; False if ``timeout`` seconds passed first."""
        if self._set:
            return True
        # interruptible by Ctrl-C, as an Event's wait is
        if not (self._lock.acquire() if timeout is None else self._lock.acquire(True, max(0.0, timeout))):
            return self._set
        try:
            self._lock.release()  # stays set
        except RuntimeError:  # a second set() released it meanwhile
            pass
        return True


class Command:
    """One caller's command on its way: filled in with ``reply`` or ``error``."""

    __slots__ = ("data", "session", "seq", "deadline", "reply", "error", "callback", "owner", "sends", "_event",
                 "_lane", "_caller")

    def __init__(self, data: bytes, session: int, seq: int, deadline: float,
                 callback: Callable[["Command"], None] | None = None, owner: Any = None):
        self.data, self.session, self.seq, self.deadline = data, session, seq, deadline
        self.reply: list | None = None
        self.error: BaseException | None = None
        self.callback = callback  # set for a pipelined command: nobody waits on it, it has no _event
        self.owner = owner  # the submitter's own bookkeeping (its future, its session)
        self.sends = 0  # requests that carried it (the sender counts them)
        # a waiting caller's: set when done, or when handed the lead (a pipelining thread
        # making thousands of commands a second does without)
        self._event = _Latch() if callback is None else None
        self._lane = -1  # the lane it leads on, once handed the lead
        self._caller = 0  # the waiting caller's thread (run() sets it)

    def _finish(self) -> None:
        if self._event is not None:
            self._event.set()
        if self.callback is not None:
            try:
                self.callback(self)
            except KeyboardInterrupt:
                raise
            except BaseException:  # noqa: BLE001 - one caller's callback must not stop the others
                # SystemExit from a future's done-callback too: it ended the sending thread
                # mid-batch, its lane never freed, every later call hung
                log.exception("completing a pipelined command failed")

    @property
    def done(self) -> bool:
        return self.reply is not None or self.error is not None


class Coalescer:
    """Runs commands through ``send(batch, lane)``, which fills in every command of the
    batch; at most ``max_in_flight`` sends run at once, each on its own lane."""

    def __init__(self, send: Callable[[list[Command], int], None], max_count: int = MAX_BATCH,
                 max_bytes: int = MAX_BATCH_BYTES, max_in_flight: int = 1, linger: float = LINGER):
        if max_count < 1 or max_bytes < 1 or max_in_flight < 1 or not linger >= 0:
            raise ValueError("a batch holds at least one command and one byte, one call travels at least, "
                             "and the linger is not negative")
        self._send = send
        self.max_count, self.max_bytes, self.max_in_flight = max_count, max_bytes, max_in_flight
        self.linger = linger
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # a caller queued (for a lingering leader)
        self._away: set[int] = set()  # threads a call answered that have not called again
        self._skip = 0  # calls left that do not linger: the last linger waited in vain
        self._queue: deque[Command] = deque()
        self._free = list(range(max_in_flight - 1, -1, -1))  # lanes with no call (lane 0 first)
        self._pumps: list[threading.Thread] = []
        self._closed = False
        self._pump_work: SimpleQueue[tuple[int, Command] | None] = SimpleQueue()  # (lane, command to lead)
        self.calls = 0  # calls sent, and commands they carried (for benchmarks and tests)
        self.commands = 0
        self.largest = 0

    def run(self, cmd: Command) -> None:
        """Return once ``cmd`` has its reply or error (this thread may send others' too)."""
        cmd._caller = threading.get_ident()
        with self._lock:
            self._away.discard(cmd._caller)
            lane = self._free.pop() if self._free else -1
            if lane < 0:
                self._queue.append(cmd)
                if not self._away or len(self._queue) >= self.max_count - 1:
                    # what a lingering leader waits for (with several lanes, several may):
                    # woken at each arrival, it took the GIL a dozen times a call for nothing
                    self._arrived.notify_all()
        if lane < 0:
            try:
                # bounded by the command's deadline: the calls in flight may never end (a
                # done-callback that calls execute holds the very call this one waits for)
                if not cmd._event.wait(cmd.deadline - time.monotonic()) and self._expire(cmd):
                    return
                cmd._event.wait()  # taken into a batch (bounded by its deadlines) or handed the lead
                # within the try: a Ctrl-C pending as wait() returns is raised at the next
                # function entry (done's), and the lane handed to this caller must go on
                if cmd.done:
                    return
                lane = cmd._lane  # handed the lead (and taken off the queue)
            except BaseException:  # KeyboardInterrupt while queued: leave no lane stranded
                self._abandon(cmd)
                raise
        self._lead(cmd, lane)

    def _expire(self, cmd: Command) -> bool:
        """``cmd``'s deadline passed while it was queued: True (and its error set) if it
        was still in the queue, never sent."""
        with self._lock:
            if cmd not in self._queue:
                return False
            self._queue.remove(cmd)
        cmd.error = ClusterUnavailable(f"execute: the deadline passed while waiting for one of the "
                                       f"{self.max_in_flight} call(s) in flight to end (a slow cluster, or a "
                                       "done-callback of this client waiting on it); not sent")
        return True

    def _abandon(self, cmd: Command) -> None:
        """The caller of ``cmd`` gave up waiting: take it off the queue, or pass on the
        lane it was handed; once it is in a batch, that batch completes it."""
        with self._lock:
            if cmd in self._queue:
                self._queue.remove(cmd)
                cmd.error = KeyboardInterrupt()  # never sent: its session number stays unused
                return
            handed = not cmd.done and cmd._lane >= 0 and cmd._event.is_set()
        if handed:
            cmd.error = KeyboardInterrupt()
            self._hand_over(cmd._lane)

    def submit(self, cmd: Command) -> None:
        """Queue ``cmd`` (which has a ``callback``) and return at once; a pump thread
        sends it when a lane is free, else it boards the next batch."""
        with self._lock:
            lane = self._free.pop() if self._free else -1
            if lane < 0:
                self._queue.append(cmd)
                return
        self._wake_pump(lane, cmd)

    def _lead(self, first: Command, lane: int) -> None:
        """Send ``first`` and what is queued behind it, on ``lane``; then pass the lane on."""
        if first.callback is None and self.linger:
            try:
                self._linger()
            except BaseException:  # KeyboardInterrupt while lingering: nothing was sent
                self._hand_over(lane)
                raise
        batch = self._take(first)
        try:
            self._send(batch, lane)
        except BaseException as exc:  # noqa: BLE001 - every caller must hear of it
            for c in batch:
                if not c.done:
                    c.error = exc
        finally:
            with self._lock:  # before they are woken: one that comes back at once is not away
                self._away.update(c._caller for c in batch if c.callback is None)
            for c in batch:
                if not c.done:
                    c.error = RuntimeError("the batch call returned no reply for this command")
                if c is not first or c.callback is not None:
                    c._finish()
            self._hand_over(lane)

    def _linger(self) -> None:
        """Wait (at most ``linger`` s) for the callers the last call answered to call again,
        so that they board this call. Without it, callers that share a client split into
        two halves: those a call answers come back a thread wake-up later, after the next
        call has left with the others, and each half waits for the other's call as well as
        its own. A caller that does not come back in time (busy elsewhere) is not waited
        for again, and the next calls do not linger."""
        with self._lock:
            if not self._away or self._skip:
                self._skip = max(0, self._skip - 1)
                return
            deadline = time.monotonic() + self.linger
            while self._away and len(self._queue) < self.max_count - 1:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._away.clear()
                    self._skip = LINGER_SKIP
                    return
                self._arrived.wait(left)

    def _wake_pump(self, lane: int, first: Command) -> None:
        with self._lock:
            closed = self._closed
            if not closed and len(self._pumps) < self.max_in_flight:  # never more busy pumps than lanes
                pump = threading.Thread(target=self._pump_loop, name="rpc-pipeline", daemon=True)
                self._pumps.append(pump)
                pump.start()
        if closed:  # no pump any more: this thread sends it (the closed client fails it at once)
            self._lead(first, lane)
            return
        self._pump_work.put((lane, first))

    def _pump_loop(self) -> None:
        """Leads for pipelined commands: woken with a lane and the command to lead."""
        while True:
            work = self._pump_work.get()
            if work is None:
                return
            self._lead(work[1], work[0])
            del work  # the last command's callback holds its client: not kept while idle

    def close(self) -> None:
        """Let the pump threads end (the client is closed: nothing more is sent)."""
        with self._lock:
            self._closed = True
            pumps, self._pumps = len(self._pumps), []
        for _ in range(pumps):
            self._pump_work.put(None)

    def _take(self, first: Command) -> list[Command]:
        with self._lock:
            batch = [first]
            size = len(first.data)
            while self._queue and len(batch) < self.max_count and size + len(self._queue[0].data) <= self.max_bytes:
                size += len(self._queue[0].data)
                batch.append(self._queue.popleft())
            self.calls += 1
            self.commands += len(batch)
            self.largest = max(self.largest, len(batch))
        return batch

    def _hand_over(self, lane: int) -> None:
        with self._lock:
            if not self._queue:
                self._free.append(lane)
                self._free.sort(reverse=True)  # the lowest free lane is taken next: lane 0 when idle
                return
            head = self._queue.popleft()
            if head.callback is None:
                head._lane = lane  # a waiting caller sends the next batch on this lane
                head._event.set()
                return
        self._wake_pump(lane, head)  # nobody waits on a pipelined command: a pump sends it

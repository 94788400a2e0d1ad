"""Coalescing one client's concurrent commands into one call ("first waiter leads").

A node serves each client connection on one thread, one request at a time, so threads
that share a client and each send their own ``execute`` wait in line for round trips.
Instead, a caller that finds no call in flight *leads*: it sends its command at once
(a lone caller pays no added latency). Callers that arrive while a call is in flight
queue up; when the call returns, the leader completes everyone it carried and hands the
lead to the first one queued, who sends everything queued so far as the next batch.
It is the group commit of the engine's journal, on the client side.

Pipelined commands (``submit``, behind ``execute_async``) have no thread waiting on
them: when one of them is due to lead, a pump thread of the coalescer sends the batch
instead, and each such command's ``callback`` is called once it is done. Synchronous
and pipelined commands share the queue, so both fill the same batches.

Every command keeps its own session and sequence number, so the node applies each one
exactly once however often the batch is retried, and each caller gets its own result
or exception. A batch is bounded by ``max_count`` commands and ``max_bytes`` of encoded
transactions (a single larger command goes alone, and the node judges its size).
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any, Callable

log = logging.getLogger("rpc.batching")

#: Commands per call at most; beyond a few dozen the node's own batching gains little.
MAX_BATCH = 64
#: Encoded bytes per call at most: half the node's default request limit (1 MiB).
MAX_BATCH_BYTES = 512 * 1024


class Command:
    """One caller's command on its way: filled in with ``reply`` or ``error``."""

    __slots__ = ("data", "session", "seq", "deadline", "reply", "error", "callback", "owner", "_event")

    def __init__(self, data: bytes, session: int, seq: int, deadline: float,
                 callback: Callable[["Command"], None] | None = None, owner: Any = None):
        self.data, self.session, self.seq, self.deadline = data, session, seq, deadline
        self.reply: list | None = None
        self.error: BaseException | None = None
        self.callback = callback  # set for a pipelined command: nobody waits on _event
        self.owner = owner  # the submitter's own bookkeeping (its future, its session)
        self._event = threading.Event()  # set when done, or when handed the lead

    def _finish(self) -> None:
        self._event.set()
        if self.callback is not None:
            try:
                self.callback(self)
            except Exception:  # noqa: BLE001 - one caller's callback must not stop the others
                log.exception("completing a pipelined command failed")

    @property
    def done(self) -> bool:
        return self.reply is not None or self.error is not None


class Coalescer:
    """Runs commands through ``send(batch)``, which fills in every command of the batch."""

    def __init__(self, send: Callable[[list[Command]], None], max_count: int = MAX_BATCH,
                 max_bytes: int = MAX_BATCH_BYTES):
        if max_count < 1 or max_bytes < 1:
            raise ValueError("a batch holds at least one command and one byte")
        self._send = send
        self.max_count, self.max_bytes = max_count, max_bytes
        self._lock = threading.Lock()
        self._queue: deque[Command] = deque()
        self._busy = False
        self._pump: threading.Thread | None = None
        self._pump_wake = threading.Event()
        self.calls = 0  # calls sent, and commands they carried (for benchmarks and tests)
        self.commands = 0
        self.largest = 0

    def run(self, cmd: Command) -> None:
        """Return once ``cmd`` has its reply or error (this thread may send others' too)."""
        with self._lock:
            self._queue.append(cmd)
            lead = not self._busy
            self._busy = True
        if not lead:
            cmd._event.wait()
            if cmd.done:
                return
            # handed the lead: cmd is at the head of the queue
        self._lead(cmd)  # cmd is at the head of the queue: always in this batch

    def submit(self, cmd: Command) -> None:
        """Queue ``cmd`` (which has a ``callback``) and return at once; the pump thread
        sends it when no call is in flight, else it boards the next batch."""
        with self._lock:
            self._queue.append(cmd)
            lead = not self._busy
            self._busy = True
        if lead:
            self._wake_pump()

    def _lead(self, own: Command | None) -> None:
        batch = self._take()
        try:
            self._send(batch)
        except BaseException as exc:  # noqa: BLE001 - every caller must hear of it
            for c in batch:
                if not c.done:
                    c.error = exc
        finally:
            for c in batch:
                if not c.done:
                    c.error = RuntimeError("the batch call returned no reply for this command")
                if c is not own:
                    c._finish()
            self._hand_over()

    def _wake_pump(self) -> None:
        with self._lock:
            if self._pump is None:
                self._pump = threading.Thread(target=self._pump_loop, name="rpc-pipeline", daemon=True)
                self._pump.start()
        self._pump_wake.set()

    def _pump_loop(self) -> None:
        """Leads for pipelined commands: woken only when it holds the lead."""
        while True:
            self._pump_wake.wait()
            self._pump_wake.clear()
            self._lead(None)

    def _take(self) -> list[Command]:
        with self._lock:
            batch = [self._queue.popleft()]
            size = len(batch[0].data)
            while self._queue and len(batch) < self.max_count and size + len(self._queue[0].data) <= self.max_bytes:
                size += len(self._queue[0].data)
                batch.append(self._queue.popleft())
            self.calls += 1
            self.commands += len(batch)
            self.largest = max(self.largest, len(batch))
        return batch

    def _hand_over(self) -> None:
        with self._lock:
            if not self._queue:
                self._busy = False
                return
            head = self._queue[0]
        if head.callback is None:
            head._event.set()  # a waiting caller sends the next batch
        else:
            self._wake_pump()  # nobody waits on a pipelined command: the pump sends it

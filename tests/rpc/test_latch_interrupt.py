"""rpc.batching._Latch: a KeyboardInterrupt raised in the waiter right after its acquire
returned (where a Ctrl-C that lands as the latch is set is raised) must not make the
latch read unset: Coalescer._abandon would keep the lane it was handed, and every later
caller of the client would wait for it forever."""
from __future__ import annotations

import threading
import time

from rpc.batching import Coalescer, Command


class _InterruptAfterAcquire:
    def __init__(self, lock):
        self._l = lock

    def acquire(self, *a):
        self._l.acquire(*a)
        raise KeyboardInterrupt

    def release(self):
        self._l.release()

    def locked(self):
        return self._l.locked()


def _interrupted_caller_passes_the_lane_on(b: Command, max_count: int) -> None:
    """A's call is in flight, B queues and is handed the lane when it ends, and B's
    caller is interrupted there; C, later, must still get a lane."""
    gate = threading.Event()
    sent = []

    def send(batch, lane):
        sent.append(batch[0].data)
        if batch[0].data == b"A":
            gate.wait(5)
        for c in batch:
            c.reply = ["ok", c.data]

    co = Coalescer(send, max_in_flight=1, max_count=max_count, linger=0)
    threading.Thread(target=co.run, args=(Command(b"A", 1, 1, time.monotonic() + 30),), daemon=True).start()
    while not sent:
        time.sleep(0.001)
    raised = []

    def b_caller():
        try:
            co.run(b)
        except KeyboardInterrupt:
            raised.append(True)

    tb = threading.Thread(target=b_caller, daemon=True)
    tb.start()
    while b not in co._queue:
        time.sleep(0.001)
    gate.set()
    tb.join(5)
    assert raised
    c = Command(b"C", 1, 3, time.monotonic() + 30)
    tc = threading.Thread(target=co.run, args=(c,), daemon=True)
    tc.start()
    tc.join(5)
    assert c.done, "the lane handed to the interrupted caller was never passed on"


def test_a_caller_interrupted_as_it_is_handed_the_lead_passes_the_lane_on():
    b = Command(b"B", 1, 2, time.monotonic() + 30)
    b._event._lock = _InterruptAfterAcquire(b._event._lock)
    _interrupted_caller_passes_the_lane_on(b, max_count=64)


class _InterruptAtDone(Command):
    """Raises KeyboardInterrupt the first time its handed caller reads ``done``: where a
    Ctrl-C that lands just after wait() returned is raised (the next function entry)."""

    __slots__ = ("armed",)

    @property
    def done(self):
        if getattr(self, "armed", False) and threading.get_ident() == self._caller and self._event.is_set():
            self.armed = False
            raise KeyboardInterrupt
        return Command.done.fget(self)


def test_a_caller_interrupted_just_after_its_wait_passes_the_lane_on():
    b = _InterruptAtDone(b"B", 1, 2, time.monotonic() + 30)
    b.armed = True
    _interrupted_caller_passes_the_lane_on(b, max_count=1)

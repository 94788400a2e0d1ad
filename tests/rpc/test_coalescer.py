"""rpc.batching.Coalescer with several calls in flight (lanes), without a cluster:
a fake send records which lane each batch took and how many sends overlapped."""
from __future__ import annotations

import random
import threading
import time

import pytest

from rpc.batching import Coalescer, Command


class FakeSend:
    def __init__(self, delay: float = 0.002):
        self.lock = threading.Lock()
        self.busy: set[int] = set()
        self.most = 0
        self.lanes_used: set[int] = set()
        self.sent: list[int] = []  # session ids, in the order the batches left
        self.delay = delay
        self.rng = random.Random(5)

    def __call__(self, batch: list[Command], lane: int) -> None:
        with self.lock:
            assert lane not in self.busy, f"lane {lane} carries two calls at once"
            self.busy.add(lane)
            self.most = max(self.most, len(self.busy))
            self.lanes_used.add(lane)
            self.sent.extend(c.session for c in batch)
            delay = self.delay * self.rng.random()
        time.sleep(delay)
        for c in batch:
            c.reply = ["ok", c.session]
        with self.lock:
            self.busy.discard(lane)


@pytest.mark.parametrize("lanes", [1, 2, 3])
def test_threads_and_pipelined_commands_share_at_most_max_in_flight_lanes(lanes):
    send = FakeSend()
    co = Coalescer(send, max_count=8, max_in_flight=lanes)
    results: dict[int, list] = {}
    done = threading.Semaphore(0)

    def callback(cmd: Command) -> None:
        results[cmd.session] = cmd.reply
        done.release()

    def caller(k: int) -> None:
        for j in range(40):
            sid = 1000 * (k + 1) + j
            cmd = Command(b"x", sid, 1, time.monotonic() + 10)
            co.run(cmd)
            results[sid] = cmd.reply

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for j in range(300):  # one thread keeps commands in flight as well
        co.submit(Command(b"y", j + 1, 1, time.monotonic() + 10, callback=callback))
    for t in threads:
        t.join(30)
    for _ in range(300):
        assert done.acquire(timeout=30)
    assert len(results) == 12 * 40 + 300
    assert all(r == ["ok", sid] for sid, r in results.items())
    assert sorted(send.sent) == sorted(results)  # each command sent once
    assert send.most <= lanes
    if lanes > 1:
        assert send.most == lanes and send.lanes_used == set(range(lanes))
    assert co._free == sorted(co._free, reverse=True) and set(co._free) == set(range(lanes))  # all lanes back


def test_a_lone_caller_leads_at_once_on_the_first_lane():
    send = FakeSend(delay=0)
    co = Coalescer(send, max_in_flight=2)
    cmd = Command(b"x", 7, 1, time.monotonic() + 1)
    co.run(cmd)
    assert cmd.reply == ["ok", 7] and send.lanes_used == {0}


def test_a_send_that_raises_fails_its_batch_and_frees_its_lane():
    def send(batch, lane):
        raise ConnectionError("gone")

    co = Coalescer(send, max_in_flight=2)
    for sid in (1, 2, 3):
        cmd = Command(b"x", sid, 1, time.monotonic() + 1)
        co.run(cmd)
        assert isinstance(cmd.error, ConnectionError)
    assert set(co._free) == {0, 1}


def test_no_lane_is_refused():
    with pytest.raises(ValueError):
        Coalescer(lambda b, lane: None, max_in_flight=0)


def test_with_one_lane_pipelined_commands_leave_in_the_order_submitted():
    send = FakeSend(delay=0.001)
    co = Coalescer(send, max_count=7, max_in_flight=1)
    done = threading.Semaphore(0)
    for j in range(500):
        co.submit(Command(b"y", j, 1, time.monotonic() + 10, callback=lambda c: done.release()))
    for _ in range(500):
        assert done.acquire(timeout=30)
    assert send.sent == list(range(500))


def test_failing_sends_on_two_lanes_at_once_leave_both_lanes_free():
    gate = threading.Barrier(2, timeout=5)

    def send(batch, lane):
        gate.wait()  # both lanes busy at the same moment
        raise ConnectionError("gone")

    co = Coalescer(send, max_in_flight=2)
    cmds = [Command(b"x", sid, 1, time.monotonic() + 1) for sid in (1, 2)]
    threads = [threading.Thread(target=co.run, args=(c,)) for c in cmds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert all(isinstance(c.error, ConnectionError) for c in cmds)
    assert sorted(co._free) == [0, 1]


class _Interrupted:
    """An Event whose wait is interrupted (Ctrl-C) once the test says so."""

    def __init__(self, go: threading.Event):
        self.inner, self.go = threading.Event(), go

    def wait(self, timeout=None):
        self.go.wait(5)
        raise KeyboardInterrupt

    def set(self):
        self.inner.set()

    def is_set(self):
        return self.inner.is_set()


@pytest.mark.parametrize("handed_first", [False, True])
def test_a_caller_interrupted_while_queued_strands_no_lane(handed_first):
    """Red before the fix: the abandoned command stayed queued, was later handed the
    lane, and nobody led it: every later call waited forever."""
    release = threading.Event()

    def send(batch, lane):
        release.wait(5)
        for c in batch:
            c.reply = ["ok", c.session]

    co = Coalescer(send, max_in_flight=1)
    first = Command(b"x", 1, 1, time.monotonic() + 5)
    t1 = threading.Thread(target=co.run, args=(first,))
    t1.start()
    while co._free:
        time.sleep(0.001)
    go = threading.Event()
    victim = Command(b"x", 2, 1, time.monotonic() + 5)
    victim._event = _Interrupted(go)
    caught = []

    def interrupted() -> None:
        try:
            co.run(victim)
        except KeyboardInterrupt:
            caught.append(True)

    t2 = threading.Thread(target=interrupted)
    t2.start()
    while victim not in co._queue:
        time.sleep(0.001)
    if handed_first:  # the call in flight ends and hands the victim the lane first
        release.set()
        t1.join(5)
        assert victim._event.is_set() and victim._lane == 0
    go.set()
    t2.join(5)
    release.set()
    t1.join(5)
    assert caught == [True] and isinstance(victim.error, KeyboardInterrupt)
    later = Command(b"x", 3, 1, time.monotonic() + 5)
    t3 = threading.Thread(target=co.run, args=(later,))
    t3.start()
    t3.join(5)
    assert later.reply == ["ok", 3], "a later call hung: a lane was stranded"


def test_close_ends_the_pump_threads():
    send = FakeSend(delay=0)
    co = Coalescer(send, max_in_flight=3)
    done = threading.Semaphore(0)
    for j in range(50):
        co.submit(Command(b"y", j, 1, time.monotonic() + 10, callback=lambda c: done.release()))
    for _ in range(50):
        assert done.acquire(timeout=10)
    pumps = list(co._pumps)
    assert pumps
    co.close()
    for p in pumps:
        p.join(5)
    assert not any(p.is_alive() for p in pumps)

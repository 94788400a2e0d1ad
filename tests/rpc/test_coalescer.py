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


def _cmd(k: int) -> Command:
    return Command(b"x", k, k, time.monotonic() + 30)


def test_callers_a_call_answered_board_the_next_call_instead_of_splitting_in_two_halves():
    """X's call leaves alone, Y queues behind it; when it returns Y leads and waits for
    X, whom that call answered, so that the next call carries both. Without waiting, X
    would queue behind Y's call, and so on: each caller's turn takes two calls."""
    y_queued, sizes = threading.Event(), []

    def send(batch: list[Command], lane: int) -> None:
        sizes.append(len(batch))
        if len(sizes) == 1:
            assert y_queued.wait(5)
        for c in batch:
            c.reply = ["ok", c.session]

    co = Coalescer(send, linger=5.0)  # long: the test does not race the clock
    x = threading.Thread(target=lambda: (co.run(_cmd(1)), co.run(_cmd(3))))
    x.start()
    while not sizes:
        time.sleep(0.001)
    y = threading.Thread(target=co.run, args=(_cmd(2),))
    y.start()
    while len(co._queue) < 1:
        time.sleep(0.001)
    y_queued.set()
    x.join(10), y.join(10)
    assert sizes == [1, 2]


def test_a_lone_sequential_caller_never_lingers():
    co = Coalescer(FakeSend(delay=0.0), linger=5.0)
    t0 = time.monotonic()
    for k in range(20):
        co.run(_cmd(k + 1))
    assert time.monotonic() - t0 < 5.0  # a single linger would take 5 s


def test_a_caller_that_does_not_come_back_is_waited_for_once_then_not_for_a_while():
    co = Coalescer(FakeSend(delay=0.0), linger=0.5)
    a = threading.Thread(target=co.run, args=(_cmd(1),))  # answered, then busy elsewhere for good
    a.start()
    a.join(5)
    took = []
    for k in range(2, 12):
        t0 = time.monotonic()
        co.run(_cmd(k))
        took.append(time.monotonic() - t0)
    assert took[0] >= 0.5 and max(took[1:]) < 0.5, took


def test_ctrl_c_while_lingering_leaves_the_lane_to_the_next_caller():
    co = Coalescer(FakeSend(delay=0.0), linger=1.0)
    a = threading.Thread(target=co.run, args=(_cmd(1),))
    a.start()
    a.join(5)  # thread a is now away: the next leader lingers for it

    class Interrupting:
        def wait(self, timeout=None):
            raise KeyboardInterrupt

    co._arrived = Interrupting()
    with pytest.raises(KeyboardInterrupt):
        co.run(_cmd(2))
    co._arrived = threading.Condition(co._lock)
    done = threading.Event()
    threading.Thread(target=lambda: (co.run(_cmd(3)), done.set()), daemon=True).start()
    assert done.wait(5)  # the lane was handed on, not stranded (one linger of 1 s at most)


def test_the_linger_is_not_negative():
    with pytest.raises(ValueError):
        Coalescer(FakeSend(), linger=-1.0)


def test_a_waiting_callers_latch_opens_once_and_stays_open():
    from rpc.batching import _Latch

    latch = _Latch()
    assert not latch.is_set()
    woke = []
    t = threading.Thread(target=lambda: (latch.wait(), woke.append(True)))
    t.start()
    time.sleep(0.02)
    assert not woke
    latch.set()
    t.join(5)
    assert woke == [True] and latch.is_set()
    latch.set()  # a second set (handed the lane, then done) changes nothing
    latch.wait()
    assert latch.is_set()

"""PeerLink, the peer transport's sending policy, driven by hand: no socket, no thread,
no clock (time is an argument). The threaded shell is tested in tests/rpc/test_transport.py."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replication.runtime.peer_link import DIRECT_SEND_LIMIT, DOWN_QUEUE_LIMIT, LinkSettings, PeerLink


def link(**kw) -> PeerLink:
    return PeerLink(LinkSettings(**kw), random.Random(1), now=0.0)


def opened(**kw) -> PeerLink:
    pl = link(**kw)
    assert pl.start_connect(0.0)
    assert pl.connected(0.0) == "unknown"
    return pl


def write(pl: PeerLink, now: float = 0.0):
    b = pl.next_batch()
    if b is not None:
        pl.sent(b.id, now)
    return b


def test_a_full_queue_drops_the_oldest_by_count_and_by_bytes():
    pl = link(queue_limit=10)
    for i in range(100):
        pl.enqueue(b"%d" % i)
    assert list(pl.queue) == [b"%d" % i for i in range(90, 100)]
    assert pl.status()["dropped"] == 90 and pl.queued_bytes == sum(len(f) for f in pl.queue)
    pl = link(queue_bytes_limit=1000)
    for i in range(100):
        pl.enqueue(bytes([i]) * 100)
    assert pl.queued == 10 and pl.queued_bytes == 1000 and pl.queue[0] == bytes([90]) * 100
    pl.enqueue(b"x" * 5000)  # a single larger message is still kept
    assert list(pl.queue) == [b"x" * 5000] and pl.dropped == 100


def test_while_the_peer_is_down_only_the_newest_few_are_kept():
    pl = link()
    for i in range(100):  # not known down yet: the full limit
        pl.enqueue(b"%d" % i)
    assert pl.queued == 100
    assert pl.start_connect(0.0) and pl.connect_failed("refused", 0.0) == "unknown"
    pl.enqueue(b"new")
    assert pl.queued == DOWN_QUEUE_LIMIT and pl.queue[-1] == b"new" and pl.queue[0] == b"%d" % (101 - DOWN_QUEUE_LIMIT)
    assert pl.dropped == 101 - DOWN_QUEUE_LIMIT
    assert pl.start_connect(1.0) and pl.connected(1.0) == "down"
    for i in range(100):
        pl.enqueue(b"up%d" % i)
    assert pl.queued == DOWN_QUEUE_LIMIT + 100  # up again: the full limit


def test_order_is_kept_across_direct_sends_and_batches():
    pl = opened()
    assert pl.can_send_direct(10) and not pl.can_send_direct(DIRECT_SEND_LIMIT + 1)
    pl.enqueue(b"a")
    b1 = pl.next_batch()
    assert b1.frames == [b"a"]
    assert not pl.can_send_direct(1)  # being written: nothing may overtake it
    pl.enqueue(b"b")
    pl.enqueue(b"c")
    assert pl.next_batch() is None  # one batch written at a time
    pl.sent(b1.id, 0.0)
    assert not pl.can_send_direct(1)  # in flight and queued
    b2 = write(pl)
    assert b2.frames == [b"b", b"c"] and b2.id > b1.id
    pl.replied(b1.id, 0.1)
    pl.replied(b2.id, 0.1)
    assert pl.can_send_direct(1)  # idle again
    st_ = pl.status()
    assert (st_["sent"], st_["delivered"], st_["failed"], st_["in_flight"]) == (3, 3, 0, 0)


def test_batches_are_bounded_by_frames_and_bytes():
    pl = opened(max_batch_frames=3, max_batch_bytes=250)
    for i in range(7):
        pl.enqueue(bytes([i]) * 100)
    sizes = []
    while (b := write(pl)) is not None:
        sizes.append(len(b.frames))
        pl.replied(b.id, 0.0)
    assert sizes == [2, 2, 2, 1]
    pl.enqueue(b"x" * 1000)  # larger than a batch: goes alone
    assert write(pl).frames == [b"x" * 1000]


def test_an_answer_before_the_write_returns_counts_once_written():
    """A peer may answer a batch its writer has not finished writing (the writer not yet
    scheduled, or a peer answering unread): it stays the batch being written, so nothing
    else is handed out or written alongside it, and is delivered once written."""
    pl = opened()
    pl.enqueue(b"a")
    b1 = pl.next_batch()
    pl.replied(b1.id, 0.1)
    pl.enqueue(b"b")
    assert pl.status()["delivered"] == 0 and pl.next_batch() is None and not pl.can_send_direct(1)
    pl.sent(b1.id, 0.2)
    assert pl.in_flight == 0 and pl.status()["delivered"] == 1
    assert write(pl).frames == [b"b"]
    pl.enqueue(b"c")
    b3 = pl.next_batch()
    pl.replied(b3.id, 0.3)
    pl.lost("reset", 0.4)  # answered, but its write failed: may or may not have arrived
    assert pl.status()["failed"] == 2 and pl.answered_early is None  # b and c


def test_the_window_bounds_the_calls_in_flight():
    pl = opened(max_in_flight=2, max_batch_frames=1)
    for i in range(5):
        pl.enqueue(b"%d" % i)
    b1, b2 = write(pl), write(pl)
    assert pl.next_batch() is None and pl.in_flight == 2
    pl.replied(b2.id, 0.1)  # any reply frees a slot
    b3 = write(pl)
    assert b3.frames == [b"2"] and pl.next_batch() is None
    pl.replied(b1.id, 0.2)
    assert pl.delivered == 2 and pl.failed == 0
    assert write(pl).frames == [b"3"]


def test_an_overdue_call_kills_the_link_and_its_calls_count_as_failed():
    pl = opened(request_timeout=1.0, max_batch_frames=1)
    for i in range(3):
        pl.enqueue(b"%d" % i)
    b1 = write(pl, 10.0)
    write(pl, 10.5)
    pl.next_batch()  # handed out, not yet written
    assert pl.next_deadline() == 11.0 and pl.check(11.0) is None
    reason = pl.check(11.01)
    assert reason == "no answer within 1 s (peer hung?)"
    assert pl.lost(reason, 11.01) == "up"
    st_ = pl.status()
    assert not st_["connected"] and st_["failed"] == 3 and st_["in_flight"] == 0 and st_["last_error"] == reason
    pl.replied(b1.id, 11.1)  # a late reply of the dead connection changes nothing
    assert pl.delivered == 0 and pl.failed == 3
    assert pl.lost("again", 11.2) is None and pl.last_error == reason  # lost once


def test_backoff_doubles_with_jitter_up_to_the_cap_and_resets_after_a_working_connection():
    pl = PeerLink(LinkSettings(backoff_min=0.05, backoff_max=1.0), random.Random(7), now=0.0)
    now, delays = 0.0, []
    for _ in range(8):
        assert pl.start_connect(now) and not pl.start_connect(now)  # one attempt at a time
        pl.connect_failed("refused", now)
        assert not pl.start_connect(now) and pl.next_deadline() > now
        delays.append(pl.next_deadline() - now)
        now = pl.next_deadline()
    for k, d in enumerate(delays):
        nominal = min(1.0, 0.05 * 2 ** k)
        assert nominal * 0.5 <= d <= nominal
    assert len(set(delays)) == len(delays)  # jittered
    # a connection that dies young does not reset the backoff
    assert pl.start_connect(now)
    pl.connected(now)
    pl.lost("reset", now + 1.0)
    assert pl.next_deadline() - (now + 1.0) >= 0.5
    # one that worked for longer than 2 x backoff_max does: the peer is retried quickly
    now = pl.next_deadline()
    assert pl.start_connect(now)
    pl.connected(now)
    pl.lost("reset", now + 2.5)
    assert pl.next_deadline() - (now + 2.5) <= 0.05
    assert pl.status()["reconnects"] == 1


def test_an_address_change_dials_at_once():
    pl = link()
    assert pl.start_connect(0.0)
    pl.connect_failed("refused", 0.0)
    pl.address_changed(0.01)
    assert pl.start_connect(0.01)  # idle: at once
    pl.address_changed(0.02)  # during the attempt: the next one at once
    pl.connect_failed("refused", 0.03)
    assert pl.start_connect(0.03)
    pl.connected(0.04)
    pl.address_changed(0.05)
    pl.lost("peer address changed", 0.05)
    assert pl.start_connect(0.05)


def test_status_counts_and_state_changes():
    pl = link()
    assert pl.status()["connected"] is False and pl.status()["since"] == 0.0
    pl.start_connect(1.0)
    assert pl.connected(1.0) == "unknown"
    assert pl.status()["connected"] and pl.status()["since"] == 1.0
    pl.lost("reset", 2.0)
    pl.start_connect(5.0)
    assert pl.connected(5.0) == "down"
    s = pl.status()
    assert s["reconnects"] == 1 and s["last_error"] == "reset" and s["since"] == 5.0
    assert pl.next_deadline() is None  # open and idle: nothing to check


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["enq"] * 4 + ["direct"] * 2 + ["batch", "write"] * 3 + ["reply"] * 3 + ["early"] + [
                              "up", "up", "dial", "ok", "fail", "lose", "tick"]),
                          st.integers(0, 300)), min_size=40, max_size=150),
       st.sampled_from([(3, 10_000, 1), (10_000, 700, 2), (5, 400, 8)]))
def test_frames_handed_out_are_a_subsequence_of_those_enqueued(ops, limits):
    """Whatever the events, what the link hands out keeps the enqueue order with nothing
    invented or repeated, its byte count matches its queue, and every frame handed out
    is delivered, failed or still in flight."""
    queue_limit, queue_bytes, window = limits
    pl = PeerLink(LinkSettings(queue_limit=queue_limit, queue_bytes_limit=queue_bytes, max_in_flight=window,
                               max_batch_frames=3, max_batch_bytes=500, request_timeout=1.0),
                  random.Random(0), now=0.0)
    now, serial = 0.0, 0
    enqueued, handed = [], []
    pending = None  # a batch handed out, not yet written
    for op, x in ops:
        now += x / 1000
        if op == "enq" or (op == "direct" and pl.can_send_direct(x)):
            serial += 1
            payload = serial.to_bytes(4, "big") + b"." * x
            enqueued.append(payload)
            pl.enqueue(payload)
            if op == "direct":
                pending = pl.next_batch()
                assert pending is not None and pending.frames == [payload]
                handed += pending.frames
        elif op == "dial":
            pl.start_connect(now)
        elif op == "up" and pl.start_connect(now):
            pl.connected(now)
        elif op == "fail":
            pl.connect_failed("refused", now)
        elif op == "ok" and pl.phase == "connecting":
            pl.connected(now)
        elif op == "lose":
            pl.lost("reset", now)
            pending = None
        elif op == "batch" and pending is None:
            pending = pl.next_batch()
            if pending is not None:
                assert 1 <= len(pending.frames) <= 3
                handed += pending.frames
        elif op == "write" and pending is not None:
            pl.sent(pending.id, now)
            pending = None
        elif op == "reply" and pl.inflight:
            ids = list(pl.inflight)
            pl.replied(ids[x % len(ids)], now)
        elif op == "early" and pending is not None:
            pl.replied(pending.id, now)
        elif op == "tick":
            reason = pl.check(now)
            if reason is not None:
                pl.lost(reason, now)
                pending = None
        assert pl.queued_bytes == sum(len(f) for f in pl.queue)
        assert pl.in_flight <= window
        it = iter(enqueued)  # what left, then what waits: in enqueue order, nothing twice
        assert all(f in it for f in handed + list(pl.queue)), "out of order, repeated or invented"
        in_flight = sum(n for _, n in pl.inflight.values()) + (pl.writing[1] if pl.writing else 0)
        s = pl.status()
        assert s["sent"] == len(handed) == s["delivered"] + s["failed"] + in_flight
        assert len(enqueued) == len(handed) + s["queued"] + s["dropped"]


def _answer(pl: PeerLink, sent: float, took: float) -> None:
    pl.enqueue(b"m")
    b = write(pl, sent)
    pl.replied(b.id, sent + took)


def test_a_link_whose_every_answer_outlasts_the_election_timeout_is_said_once_a_minute():
    pl = opened(slow_round_trip=0.25)
    for k in range(15):
        _answer(pl, k, 0.6)
        assert pl.too_slow(k + 0.6) is None  # not before 16 answers
    _answer(pl, 15, 0.6)
    assert pl.too_slow(15.6) == pytest.approx(0.6)
    _answer(pl, 16, 0.6)
    assert pl.too_slow(16.6) is None  # said: not again within a minute
    assert pl.status()["round_trip"] == pytest.approx(0.6)
    _answer(pl, 80, 0.6)
    assert pl.too_slow(80.6) == pytest.approx(0.6)


def test_a_few_slow_answers_are_a_pause_not_a_slow_link():
    pl = opened(slow_round_trip=0.25)
    for k in range(40):
        _answer(pl, k, 0.002 if k % 8 == 0 else 0.9)  # a GC pause, a slow fsync now and then
        assert pl.too_slow(k + 1) is None
    assert pl.status()["round_trip"] == pytest.approx(0.002)
    assert link().status()["round_trip"] is None and opened().too_slow(100.0) is None  # 0: never said

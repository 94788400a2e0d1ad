"""A subscription delivers each applied transaction once, in order, whatever the
replies it polls look like: a malformed event in a batch is not a reason to deliver
the events before it again, nor to skip it."""
from __future__ import annotations

import threading
import time

from rpc.subscription import Event, Subscription


class _Client:
    """What a Subscription uses of its ClusterClient; ``read_log`` answers from a log."""

    timeout = 5.0
    attempt_timeout = 1.5
    _closed = False

    def __init__(self, replies):
        self.replies = replies  # start index -> the reply, or a function of the call count
        self.calls: list[int] = []
        self.waits: list[float] = []
        self.lock = threading.Lock()

    def _open_line(self):
        return object()

    def _close_line(self, line):
        pass

    def _call(self, deadline, method, start, limit, wait, any_node=False, line=None):
        assert method == "read_log"
        with self.lock:
            self.calls.append(start)
            self.waits.append(wait)
            reply = self.replies(start, len(self.calls))
        if reply is None:
            time.sleep(0.02)  # a long poll that found nothing
            return ["ok", start, []]
        return reply


def _wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    return cond()


def _subscribe(client: _Client, until, start: int = 1, *, timeout: float = 5.0, then: float = 0.0) -> list:
    """A Subscription of ``client`` from ``start``, run until ``until(client, seen)``
    (and ``then`` seconds more), then closed; what it delivered."""
    seen: list = []
    sub = Subscription(client, seen.append, start)
    try:
        assert _wait_for(lambda: until(client, seen), timeout), "the subscription never got that far"
        time.sleep(then)
    finally:
        sub.close()
    return seen


def test_a_malformed_event_is_retried_without_delivering_the_ones_before_it_again():
    good = lambda i: [i, 1_000_000 * i, "test.Add", {"key": "x", "amount": i}]  # noqa: E731

    def replies(start, n):
        if start > 4:
            return None
        events = [good(i) for i in range(start, 5)]
        if n == 1:
            events[2] = [3, "not a time", "test.Add", {}]  # the third one, the first time only
        return ["ok", 5, events]

    client = _Client(replies)
    seen = _subscribe(client, lambda c, seen: len(seen) >= 4 and len(c.calls) >= 3, then=0.1)
    assert all(type(e) is Event for e in seen)
    assert [e.index for e in seen] == [1, 2, 3, 4], "each applied transaction once, in order"
    assert client.calls[1] == 3, "the poll after the malformed event resumes at it"


def test_events_a_node_sends_again_or_out_of_order_are_not_delivered_twice():
    def replies(start, n):
        if n == 1:
            return ["ok", 3, [[1, 0, "test.Add", {}], [2, 0, "test.Add", {}]]]
        if n == 2:  # a node behind the last one, or a bug: events already delivered
            return ["ok", 4, [[1, 0, "test.Add", {}], [2, 0, "test.Add", {}], [3, 0, "test.Add", {}]]]
        return None

    seen = _subscribe(_Client(replies), lambda c, _seen: len(c.calls) >= 3)
    assert [e.index for e in seen] == [1, 2, 3]


def test_a_subscription_outlives_a_refused_key_and_a_bug_in_a_call(monkeypatch):
    """The subscription's thread ended on AuthenticationFailed (every node refused the
    key: a rotation not yet finished) or on any error but ClusterUnavailable, and the
    subscriber heard nothing more, ever, with nothing to tell it so."""
    from rpc.auth import AuthenticationFailed

    def replies(start, n):
        if n == 1:
            raise AuthenticationFailed("every node refused this key", key_refused=True)
        if n == 2:
            raise RuntimeError("a bug in the client")
        if start == 1:
            return ["ok", 2, [[1, 0, "test.Add", {}]]]
        return None

    import rpc.subscription

    monkeypatch.setattr(rpc.subscription, "RETRY_AFTER_ERROR", 0.01)
    seen = _subscribe(_Client(replies), lambda _c, seen: len(seen) >= 1, timeout=10.0)  # an event after the errors
    assert [e.index for e in seen] == [1]


def test_a_compacted_reply_that_does_not_move_forward_is_not_believed():
    """A node answers "compacted" only when the index asked for is before its log's first
    (so ``first_index`` is past it). Red before: a reply naming an index at or before the
    one asked for was followed as is: one behind made the subscription deliver again
    the events it had delivered, one equal to it delivered Compacted over and over
    without a pause."""
    def replies(start, n):
        if n == 1:
            return ["ok", 3, [[1, 0, "test.Add", {}], [2, 0, "test.Add", {}]]]
        if n == 2:
            return ["compacted", 1]  # behind: a broken node
        if n == 3:
            return ["compacted", 3]  # where it is: neither
        if start <= 3:
            return ["ok", 4, [[i, 0, "test.Add", {}] for i in range(start, 4)]]
        return None

    seen = _subscribe(_Client(replies), lambda c, _seen: len(c.calls) >= 5)
    assert [type(e).__name__ for e in seen] == ["Event"] * 3, seen[:6]
    assert [e.index for e in seen] == [1, 2, 3]


def test_a_long_poll_waits_less_than_the_client_waits_for_its_answer():
    """A node holds a poll with nothing new for the ``wait`` it is given (1 s), and the
    client waits for a reply at most its timeout (and its attempt timeout). Red before:
    with a client timeout of 0.5 s, every idle poll ran out of time on a healthy node,
    which the client counted against it: its connection closed and the node (the
    leader, as a subscription polls it first) a suspect, every call of the client
    sent to followers first for a second."""
    client = _Client(lambda start, n: None)
    client.timeout = 0.5
    _subscribe(client, lambda c, _seen: len(c.waits) >= 2)
    assert all(0 < w < 0.5 for w in client.waits), client.waits
    client = _Client(lambda start, n: None)
    client.attempt_timeout = 0.4
    _subscribe(client, lambda c, _seen: len(c.waits) >= 2)
    assert all(0 < w < 0.4 for w in client.waits), client.waits


def test_events_out_of_order_in_one_batch_are_not_a_gap():
    """A node sends a batch's events in index order and its next index past them. Red
    before: a batch [5, 3] (asked for from 3) delivered 5 and skipped 3 as "delivered
    already": 3 was never delivered, and 4 neither. Such a batch is malformed: nothing
    of it is delivered, and it is asked for again."""
    def replies(start, n):
        if n == 1:
            return ["ok", 6, [[5, 0, "test.Add", {}], [3, 0, "test.Add", {}]]]
        if start <= 5:
            return ["ok", 6, [[i, 0, "test.Add", {}] for i in range(start, 6)]]
        return None

    seen = _subscribe(_Client(replies), lambda c, _seen: len(c.calls) >= 3, start=3)
    assert [e.index for e in seen] == [3, 4, 5]


def test_a_callback_raising_system_exit_does_not_end_the_stream_unheard(caplog):
    """SystemExit in a thread ends it without a word: the events after it never came."""
    log = [["ok", 2, [(1, 0, "t.A", {})]], ["ok", 3, [(2, 0, "t.A", {})]]]
    client = _Client(lambda start, n: log[start - 1] if start <= len(log) else None)
    seen: list = []

    def callback(event):
        seen.append(event.index)
        if event.index == 1:
            raise SystemExit("the subscriber's bug")

    sub = Subscription(client, callback, 1)
    try:
        assert _wait_for(lambda: seen == [1, 2]), seen
    finally:
        sub.close()
    assert "SystemExit" in caplog.text

"""What the client does with what a node answers, whatever it answers: the transport
under ClusterClient is replaced by canned replies (the node could be broken, or a
stranger with the key). Every call ends within its deadline with a PrevalenceError
(ClusterUnavailable is one), every future completes, and no thread of the client dies."""
from __future__ import annotations

import gc
import socket
import threading
import time

import msgpack
import pytest

import rpc.client as rc
import rpc.leader_watch
from prevalence.errors import PrevalenceError
from tests.prevalence.domain import Add, Get

ADDR = "127.0.0.1:1"


@pytest.fixture(autouse=True)
def _earlier_clients_collected():
    """A client left unclosed closes its connections when it is collected (rpc.client):
    clients earlier tests left are collected here, before this test's fake hard_close is
    in place, so that none of them is counted as a connection this test's client closed."""
    gc.collect()


class _Conn:
    pass


def client_with(monkeypatch, replies: dict, **options) -> rc.ClusterClient:
    """A client whose connection is a fake node answering ``replies[method]`` (a reply
    or a function of the call's arguments)."""
    conn = _Conn()
    c = rc.ClusterClient([ADDR], b"k" * 32, **options)

    def connection(budget, line=None):
        line = line or c._main
        with c._lock:
            line.conn, line.addr = conn, ADDR
        return conn, ADDR

    def call_within(_conn, method, args, _timeout):
        r = replies[method]
        return msgpack.packb(r(args) if callable(r) else r, use_bin_type=True)

    monkeypatch.setattr(c, "_connection", connection)
    monkeypatch.setattr(rc, "call_within", call_within)
    return c


def _conn_to(addr: str) -> _Conn:
    conn = _Conn()
    conn.addr = addr  # "host:port"
    return conn


def _fake_nodes(monkeypatch, call_within, *, open_connection=None, hard_close=None) -> None:
    """Connections to fake nodes: ``call_within(conn, method, args, timeout)`` answers as
    the node at ``conn.addr``; opening one succeeds at once unless ``open_connection``
    does otherwise."""
    monkeypatch.setattr(rc, "open_connection", open_connection or (lambda addr, _secret, **kw: _conn_to(rc.format_address(addr))))
    monkeypatch.setattr(rc, "hard_close", hard_close or (lambda conn: None))
    monkeypatch.setattr(rc, "call_within", call_within)


def _deep(n: int = 3000) -> list:
    d: list = []
    for _ in range(n):
        d = [d]
    return d


MALFORMED_BATCH = [["ok", [5]], ["ok", [[]]], ["ok"], ["ok", 5], ["ok", [["ok"]]], ["ok", [["failed", 1, 2]]],
                   ["ok", [_deep()]], _deep(), ["unavailable", _deep()], ["not_leader", _deep(), 7]]


@pytest.mark.parametrize("reply", MALFORMED_BATCH, ids=range(len(MALFORMED_BATCH)))
def test_a_malformed_reply_to_a_command_fails_that_command_and_never_hangs_a_future(monkeypatch, reply):
    """Red before: IndexError/TypeError/RecursionError out of execute, and futures
    that never completed (the session's release raised inside the completion)."""
    c = client_with(monkeypatch, {"register_session": ["ok", 1], "execute_batch": reply}, timeout=0.5)
    with pytest.raises(PrevalenceError):
        c.execute(Add("k", 1))
    f = c.execute_async(Add("k", 1))
    assert isinstance(f.exception(timeout=3), PrevalenceError)
    c.close()


@pytest.mark.parametrize("method,reply", [("register_session", ["ok"]), ("register_session", ["rejected"]),
                                          ("query", ["rejected"]), ("query", ["failed", "T"]),
                                          ("status", ["ok"]), ("status", _deep())])
def test_a_malformed_reply_to_a_query_or_registration_is_a_clear_error(monkeypatch, method, reply):
    c = client_with(monkeypatch, {method: reply}, timeout=0.5)
    call = {"register_session": lambda: c.execute(Add("k", 1)), "query": lambda: c.query(Get("k")),
            "status": c.status}[method]
    with pytest.raises(PrevalenceError):
        call()


def test_a_node_refusing_at_once_with_unavailable_does_not_make_the_client_spin(monkeypatch):
    """Red before: thousands of attempts a second, each message kept (hundreds of MB)."""
    n = [0]

    def unavailable(_args):
        n[0] += 1
        return ["unavailable", "x" * 100_000]

    c = client_with(monkeypatch, {"status": unavailable}, timeout=1.0)
    began = time.monotonic()
    with pytest.raises(rc.ClusterUnavailable) as err:
        c.status()
    assert time.monotonic() - began < 1.5
    assert n[0] < 40 and len(str(err.value)) < 3000


def test_a_deadline_passing_between_the_check_and_the_connect_is_still_cluster_unavailable(monkeypatch):
    """Red before: the clock read twice gave open_connection a negative timeout, and
    ValueError escaped instead of ClusterUnavailable."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    try:
        addr = f"127.0.0.1:{srv.getsockname()[1]}"
        deadline = 1000.0
        ticks = iter([deadline - 0.001] + [deadline + 0.001] * 1000)

        class Clock:
            @staticmethod
            def monotonic():
                return next(ticks)

            @staticmethod
            def sleep(_s):
                pass

        c = rc.ClusterClient([addr], b"k" * 32)
        monkeypatch.setattr(rc, "time", Clock)
        with pytest.raises(rc.ClusterUnavailable):
            c._call(deadline, "status", any_node=True)
    finally:
        srv.close()


def test_a_connection_keeps_the_whole_attempt_timeout_whatever_call_opened_it(monkeypatch):
    """Red before: a connection opened by a call with 50 ms left timed out every later
    call on it after 50 ms."""
    made = []

    def fake_open(_addr, _secret, **kw):
        conn = _Conn()
        conn.request_timeout = kw["request_timeout"]
        made.append(conn)
        return conn

    monkeypatch.setattr(rc, "open_connection", fake_open)
    monkeypatch.setattr(rc, "call_within", lambda conn, m, a, t: msgpack.packb(["ok", {"role": "leader"}]))
    c = rc.ClusterClient([ADDR], b"k" * 32, attempt_timeout=1.5)
    c._call(time.monotonic() + 0.05, "status", any_node=True)
    assert len(made) == 1 and made[0].request_timeout == 1.5


def test_a_bad_status_answer_does_not_end_the_leader_watch(monkeypatch):
    """Red before: the watch thread died on the first status reply that was not a dict,
    and no later stuck call was ever watched."""
    answers = iter([["ok", ["not", "a", "dict"]]] * 5 + [["ok", {"role": "leader", "term": 3}]] * 1000)

    class FakeLink:
        def __init__(self, *a, **k):
            pass

        def call(self, _method):
            return next(answers)

        def close(self):
            pass

    monkeypatch.setattr(rpc.leader_watch, "NodeLink", FakeLink)
    died = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    c = rc.ClusterClient([ADDR, "127.0.0.1:2"], b"k" * 32)
    c._watch.start(c._main, object(), ADDR)  # a call to the leader, unanswered
    end = time.monotonic() + 5
    while c._route.hint != "127.0.0.1:2" and time.monotonic() < end:
        time.sleep(0.02)
    assert not died and c._watch._thread.is_alive()
    assert c._route.hint == "127.0.0.1:2"  # the next good answer moved the client
    c.close()


def test_calls_in_flight_is_checked():
    for bad in (0, 17, 2.5, "2", True):
        with pytest.raises(PrevalenceError, match="calls_in_flight"):
            rc.ClusterClient([ADDR], b"k" * 32, calls_in_flight=bad)


def test_a_call_out_of_its_own_time_neither_blames_the_leader_nor_drops_the_shared_connection(monkeypatch):
    """A call whose deadline ends before a healthy leader's answer waits only what is left
    of it (call_within's timeout). Red before: that short wait counted as the leader's
    failure: the connection every thread shares was closed under the calls in flight on
    it, and the leader was made a suspect, tried after the followers, whose redirects to
    it were ignored as unusable for SUSPECT_FOR (1 s): every other call of the client
    bounced between followers meanwhile, and one with less than that to live failed
    with ClusterUnavailable on a healthy cluster."""
    leader, f1, f2 = "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"
    made, closed = [], []

    def fake_open(addr, _secret, **kw):
        made.append(_conn_to(rc.format_address(addr)))
        return made[-1]

    def call_within(conn, method, args, timeout):
        if conn.addr != leader:
            return msgpack.packb(["not_leader", "n1", leader])
        if timeout < 0.05:  # the leader answers in 50 ms
            time.sleep(timeout)
            raise TimeoutError("result expired")
        time.sleep(0.05)
        return msgpack.packb(["ok", {"role": "leader"}])

    _fake_nodes(monkeypatch, call_within, open_connection=fake_open, hard_close=closed.append)
    c = rc.ClusterClient([leader, f1, f2], b"k" * 32, attempt_timeout=1.5)
    try:
        assert c._call(time.monotonic() + 1.0, "query")[0] == "ok"  # connected to the leader
        assert c._main.addr == leader
        with pytest.raises(rc.ClusterUnavailable):
            c._call(time.monotonic() + 0.02, "query")  # its own deadline is too short: its failure only
        dropped, suspect = list(closed), c._route.is_suspect(leader, time.monotonic())
        started = time.monotonic()
        try:
            reply = c._call(started + 0.5, "query")  # the next call: the leader at once
        except rc.ClusterUnavailable as exc:
            reply = exc
        took = time.monotonic() - started
        assert reply == ["ok", {"role": "leader"}] and took < 0.3, f"{reply!r} after {took:.2f} s"
        assert not dropped, "the shared connection was dropped for a call that ran out of its own time"
        assert not suspect
        assert len(made) == 1
    finally:
        c.close()


def test_calls_that_each_give_up_early_still_leave_a_leader_that_never_answers(monkeypatch):
    """The other side of the test above: a leader that stopped answering is left once the
    calls on its connection have waited the attempt timeout in all, even when every call
    gives up before that on its own (and before the leader watch would probe)."""
    hung, other = "127.0.0.1:1", "127.0.0.1:2"

    def call_within(conn, method, args, timeout):
        if conn.addr == hung:
            time.sleep(timeout)
            raise TimeoutError("result expired")
        return msgpack.packb(["ok", {"role": "leader"}])

    _fake_nodes(monkeypatch, call_within)
    c = rc.ClusterClient([hung, other], b"k" * 32, attempt_timeout=0.3)
    try:
        answered = 0
        for _ in range(10):
            try:
                c._call(time.monotonic() + 0.1, "query")
                answered += 1
            except rc.ClusterUnavailable:
                pass
        assert answered >= 5 and c._main.addr == other
    finally:
        c.close()


def test_many_calls_giving_up_together_on_a_short_pause_do_not_blame_the_leader(monkeypatch):
    """What counts against a node is how long its connection went unanswered, not the sum
    of the waits of the calls that overlapped on it: sixteen threads each giving up after
    0.1 s during one 0.2 s pause of the leader are 0.2 s of silence, not 1.6 s."""
    leader, other = "127.0.0.1:1", "127.0.0.1:2"
    resume = [0.0]
    closed = []

    def call_within(conn, method, args, timeout):
        if conn.addr != leader:
            return msgpack.packb(["not_leader", "n1", leader])
        left = resume[0] - time.monotonic()
        if left > timeout:
            time.sleep(timeout)
            raise TimeoutError("result expired")
        time.sleep(max(0.0, left))
        return msgpack.packb(["ok", {"role": "leader"}])

    _fake_nodes(monkeypatch, call_within, hard_close=closed.append)
    c = rc.ClusterClient([leader, other], b"k" * 32, attempt_timeout=1.5)
    try:
        c._call(time.monotonic() + 1.0, "query")
        resume[0] = time.monotonic() + 0.25
        threads = [threading.Thread(target=lambda: pytest.raises(rc.ClusterUnavailable, c._call,
                                                                 time.monotonic() + 0.1, "query"))
                   for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        assert not closed and not c._route.is_suspect(leader, time.monotonic())
    finally:
        c.close()


def test_a_connection_attempt_cut_short_by_the_calls_own_deadline_does_not_blame_the_node(monkeypatch):
    """Connecting gets what is left of the call: with 3 ms left, a healthy leader that
    takes 10 ms to connect and authenticate failed the attempt, which made it a suspect
    (Route.failed): for SUSPECT_FOR the client's calls went to followers first and
    ignored their redirects to it, and the next call, with 0.5 s, raised
    ClusterUnavailable on a healthy cluster (red before)."""
    leader, follower = "127.0.0.1:1", "127.0.0.1:2"

    def fake_open(addr, _secret, **kw):
        addr = rc.format_address(addr)
        took = 0.01
        if min(kw["connect_timeout"], kw["handshake_timeout"]) < took:
            time.sleep(min(kw["connect_timeout"], kw["handshake_timeout"]))
            raise rc.PrevalenceError(f"{addr}: handshake timed out")
        time.sleep(took)
        return _conn_to(addr)

    def call_within(conn, method, args, timeout):
        if conn.addr != leader:
            return msgpack.packb(["not_leader", "n1", leader])
        return msgpack.packb(["ok", {"role": "leader"}])

    _fake_nodes(monkeypatch, call_within, open_connection=fake_open)
    c = rc.ClusterClient([leader, follower], b"k" * 32, attempt_timeout=1.5)
    try:
        with pytest.raises(rc.ClusterUnavailable):
            c._call(time.monotonic() + 0.003, "query")
        suspect = c._route.is_suspect(leader, time.monotonic())
        started = time.monotonic()
        try:
            reply = c._call(started + 0.5, "query")
        except rc.ClusterUnavailable as exc:
            reply = exc
        took = time.monotonic() - started
        assert reply == ["ok", {"role": "leader"}] and took < 0.3, f"{reply!r} after {took:.2f} s"
        assert not suspect
    finally:
        c.close()


def test_connection_attempts_that_each_end_early_still_leave_a_node_that_never_handshakes(monkeypatch):
    """The other side of the test above: a node whose handshake never completes (paused)
    is tried last once the attempts cut short on it add up to a full handshake timeout,
    even when every call has less than that to live."""
    hung, other = "127.0.0.1:1", "127.0.0.1:2"

    def fake_open(addr, _secret, **kw):
        addr = rc.format_address(addr)
        if addr == hung:
            time.sleep(min(kw["connect_timeout"], kw["handshake_timeout"]))
            raise rc.PrevalenceError(f"{addr}: handshake timed out")
        return _conn_to(addr)

    _fake_nodes(monkeypatch, lambda conn, m, a, t: msgpack.packb(["ok", {"role": "leader"}]), open_connection=fake_open)
    c = rc.ClusterClient([hung, other], b"k" * 32, attempt_timeout=1.5)
    try:
        answered = 0
        for _ in range(30):
            c._drop()  # each call connects afresh (as after a redirect)
            try:
                c._call(time.monotonic() + 0.1, "query")
                answered += 1
            except rc.ClusterUnavailable:
                pass
        assert answered >= 20  # once blamed, blamed again at once after SUSPECT_FOR
    finally:
        c.close()


def test_a_done_callback_raising_system_exit_neither_strands_the_pipeline_nor_later_calls(monkeypatch):
    """Red before: SystemExit out of a future's done-callback (concurrent.futures only
    catches Exception) ended the sending thread mid-batch: its lane was never freed, the
    later futures never completed and execute hung past its timeout."""
    gate = threading.Event()  # the first reply waits until its callback is in place

    def batch(args):
        gate.wait(2)
        return ["ok", [["ok", 1]] * len(msgpack.unpackb(args[0]))]

    c = client_with(monkeypatch, {"register_session": ["ok", 1], "execute_batch": batch},
                    timeout=2.0, calls_in_flight=1)
    try:
        first = c.execute_async(Add("k", 1))

        def leave(_f):
            raise SystemExit("the application's bug")

        first.add_done_callback(leave)
        gate.set()
        assert first.result(3) == 1
        later = [c.execute_async(Add("k", 1)) for _ in range(5)]
        assert [f.result(3) for f in later] == [1] * 5
        began = time.monotonic()
        assert c.execute(Add("k", 1)) == 1
        assert time.monotonic() - began < 2.5
    finally:
        c.close()


def test_query_async_done_callbacks_raising_system_exit_do_not_use_up_the_query_threads(monkeypatch):
    """Red before: each such callback ended one of the pool's 4 threads (the pool does
    not replace them), and from the fifth on no query_async future ever completed."""
    gate = threading.Event()

    def query(_args):
        gate.wait(2)
        return ["ok", 5]

    c = client_with(monkeypatch, {"query": query}, timeout=2.0)

    def leave(_f):
        raise SystemExit("the application's bug")

    try:
        for _ in range(6):
            gate.clear()
            f = c.query_async(Get("k"))
            f.add_done_callback(leave)
            gate.set()
            assert f.result(3) == 5
        gate.set()
        assert c.query_async(Get("k")).result(3) == 5
    finally:
        c.close()


def test_execute_waiting_for_a_call_that_its_own_done_callback_holds_keeps_its_timeout(monkeypatch):
    """Red before: with every call in flight held by a done-callback that calls execute,
    that execute waited for a free call without a deadline: it and every later call of
    the client hung for good."""
    gate = threading.Event()  # the first reply waits until its callback is in place

    def batch(args):
        gate.wait(2)
        return ["ok", [["ok", 1]] * len(msgpack.unpackb(args[0]))]

    c = client_with(monkeypatch, {"register_session": ["ok", 1], "execute_batch": batch},
                    timeout=0.5, calls_in_flight=1)
    got: list = []
    done = threading.Event()

    def nested(_f):
        began = time.monotonic()
        try:
            got.append(c.execute(Add("k", 1)))
        except PrevalenceError as exc:
            got.append(type(exc).__name__)
        got.append(time.monotonic() - began)
        done.set()

    try:
        c.execute_async(Add("k", 1)).add_done_callback(nested)
        gate.set()
        assert done.wait(5), "execute in a done-callback never returned"
        assert got[0] == "ClusterUnavailable" and got[1] < 1.5, got
        assert c.execute(Add("k", 1)) == 1  # the call was freed when the callback ended
    finally:
        c.close()

"""The reconnecting client against real node processes: failover, exactly once, errors."""
from __future__ import annotations

import sys
import threading
import time

import msgpack
import pytest

import rpc
from prevalence.codec import CODEC
from prevalence.errors import OutcomeUnknown, PrevalenceError
from replication.client_policy import Session
from tests.prevalence.domain import Add, Boom, Get, HalfThenFail, Rejected, Snapshot, Stamp, Tags

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")]


def test_execute_query_status_and_errors(cluster):
    with cluster.client() as client:
        assert client.execute(Add("x", 2)) == 2
        assert client.query(Get("x")) == 2
        assert client.query(Get("x"), consistency="leader") == 2
        assert client.query(Get("x"), consistency="local") in (None, 2)  # any node, maybe behind
        assert client.status()["role"] == "leader"
        assert client.leader is not None
        with pytest.raises(Rejected) as info:
            client.execute(Add("x", -100))
        assert info.value.rejected is True  # refused by check(): nothing applied
        with pytest.raises(Boom) as info:
            client.execute(HalfThenFail("y"))
        assert info.value.rejected is False  # execute raised after changing the state
        assert client.query(Get("y")) == 1
        with pytest.raises(rpc.RemoteTransactionError, match="no_such_module.Oops"):
            raise rpc.remote_errors.remote_exception("failed", "no_such_module.Oops", "gone")
        with pytest.raises(PrevalenceError, match="consistency must be one of"):
            client.query(Get("x"), consistency="eventual")


def test_a_command_costs_one_round_trip(cluster):
    """A call through ``conn.root.method`` is a remote getattr and then the call: two
    round trips. The client looks each method up once per connection."""
    with cluster.client() as client:
        client.execute(Add("x", 1))
        client.query(Get("x"))
        conn, _addr = client._connection(1.0)
        requests = []
        sync, asynchronous = conn.sync_request, conn.async_request

        def counting(handler, *args, **kw):
            requests.append(handler)
            return sync(handler, *args)

        def counting_async(handler, *args, **kw):
            requests.append(handler)
            return asynchronous(handler, *args, **kw)

        conn.sync_request, conn.async_request = counting, counting_async
        for _ in range(5):
            client.execute(Add("x", 1))
        assert client.query(Get("x")) == 6
        assert len(requests) == 6, requests


def test_retry_of_an_applied_command_returns_the_first_reply(cluster):
    leader = cluster.leader()
    conn = cluster.connect(leader)
    try:
        sid = msgpack.unpackb(conn.root.register_session(), raw=False)[1]
        data = CODEC.dumps(Add("n", 5))
        first = msgpack.unpackb(conn.root.execute(data, sid, 1), raw=False)
        again = msgpack.unpackb(conn.root.execute(data, sid, 1), raw=False)  # a retry after a lost reply
        assert first == again == ["ok", 5]
        assert msgpack.unpackb(conn.root.execute(data, sid, 2), raw=False) == ["ok", 10]
        stale = msgpack.unpackb(conn.root.execute(data, sid, 1), raw=False)
        assert stale[0] == "expired"  # older than the last one applied: refused, not applied
        unknown = msgpack.unpackb(conn.root.execute(data, 999_999, 1), raw=False)
        assert unknown[0] == "expired"
        assert msgpack.unpackb(conn.root.query(CODEC.dumps(Get("n"))), raw=False) == ["ok", 10]
        big = msgpack.unpackb(conn.root.execute(b"\x91" + b"x" * (2 << 20), sid, 3), raw=False)
        assert big[0] == "error" and "over the limit" in big[1]  # refused, the node keeps serving
        garbage = msgpack.unpackb(conn.root.execute(b"\xc1garbage", sid, 3), raw=False)
        assert garbage[0] == "error" and "malformed" in garbage[1]
        assert msgpack.unpackb(conn.root.query(CODEC.dumps(Get("n"))), raw=False) == ["ok", 10]
    finally:
        conn.close()


def test_a_command_on_an_expired_session_raises_outcome_unknown_and_the_client_carries_on(cluster):
    """The state cannot tell whether an earlier attempt applied before the session went,
    so the client says "unknown", not "not applied", and opens a new session next. A
    pipelined command is not sent again (it would apply after later ones); an execute()
    whose only request was refused so certainly did not apply, and is sent again on a
    new session (tests/rpc/test_client_sessions.py: not when an earlier request was)."""
    with cluster.client() as client:
        assert client.execute(Add("e", 1)) == 1
        client._sessions.free[:] = [Session(999_999)]  # as if it expired meanwhile
        with pytest.raises(OutcomeUnknown, match="whether command 1 was applied is unknown"):
            client.execute_async(Add("e", 1)).result(10)
        assert client.execute(Add("e", 1)) == 2  # a fresh session
        client._sessions.free[:] = [Session(999_998)]
        assert client.execute(Add("e", 1)) == 3  # refused on the stale session, applied once on a new one
        assert client.query(Get("e")) == 3


def test_commands_ride_through_leader_sigkills_and_apply_exactly_once(cluster):
    c = cluster
    done: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(k: int) -> None:
        with c.client() as client:
            n = 0
            while not stop.is_set():
                tag = f"w{k}-{n}"
                try:
                    client.execute(Stamp(tag), timeout=15)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)
                    return
                done.append(tag)
                n += 1

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    try:
        c.kill_leaders(3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]  # the callers never saw the failovers
    with c.client() as client:
        tags = [item[0] for item in client.query(Snapshot())[1]]
    assert len(tags) == len(set(tags)), "a command was applied twice"
    assert set(done) <= set(tags), "an acknowledged command is missing"
    assert len(set(tags) - set(done)) == 0  # nothing applied that no caller was told about
    assert len(done) > 30


def test_unreachable_cluster_is_a_clear_error(tmp_path):
    from tests.cluster.harness import free_port_block

    base = free_port_block(2)
    client = rpc.connect([f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"], secret=b"s" * 32, timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(rpc.ClusterUnavailable, match="tried .*127.0.0.1"):
        client.execute(Add("x", 1))
    assert time.monotonic() - t0 < 3


def test_status_gives_up_at_its_own_timeout_like_execute_and_query():
    """A window or a script asking a hung cluster how it is must not wait the client's
    whole timeout (30 s by default): status takes a timeout of its own."""
    import socket

    silent = socket.socket()  # accepts connections (the kernel's backlog), never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    client = rpc.connect([f"127.0.0.1:{silent.getsockname()[1]}"], secret=b"s" * 32, timeout=30.0)
    try:
        t0 = time.monotonic()
        with pytest.raises(rpc.ClusterUnavailable):
            client.status(timeout=0.5)
        assert time.monotonic() - t0 < 2.5
        with pytest.raises(PrevalenceError, match="timeout must be a positive finite number"):
            client.status(timeout=-1)
    finally:
        client.close()
        silent.close()


def test_app_call_reaches_the_named_node_and_reports_its_refusals(tmp_path):
    from tests.cluster.harness import LocalCluster, free_port_block

    c = LocalCluster(tmp_path, 3, app={"plugin": "tests.cluster.plugin:attach"})
    try:
        c.leader()
        with c.client() as client:
            for nid, address in c.addresses.items():  # each node's own handler, followers too
                assert client.app_call(address, "test.whoami", b"hi") == nid.encode() + b":hi"
            address = c.addresses["n1"]
            with pytest.raises(PrevalenceError, match=f"{address}: app_call 'nope': this node has no application call 'nope'"):
                client.app_call(address, "nope")
            with pytest.raises(PrevalenceError, match=r"test.fail: ValueError: refused b'x'"):
                client.app_call(address, "test.fail", b"x")
            with pytest.raises(PrevalenceError, match="over the limit"):
                client.app_call(address, "test.whoami", b"x" * (2 << 20))
            with pytest.raises(PrevalenceError, match="data must be bytes, not str"):
                client.app_call(address, "test.whoami", "text")
            dead = f"127.0.0.1:{free_port_block(1)}"
            t0 = time.monotonic()
            with pytest.raises(PrevalenceError, match=f"{dead}: app_call 'test.whoami'"):
                client.app_call(dead, "test.whoami")
            assert time.monotonic() - t0 < 3
            assert client.app_call(address, "test.whoami") == b"n1:"  # the node serves on
            assert client.execute(Add("x", 1)) == 1  # and the client's own connection too
    finally:
        c.stop()


def test_a_command_over_the_request_limit_is_refused_in_one_line_and_the_client_serves_on(cluster):
    """Past the node's frame limit (4 MiB) a node can only drop the connection: the
    client refuses such a command itself, at once, naming its size and the limit,
    instead of retrying a dropped connection until its deadline."""
    with cluster.client() as client:
        for size in (2 << 20, 5 << 20, 64 << 20):
            t0 = time.monotonic()
            with pytest.raises(PrevalenceError, match=r"of \d+ bytes is over the limit of 1048576 bytes"):
                client.execute(Tags("big", blob=b"x" * size), timeout=5)
            assert time.monotonic() - t0 < 1.0
            fut = client.execute_async(Tags("big", blob=b"x" * size), timeout=5)
            with pytest.raises(PrevalenceError, match="over the limit"):
                fut.result(1.0)
        assert client.execute(Add("x", 1)) == 1  # the same client, its connection intact
        assert client.query(Snapshot())[1] == []  # nothing of the refused commands was applied

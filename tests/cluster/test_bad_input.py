"""Malformed requests against a real node: each a clear error, the node keeps serving,
the state does not change."""
from __future__ import annotations

import signal
import sys
import time

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rpc

from prevalence.codec import CODEC
from tests.cluster.harness import LocalCluster
from tests.prevalence.domain import Add, Get, Stamp

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="uses SIGSTOP")]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    c = LocalCluster(tmp_path_factory.mktemp("bad"), 3)
    leader = c.leader()
    assert c.call(leader, "execute", Add("x", 7))[0] == "ok"
    conn = c.connect(leader)
    sid = msgpack.unpackb(conn.root.register_session(), raw=False)[1]
    yield c, conn, sid
    conn.close()
    c.stop()


plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=10) | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=10,
)


def reply(conn, method, *args):
    return msgpack.unpackb(getattr(conn.root, method)(*args), raw=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=200), plain.map(lambda v: msgpack.packb(v, use_bin_type=True))))
def test_garbage_frames_are_refused_clearly(node, data):
    c, conn, sid = node
    for r in (reply(conn, "execute", data), reply(conn, "execute", data, sid, 10_000), reply(conn, "query", data)):
        assert r[0] in ("error", "expired"), r
        assert isinstance(r[-1], str) and r[-1]


@pytest.mark.parametrize(
    "plain_obj, message",
    [
        (["shop.Missing", 1, {}], "unknown type 'shop.Missing'"),
        (["test.Add", 1, {"key": "x", "amount": "lots"}], "test.Add.amount"),
        (["test.Add", 1, {"key": "x"}], "required field missing at test.Add.amount"),
        (["test.Add", 1, {"key": "x", "amount": 1, "evil": 2}], "extra fields found (evil)"),
        (["test.Add", 99, {"key": "x", "amount": 1}], "written as version 99"),
    ],
)
def test_unknown_types_and_bad_fields_are_named(node, plain_obj, message):
    c, conn, sid = node
    r = reply(conn, "execute", msgpack.packb(plain_obj, use_bin_type=True), sid, 20_000)
    assert r[0] == "error" and message in r[1], r


@pytest.mark.parametrize("sid_seq", [(2**64, 1), (1, 2**64), (2**63, 1), (True, 1), (1, 0), (-5, 1)])
def test_session_numbers_out_of_range_are_refused_and_the_node_keeps_serving(node, sid_seq):
    """A session id past 64 bits once raised OverflowError inside the Raft loop."""
    c, conn, sid = node
    data = CODEC.dumps(Add("x", 1))
    r = reply(conn, "execute", data, *sid_seq)
    assert r[0] == "error" and "63-bit" in r[1], r
    r = reply(conn, "execute_batch", ((data, *sid_seq),))
    assert r[0] == "ok" and r[1][0][0] == "error", r
    assert reply(conn, "query", CODEC.dumps(Get("x")))[0] == "ok"
    assert reply(conn, "status")[0] == "ok"


def test_a_batch_of_nested_arrays_is_refused_and_the_node_keeps_serving(node):
    """A megabyte of nested one-item arrays decoded to about 49 MB before it was refused."""
    c, conn, sid = node
    row = b"\xdc" + (1024).to_bytes(2, "big") + b"\x91\x00" * 1024
    r = reply(conn, "execute_batch", b"\xdc" + (480).to_bytes(2, "big") + row * 480)
    assert r[0] == "error" and "malformed batch" in r[1] and "(data, session, seq)" in r[1], r
    assert reply(conn, "status")[0] == "ok"


def test_state_unchanged_and_node_still_serving_after_bad_input(node):
    c, conn, sid = node
    assert reply(conn, "query", CODEC.dumps(Get("x"))) == ["ok", 7]
    assert reply(conn, "execute", CODEC.dumps(Add("x", 1))) == ["ok", 8]


def test_a_call_to_a_cluster_that_stopped_answering_ends_at_its_timeout(tmp_path):
    """The reply to a call was waited for the connection's request timeout (the client's
    attempt_timeout, 1.5 s) whatever the call's own timeout: with every node hung, a
    command given 0.3 s raised after 1.5 s, and one given 2 s after 2.96 s."""
    c = LocalCluster(tmp_path, 3)
    try:
        c.leader()
        with c.client() as client:
            client.execute(Stamp("before"))
            for nid in list(c.procs):
                c.kill(nid, signal.SIGSTOP)
            took = {}
            try:
                for timeout in (0.3, 2.0):
                    t0 = time.monotonic()
                    with pytest.raises(rpc.ClusterUnavailable):
                        client.execute(Stamp("after"), timeout=timeout)
                    took[timeout] = time.monotonic() - t0
            finally:
                for nid in list(c.procs):
                    c.kill(nid, signal.SIGCONT)
        assert took[0.3] < 0.3 + 0.4 and took[2.0] < 2.0 + 0.4, took
    finally:
        c.stop()


def test_client_leaves_a_hung_leader_within_two_seconds(tmp_path):
    c = LocalCluster(tmp_path, 3)
    try:
        c.leader()
        with c.client() as client:
            client.execute(Stamp("before"))
            hung = c.leader()
            c.kill(hung, signal.SIGSTOP)  # no reset, no answers: the client's connection just goes quiet
            try:
                t0 = time.monotonic()
                client.execute(Stamp("after"))
                took = time.monotonic() - t0
            finally:
                c.kill(hung, signal.SIGCONT)
        assert took < 2.0, f"the client took {took:.2f} s to leave the hung leader"
    finally:
        c.stop()

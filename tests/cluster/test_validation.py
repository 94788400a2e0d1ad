"""Every value a client sends is checked by exact type and range (issue 15, item 4): a
netref posing as an int, a str or bytes is never touched, a wrong type or a hostile
nesting is a clear one-line error, and the node serves on with its state unchanged."""
from __future__ import annotations

import socket
import sys

import msgpack
import pytest
import rpyc
from rpyc.core import consts
from rpyc.utils.factory import connect_channel

from prevalence.codec import CODEC
from rpc.auth import client_handshake
from rpc.channel import REPLY_MAX_FRAME, BoundedChannel, _Stream
from rpc.transport import NodeLink
from tests.cluster.attack import key
from tests.cluster.harness import LocalCluster
from tests.prevalence.domain import Add, Get

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="multi-process, POSIX")]


class FakeInt(int):
    """Not a brine type: RPyC passes it by reference, as a netref whose class says int."""


class FakeStr(str):
    pass


class FakeBytes(bytes):
    pass


def client_key(c: LocalCluster) -> bytes:
    return key(c, "client")


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    c = LocalCluster(tmp_path_factory.mktemp("validation"), 3)
    leader = c.leader()
    with NodeLink(c.configs[leader].listen, client_key(c), timeout=5.0) as link:
        assert link.call("execute", CODEC.dumps(Add("x", 7))) == ["ok", 7]
    yield c, leader
    c.stop()


class Hostile:
    """A client connection that lets the node call back into it, and counts every request
    the node makes of it (each one a touch of a netref we handed over)."""

    def __init__(self, c: LocalCluster, nid: str):
        sock = socket.create_connection(c.configs[nid].listen, timeout=2.0)
        sock = client_handshake(sock, client_key(c), "client", "hostile", timeout=2.0)
        sock.settimeout(5.0)
        config = dict(allow_all_attrs=True, allow_public_attrs=True, allow_pickle=False, sync_request_timeout=5.0)
        self.conn = connect_channel(BoundedChannel(_Stream(sock), REPLY_MAX_FRAME), service=rpyc.VoidService,
                                    config=config)
        self.callbacks: list[int] = []
        for handler, fn in list(self.conn._HANDLERS.items()):
            self.conn._HANDLERS[handler] = self._counting(handler, fn)

    def _counting(self, handler, fn):
        def count(*args):
            self.callbacks.append(handler)
            return fn(*args)
        return count

    def call(self, method: str, *args) -> object:
        """The decoded reply, or the remote exception's one-line text."""
        try:
            raw = getattr(self.conn.root, method)(*args)
        except Exception as exc:  # noqa: BLE001 - a remote refusal is an answer too
            return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return msgpack.unpackb(raw, raw=False) if type(raw) is bytes else raw

    def close(self) -> None:
        self.conn.close()


def still_serving(c: LocalCluster, nid: str) -> None:
    c.check_alive()
    with NodeLink(c.configs[nid].listen, client_key(c), timeout=1.0) as link:
        assert link.call("status")[0] == "ok"
        assert link.call("query", CODEC.dumps(Get("x"))) == ["ok", 7]  # nothing changed


DATA = CODEC.dumps(Add("x", 1))

NETREF_CASES = [
    ("execute", (FakeBytes(DATA),)),
    ("execute", (DATA, FakeInt(1), 1)),
    ("execute", (DATA, 1, FakeInt(1))),
    ("execute_batch", ((FakeBytes(DATA), 1, 1),)),
    ("execute_batch", ((DATA, FakeInt(1), 1),)),
    ("query", (FakeBytes(CODEC.dumps(Get("x"))),)),
    ("query", (CODEC.dumps(Get("x")), FakeStr("local"))),
    ("read_log", (FakeInt(1),)),
    ("read_log", (1, FakeInt(5))),
    ("read_log", (1, 5, FakeInt(0))),
    ("change_membership", (FakeStr("add_learner"), "n9", "127.0.0.1:1")),
    ("change_membership", ("add_learner", FakeStr("n9"), "127.0.0.1:1")),
    ("change_membership", ("add_learner", "n9", FakeStr("127.0.0.1:1"))),
    ("transfer_leadership", (FakeStr("n2"),)),
    ("app_call", (FakeStr("x"),)),
    ("app_call", ("x", FakeBytes(b"y"))),
]


@pytest.mark.parametrize("method, args", NETREF_CASES, ids=[f"{m}-{k}" for k, (m, _a) in enumerate(NETREF_CASES)])
def test_a_netref_posing_as_a_plain_value_is_refused_untouched(node, method, args):
    """isinstance() on a netref asks the other side what its class is: a client could
    pass an int or str subclass and have the node call back into it (its __str__ named
    the leadership transfer's target) or stall it."""
    c, nid = node
    hostile = Hostile(c, nid)
    try:
        reply = hostile.call(method, *args)
        touched = [h for h in hostile.callbacks]
    finally:
        hostile.close()
    assert touched == [], f"the node called back into the client: handlers {touched}; reply {reply!r}"
    assert reply != ["ok", None] and not (isinstance(reply, list) and reply[0] == "ok"), reply
    still_serving(c, nid)


def deep(depth: int) -> bytes:
    return b"\x91" * depth + b"\x01"  # [[[...1...]]] in msgpack


WRONG_CASES = [
    ("execute", (123,)),
    ("execute", ("text",)),
    ("execute", (None,)),
    ("execute", ((DATA,),)),
    ("execute", (DATA, 1.5, 1)),
    ("execute", (DATA, "1", 1)),
    ("execute", (deep(1000),)),
    ("execute", (deep(100_000),)),
    ("execute", (msgpack.packb([deep(10)], use_bin_type=True),)),
    ("execute_batch", (123,)),
    ("execute_batch", ((),)),
    ("execute_batch", (((DATA, 1),),)),
    ("execute_batch", ((DATA, 1, 1),)),
    ("execute_batch", (((deep(1000), 1, 1),),)),
    # the batch as one msgpack value (what rpc.client sends)
    ("execute_batch", (b"\xc1",)),
    ("execute_batch", (b"",)),
    ("execute_batch", (deep(1000),)),
    ("execute_batch", (deep(100_000),)),
    ("execute_batch", (msgpack.packb([]),)),
    ("execute_batch", (msgpack.packb({"a": 1}),)),
    ("execute_batch", (msgpack.packb([[DATA, 1]]),)),
    ("execute_batch", (msgpack.packb([[DATA.decode("latin-1"), 1, 1]]),)),
    ("execute_batch", (msgpack.packb([[DATA, 1.0, 1]]),)),
    ("execute_batch", (msgpack.packb([[DATA, 0, 1]]),)),
    ("execute_batch", (msgpack.packb([[DATA, 1, 2**64 - 1]]),)),
    ("execute_batch", (msgpack.packb([[DATA, 1, 1]] * 1025),)),
    ("execute_batch", (msgpack.packb([[b"\0" * (1 << 20), 1, 1], [b"\0" * (1 << 20), 1, 2]]),)),
    ("execute_batch", (msgpack.packb([[msgpack.ExtType(1, b"x"), 1, 1]]),)),
    ("execute_batch", (msgpack.packb([[DATA, 1, 1]]) + b"trailing",)),
    ("query", (123,)),
    ("query", (deep(1000),)),
    ("query", (CODEC.dumps(Get("x")), 5)),
    ("query", (CODEC.dumps(Get("x")), "x" * 100_000)),
    ("read_log", ("1",)),
    ("read_log", (1.0,)),
    ("read_log", (2**70,)),
    ("read_log", (0,)),
    ("read_log", (1, "5")),
    ("read_log", (1, 5, "1")),
    ("read_log", (1, 5, float("nan"))),
    ("change_membership", (1, "n9", None)),
    ("change_membership", ("add_learner", 9, None)),
    ("change_membership", ("add_learner", "n9", 9)),
    ("change_membership", ("add_learner", "", None)),
    ("change_membership", ("add_learner", "n" * 100_000, None)),
    ("transfer_leadership", (2,)),
    ("transfer_leadership", (None,)),
    ("transfer_leadership", ("n" * 100_000,)),
    ("app_call", (1,)),
    ("app_call", ("x" * 100_000,)),
    ("app_call", ("test.whoami", 5)),
]


@pytest.mark.parametrize("method, args", WRONG_CASES, ids=[f"{m}-{k}" for k, (m, _a) in enumerate(WRONG_CASES)])
def test_a_wrong_type_or_range_is_a_clear_error(node, method, args):
    c, nid = node
    with NodeLink(c.configs[nid].listen, client_key(c), timeout=2.0) as link:
        reply = link.call(method, *args)
    if method == "execute_batch" and reply[0] == "ok":  # each command answered on its own
        (reply,) = reply[1]
    assert isinstance(reply, list) and reply[0] not in ("ok",), reply
    message = reply[-1]
    assert isinstance(message, str) and message and "\n" not in message and len(message) <= 500, reply
    still_serving(c, nid)


def test_the_server_never_unboxes_a_reference_from_its_client(node):
    """Plain values only, by construction: a reference the client hands over is refused
    by the connection before any method sees it."""
    c, nid = node
    hostile = Hostile(c, nid)
    try:
        root = hostile.conn.root
        with pytest.raises(Exception, match="plain values"):
            hostile.conn.sync_request(consts.HANDLE_CALLATTR, root, "status", (FakeInt(1),), ())
        assert hostile.callbacks == []
    finally:
        hostile.close()
    still_serving(c, nid)

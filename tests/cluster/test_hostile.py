"""Hostile input against a real node (issue 15): hypothesis-generated malformed,
oversize, deeply nested, compressed and wrong-type inputs for the handshake, for raw
RPyC frames in both roles, for every method a client may call and for every Raft
message type a peer may deliver. After each case the node answers status and a real
execute within 1 s each, its state is unchanged, and its RSS stays under idle RSS +
64 MB (tests.cluster.attack.Target). Over 2,000 cases in all.

Cases share connections where that keeps the property (a case that makes the node drop
its connection is followed by a new one)."""
from __future__ import annotations

import os
import socket
import struct
import sys
import zlib

import msgpack
import pytest
import rpyc
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from rpyc.core import brine, consts
from rpyc.core.channel import Channel
from rpyc.core.stream import SocketStream
from rpyc.utils.factory import connect_channel

from prevalence.codec import CODEC
from replication import messages
from replication.membership import Membership
from replication.messages import SnapshotMeta
from prevalence.entry import Entry, EntryKind
from rpc.auth import client_handshake
from rpc.channel import frame as rpyc_frame
from rpc.frame_mac import TAG_SIZE
from rpc.transport import SAFE_PROTOCOL_CONFIG, open_connection, open_peer_channel
from rpc.wire import BatchError, encode_batch
from tests.cluster.attack import HEADER, Target, authenticated, key
from tests.cluster.harness import LocalCluster
from tests.prevalence.domain import Add

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="multi-process, POSIX")]

CASES = {"handshake": 250, "frames": 200, "client": 400, "peer": 450}  # 1,300 per run: new ones each run
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                      HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    c = LocalCluster(tmp_path_factory.mktemp("hostile"), 3)
    nid = c.leader()
    with c.client() as client:
        client.execute(Add("x", 7))
    t = Target(c, nid)
    yield t
    t.close()
    c.stop()


def deep_msgpack(depth: int) -> bytes:
    return b"\x91" * depth + b"\x01"


def nested(depth: int, leaf: object = 1) -> object:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


# msgpack-able values of every kind, some deep, some long
ints = st.integers(-(2**63), 2**64 - 1)  # what msgpack can carry
scalars = (st.none() | st.booleans() | ints | st.floats()
           | st.text(max_size=40) | st.binary(max_size=64))
plain = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8) | st.integers(0, 9), inner, max_size=3), max_leaves=12)
wild = plain | st.integers(5, 3000).map(nested) | st.text(min_size=300, max_size=2000)


def packed(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


# ---------------------------------------------------------------------------- handshake

def frame(body: bytes) -> bytes:
    return struct.pack("!I", len(body)) + body


TAGS = ["pvl-hello", "pvl-challenge", "pvl-proof", "pvl-ok", "pvl-refused", "", "hello"]
hello = st.tuples(
    st.sampled_from(TAGS[:1] * 3 + TAGS),
    st.integers(-3, 5) | st.text(max_size=3) | st.none() | st.floats(),
    st.sampled_from(["peer", "client", "admin", "", "PEER", "root"]) | st.text(max_size=12) | ints,
    st.text(max_size=200) | st.binary(max_size=8) | ints | st.none(),
    st.binary(min_size=0, max_size=40) | st.text(max_size=40),
).map(list)
handshake_payload = st.one_of(
    st.binary(max_size=2048),                                                   # raw garbage
    plain.map(lambda v: frame(packed(v))),                                      # a frame of any msgpack
    st.tuples(hello, st.binary(max_size=80)).map(lambda t: frame(packed(t[0])) + frame(t[1])),
    st.tuples(hello, plain).map(lambda t: frame(packed(t[0])) + frame(packed(t[1]))),
    st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=64)).map(lambda t: struct.pack("!I", t[0]) + t[1]),
    st.integers(1, 5000).map(lambda d: frame(deep_msgpack(d))),                 # nested (and oversize)
    st.integers(1, 3).map(lambda n: b"\x16\x03\x01" + b"\x00" * n),             # a TLS record where none is spoken
    st.binary(max_size=64).map(lambda b: HEADER.pack(len(b), 1) + b),          # RPyC before authenticating
)


@settings(max_examples=CASES["handshake"], **SETTINGS)
@given(payload=handshake_payload)
def test_handshake(target, payload):
    """Garbage before authentication: refused, never granted, the thread let go at once."""
    sock = socket.create_connection(target.c.configs[target.nid].listen, timeout=2.0)
    received = b""
    try:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # refused before we finished: fine
        sock.settimeout(2.0)
        while True:
            try:
                chunk = sock.recv(4096)
            except OSError:
                break
            if not chunk:
                break
            received += chunk
    finally:
        sock.close()
    assert b"pvl-ok" not in received
    target.check(payload)


@settings(max_examples=40, **SETTINGS)
@given(role=st.sampled_from(["peer", "client", "admin"]), ident=st.text(min_size=1, max_size=20).filter(str.isprintable))
def test_handshake_with_a_wrong_key(target, role, ident):
    sock = socket.create_connection(target.c.configs[target.nid].listen, timeout=2.0)
    try:
        with pytest.raises(Exception):
            client_handshake(sock, os.urandom(32).hex().encode(), role, ident, timeout=2.0)
    finally:
        sock.close()
    target.check((role, ident))


# ---------------------------------------------------------------------------- raw frames

class Case:
    def __init__(self, **kw):
        self.__dict__.update(kw)

    def __repr__(self):
        return f"Case({', '.join(f'{k}={v!r:.80}' for k, v in self.__dict__.items())})"


def brine_request(args: bytes) -> bytes:
    return brine.I1.pack(consts.MSG_REQUEST) + args


LIMIT = {"peer": 16 << 20, "client": 4 << 20}  # rpc.transport's defaults
raw_frame = st.one_of(
    st.builds(Case, kind=st.just("over the limit"), over=st.integers(1, 2**32 - 1 - (16 << 20))),
    st.builds(Case, kind=st.just("compressed"), body=st.binary(max_size=256)),
    st.builds(Case, kind=st.just("zlib bomb")),
    st.builds(Case, kind=st.just("garbage"), body=st.binary(min_size=1, max_size=512)),
    st.builds(Case, kind=st.just("bad brine"), body=st.binary(max_size=256).map(brine_request)),
    st.builds(Case, kind=st.just("nested brine"), depth=st.integers(500, 200_000)),
    st.builds(Case, kind=st.just("unknown message type"), msg=st.integers(4, 255), body=st.binary(max_size=32)),
)


_bomb: list[bytes] = []


def bomb() -> bytes:
    """64 MiB of zeros, compressed to ~65 KB (made once)."""
    if not _bomb:
        z = zlib.compressobj(9)
        _bomb.append(b"".join(z.compress(b"\0" * (1 << 20)) for _ in range(64)) + z.flush())
    return _bomb[0]


# a valid request after the hostile frame: its answer (or the connection's end) says the
# node has dealt with what came before it
PING = brine.I1.pack(consts.MSG_REQUEST) + brine.dump((999, (consts.HANDLE_PING, (consts.LABEL_VALUE, ("hi",)))))
PING_FRAME = rpyc_frame(PING)


def raw_bytes(case: Case, role: str) -> bytes:
    if case.kind == "over the limit":
        return HEADER.pack(LIMIT[role] + case.over, 0) + b"\0" * 64
    if case.kind == "compressed":
        body = zlib.compress(case.body)
        return HEADER.pack(len(body), 1) + body + b"\n"
    if case.kind == "zlib bomb":
        body = bomb()
        return HEADER.pack(len(body), 1) + body + b"\n"
    if case.kind == "nested brine":
        body = brine_request(brine.TAG_TUP1 * case.depth + brine.dump(1))
    elif case.kind == "unknown message type":
        body = bytes([case.msg]) + case.body
    else:
        body = case.body
    return rpyc_frame(body)


@settings(max_examples=CASES["frames"], **SETTINGS)
@given(role=st.sampled_from(["peer", "client"]), case=raw_frame)
def test_raw_frames_after_authentication(target, role, case):
    """What RPyC itself would read: each of these ends the connection (one log line) or
    is answered, and never grows the node."""
    sock = authenticated(target.c, target.nid, role)
    # a node's frame ends with a MAC, not a CRC-32: enough bytes after the case that the
    # node reads it whole (and refuses it) instead of waiting for the rest of its MAC
    tail = PING_FRAME if role == "client" else PING_FRAME + bytes(TAG_SIZE)
    try:
        try:
            sock.sendall(raw_bytes(case, role) + tail)
        except OSError:
            pass  # dropped already
        sock.settimeout(2.0)
        try:
            sock.recv(65536)  # the ping's answer, or the end: either way, done with the case
        except socket.timeout:
            pytest.fail(f"{role} {case!r}: neither answered nor dropped in 2 s")
        except OSError:
            pass
    finally:
        sock.close()
    target.check((role, case))


# ---------------------------------------------------------------------------- client methods

class FakeInt(int):
    """Passed by reference (not a brine type): a netref whose class says int."""


class FakeStr(str):
    pass


class FakeBytes(bytes):
    pass


class _Zipping(Channel):
    COMPRESSION_THRESHOLD = 0


EXPOSED = ["status", "execute", "execute_batch", "query", "register_session", "read_log", "change_membership",
           "transfer_leadership", "app_call", "backup_begin", "backup_chunk", "backup_end"]
BACKUP = ["backup_begin", "backup_chunk", "backup_end"]
brine_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=40)
                 | st.binary(max_size=64))
hostile_bytes = st.one_of(
    plain.map(packed),                                                    # msgpack, but not a transaction
    st.integers(100, 100_000).map(deep_msgpack),                          # nesting
    st.sampled_from([packed(["test.Add", 1, {"key": "x"}]), packed(["test.Add", 9, {"key": "x", "amount": 1}]),
                     packed(["test.Add", 1, {"key": nested(900), "amount": 1}]), packed(["no.Such", 1, {}]),
                     packed(["test.Add", "1", []]), b"\xc1", b""]),
    st.sampled_from([(1 << 20) + 1, 3 << 20]).map(lambda n: b"\0" * n),   # over the request limit, under the frame's
)
netref = st.sampled_from([FakeInt(1), FakeInt(2**70), FakeStr("local"), FakeStr("n2"), FakeBytes(b"x")])
arg = st.recursive(brine_scalars | hostile_bytes | netref,
                   lambda inner: st.lists(inner, max_size=4).map(tuple), max_leaves=6)
arg = arg | st.integers(50, 300).map(lambda d: _tuples(d))  # deep tuples (deeper: tests the frames above)


def _tuples(depth: int) -> object:
    out: object = 1
    for _ in range(depth):
        out = (out,)
    return out


def plausible_change(method: str, args: tuple) -> bool:
    """A call that could really change the cluster, or a valid long poll: not hostile."""
    if method == "register_session":
        return not args
    if method in ("execute", "execute_batch"):
        blobs = [a for a in _flatten(args) if type(a) is bytes]
        for blob in blobs:
            try:
                CODEC.loads(blob)
                return True
            except Exception:  # noqa: BLE001 - not a transaction: hostile indeed
                pass
        return False
    if method == "transfer_leadership":
        return bool(args) and type(args[0]) is str
    if method == "read_log":  # a valid long poll waits up to 5 s: not hostile, and slow
        return (len(args) >= 1 and type(args[0]) is int and args[0] > 0
                and (len(args) < 3 or (type(args[2]) in (int, float) and not args[2] <= 0.2)))
    if method == "change_membership":
        return len(args) >= 2 and type(args[0]) is str and args[0] in (
            "add_voter", "add_learner", "promote_learner", "remove") and type(args[1]) is str
    return False


def _flatten(v: object):
    if type(v) is tuple:
        for item in v:
            yield from _flatten(item)
    else:
        yield v


class ClientAttacker:
    """An authenticated client connection, made again when a case ends it."""

    role = "client"

    def __init__(self, target: Target):
        self.target = target
        self.conn = None

    def connection(self, zipped: bool):
        if zipped:  # a fresh connection that compresses every frame: the node drops it
            sock = authenticated(self.target.c, self.target.nid, "client")
            sock.settimeout(2.0)
            return connect_channel(_Zipping(SocketStream(sock), compress=True), service=rpyc.VoidService,
                                   config=dict(SAFE_PROTOCOL_CONFIG, sync_request_timeout=2.0))
        if self.conn is None or self.conn.closed:
            self.conn = open_connection(self.target.c.configs[self.target.nid].listen, key(self.target.c, self.role),
                                        role=self.role, ident="hostile", request_timeout=2.0)
        return self.conn

    def call(self, method: str, args: tuple, zipped: bool) -> object:
        conn = self.connection(zipped)
        try:
            raw = getattr(conn.root, method)(*args)
        except (EOFError, ConnectionError):
            self.drop(conn)
            return "dropped"
        except rpyc.AsyncResultTimeout:
            raise  # the node did not answer in 2 s: a failure
        except Exception as exc:  # noqa: BLE001 - a remote refusal (TypeError...) is an answer
            return f"{type(exc).__name__}"
        finally:
            if zipped:
                self.drop(conn)
        assert type(raw) is bytes, raw
        reply = msgpack.unpackb(raw, raw=False)
        if method == "execute_batch" and reply[0] == "ok":  # each command answered on its own
            assert all(r[0] != "ok" for r in reply[1]), reply
        elif method == "backup_end" and reply[0] == "ok":  # a well-formed id of no session: nothing ended
            assert reply[1] is False, reply
        else:
            assert reply[0] != "ok" or method in ("status", "query", "read_log"), reply
        return reply

    def drop(self, conn) -> None:
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass
        if conn is self.conn:
            self.conn = None


def _attacking(a: ClientAttacker):
    yield a
    if a.conn is not None:
        a.drop(a.conn)


@pytest.fixture(scope="module")
def client_attacker(target):
    yield from _attacking(ClientAttacker(target))


@settings(max_examples=CASES["client"], **SETTINGS)
@given(method=st.sampled_from(EXPOSED), args=st.lists(arg, max_size=4).map(tuple),
       zipped=st.sampled_from([False] * 15 + [True]))
def test_client_methods(target, client_attacker, method, args, zipped):
    assume(not plausible_change(method, args))
    client_attacker.call(method, args, zipped)
    target.check((method, args, zipped))


class AdminAttacker(ClientAttacker):
    """The same with the admin key: the backup methods' own checks, past the key's."""

    role = "admin"


@pytest.fixture(scope="module")
def admin_attacker(target):
    yield from _attacking(AdminAttacker(target))


session_ids = st.one_of(st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),  # well-formed, unknown
                        st.text(alphabet="0123456789abcdefABCDEF", min_size=31, max_size=33),
                        st.just("0" * 32).map(FakeStr))
backup_args = st.one_of(
    st.lists(arg, max_size=3).map(tuple),
    st.tuples(session_ids, st.integers(-(2**70), 2**70) | st.sampled_from([FakeInt(0), 0.0, True, None])),
    st.tuples(session_ids),
)


@settings(max_examples=150, **SETTINGS)
@given(method=st.sampled_from(BACKUP[1:]), args=backup_args)
def test_backup_methods_with_the_admin_key(target, admin_attacker, method, args):
    """Session ids and offsets checked by exact type and range: no chunk read without a
    session this connection began, and the node unchanged. (backup_begin takes no
    argument and takes a backup: tests.cluster.test_backup.)"""
    admin_attacker.call(method, args, False)
    target.check((method, args))


# ---------------------------------------------------------------------------- peer messages

MEMBERS = Membership(("n1", "n2", "n3"))
ENTRY = Entry(1, 1, int(EntryKind.COMMAND), b"x")


def templates(src: str, dst: str) -> dict[type, object]:
    """A well-formed message of every type, stale (term 0) so that even a valid one
    changes nothing."""
    m = messages
    meta = SnapshotMeta(5, 1, MEMBERS)
    return {
        m.PreVote: m.PreVote(src, dst, 0, 0, 0), m.PreVoteResp: m.PreVoteResp(src, dst, 0, True),
        m.Vote: m.Vote(src, dst, 0, 0, 0), m.VoteResp: m.VoteResp(src, dst, 0, True),
        m.Append: m.Append(src, dst, 0, 0, 0, [ENTRY], 0), m.AppendResp: m.AppendResp(src, dst, 0, 0),
        m.Heartbeat: m.Heartbeat(src, dst, 0, 0, b"", 0), m.HeartbeatResp: m.HeartbeatResp(src, dst, 0),
        m.InstallSnapshot: m.InstallSnapshot(src, dst, 0, meta, 0, b"snap", True),
        m.SnapshotResp: m.SnapshotResp(src, dst, 0, 5, 0), m.TimeoutNow: m.TimeoutNow(src, dst, 0),
        m.ReadIndex: m.ReadIndex(src, dst, 0, b"ctx"), m.ReadIndexResp: m.ReadIndexResp(src, dst, 0, b"ctx", 1),
    }


KIND = {"str": "str", "int": "int", "bool": "bool", "bytes": "bytes", "list": "entries", "SnapshotMeta": "meta"}
not_list = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=4) | st.binary(max_size=4)
BAD = {
    "int": st.integers(-(2**63), -1) | st.integers(2**63, 2**64 - 1) | st.floats() | st.text(max_size=4)
    | st.none() | st.booleans() | st.binary(max_size=4) | st.lists(ints, max_size=2),
    "str": ints | st.just("") | st.text(min_size=257, max_size=400) | st.binary(max_size=4) | st.none()
    | st.booleans() | st.lists(st.text(max_size=3), max_size=2),
    "bool": st.integers(-2, 2) | st.none() | st.text(max_size=3) | st.binary(max_size=2) | st.floats(),
    "bytes": st.text(max_size=4) | ints | st.none() | st.booleans() | st.lists(st.binary(), max_size=2),
    "entries": not_list | st.lists(st.one_of(
        ints, st.lists(st.integers(0, 9), max_size=3),
        st.tuples(st.integers(1, 9), st.integers(0, 9), st.integers(5, 200), st.binary(max_size=4)).map(list),
        st.tuples(st.text(max_size=2), st.integers(0, 9), st.just(1), st.binary(max_size=4)).map(list),
        st.tuples(st.integers(1, 9), st.integers(0, 9), st.just(1), st.text(max_size=4)).map(list)),
        min_size=1, max_size=3) | st.just([[1, 1, 1, b"a"], [3, 1, 1, b"b"]]),
    "meta": not_list | st.lists(ints, min_size=0, max_size=2) | st.lists(ints, min_size=4, max_size=5)
    | st.tuples(st.integers(0, 9), st.integers(0, 9), st.one_of(
        not_list, st.just([[1], []]), st.just([["n1"], [""]]), st.just([["n1"], ["n2"], {"n1": 5}]),
        st.just([["n1"]]))).map(list),
}


@st.composite
def peer_frame(draw, dst: str) -> tuple[str, bytes]:
    how = draw(st.sampled_from(["field", "field", "field", "arity", "code", "nested", "not a list",
                                "bytes", "elsewhere", "stale"]))
    cls = draw(st.sampled_from(messages._TYPES))
    raw = msgpack.unpackb(messages.encode(templates("n2", dst)[cls]), raw=False)
    names = [f.name for f in messages.fields(cls)]
    kinds = [KIND[f.type] for f in messages.fields(cls)]
    if how == "field":
        k = draw(st.integers(0, len(names) - 1))
        raw[k + 1] = draw(BAD[kinds[k]])
        return f"{cls.__name__}.{names[k]}", packed(raw)
    if how == "arity":
        cut = draw(st.integers(0, len(raw) - 1))
        extra = draw(st.lists(plain, min_size=0, max_size=3))
        raw = raw[:cut] + extra if draw(st.booleans()) or not extra else raw + extra
        assume(len(raw) != len(names) + 1 or not raw)
        return f"{cls.__name__} arity {len(raw) - 1}", packed(raw)
    if how == "code":
        raw[0] = draw(st.integers(-(2**63), 0) | st.integers(14, 2**64 - 1) | st.text(max_size=9) | st.none())
        return "type code", packed(raw)
    if how == "nested":
        k = draw(st.integers(0, len(names) - 1))
        depth = draw(st.integers(10, 3000))
        return f"{cls.__name__}.{names[k]} nested {depth}", _nested_in(raw, k + 1, depth)
    if how == "not a list":
        return "not a list", packed(draw(plain.filter(lambda v: not isinstance(v, list))))
    if how == "bytes":
        return "bytes", draw(st.binary(max_size=300))
    if how == "elsewhere":  # well formed, for another node
        raw[2] = draw(st.sampled_from(["n9", "zz", "n" * 200]))
        return f"{cls.__name__} to {raw[2]:.5}", packed(raw)
    return f"{cls.__name__} stale", packed(raw)  # term 0: older than any term the node has seen


def _nested_in(raw: list, index: int, depth: int) -> bytes:
    """``raw`` as msgpack with element ``index`` wrapped ``depth`` arrays deep (written
    by hand: msgpack's packer refuses such nesting, a hostile peer need not)."""
    head = b"".join(packed(v) for v in raw[:index])
    tail = b"".join(packed(v) for v in raw[index + 1:])
    arr = len(raw)
    prefix = bytes([0x90 | arr]) if arr < 16 else b"\xdc" + struct.pack("!H", arr)
    return prefix + head + b"\x91" * depth + packed(raw[index]) + tail


class PeerAttacker:
    """Speaks the nodes' own protocol (batches after the handshake), as a holder of the
    peer key could; a compressed frame is written by hand, as no node writes one."""

    def __init__(self, target: Target):
        self.target = target
        self.conn = None

    def deliver(self, batch: bytes, zipped: bool) -> str:
        if self.conn is None:
            self.conn = open_peer_channel(self.target.c.configs[self.target.nid].listen,
                                          key(self.target.c, "peer"), ident="n2", write_timeout=2.0)
        conn = self.conn
        try:
            if zipped:
                body = zlib.compress(batch)
                conn.channel.stream.write(HEADER.pack(len(body), 1) + body + b"\n")
            else:
                conn.channel.send(batch)
            if not conn.poll(2.0):
                raise AssertionError("a batch got no answer within 2 s")
            conn.recv()
            return "delivered"
        except (EOFError, ConnectionError, BatchError):
            self.drop()
            return "dropped"

    def drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@pytest.fixture(scope="module")
def peer_attacker(target):
    a = PeerAttacker(target)
    yield a
    a.drop()


@st.composite
def peer_case(draw, dst: str):
    shape = draw(st.sampled_from(["frames"] * 8 + ["bad batch", "oversize", "compressed"]))
    if shape == "frames":
        frames = draw(st.lists(peer_frame(dst), min_size=1, max_size=3))
        return [what for what, _ in frames], encode_batch([f for _, f in frames]), False
    if shape == "bad batch":
        batch = draw(st.one_of(st.binary(max_size=200), plain.map(packed), st.integers(10, 5000).map(deep_msgpack),
                               st.lists(plain.filter(lambda v: type(v) is not bytes), min_size=1, max_size=3)
                               .map(packed)))
        return ["bad batch"], batch, False
    if shape == "oversize":  # over the peer frame limit: the node drops the connection at the header
        return ["oversize"], b"\0" * ((16 << 20) + 1), False
    return ["compressed"], encode_batch([draw(st.binary(max_size=100))]), True


@settings(max_examples=CASES["peer"], **SETTINGS)
@given(data=st.data())
def test_peer_messages(target, peer_attacker, data):
    """Through an authenticated peer connection (the peer key), claiming to be n2."""
    what, batch, zipped = data.draw(peer_case(target.nid))
    outcome = peer_attacker.deliver(batch, zipped)
    target.check((what, outcome))


def test_the_suite_ran_its_cases_and_the_node_stayed_small(target):
    """Last in the module: the tally (the RSS bound held after every single case)."""
    if target.idle_rss is not None:
        print(f"\nhostile suite: {target.cases} cases, idle RSS {target.idle_rss >> 20} MiB, "
              f"peak after any case {target.peak_rss >> 20} MiB")
    assert target.cases >= sum(CASES.values()), target.cases


def test_the_suite_attacks_every_method_a_client_can_call():
    from rpc.service import ClientService

    assert sorted(EXPOSED) == sorted(ClientService._EXPOSED)

"""Frames between nodes under a MAC drawn from the handshake (rpc.frame_mac): a relay in
the middle of an authenticated peer connection (a learner an admin added at its own
address, under the id of a real node, passes the leader's handshake on to that node) can
pass frames on, or stop, but cannot inject, replay, reorder, drop and splice, or reflect
one: the frame closes the connection and nothing of it is delivered."""
from __future__ import annotations

import hmac
import logging
import os
import socket
import struct
import threading

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rpc.channel import FrameRefused
from rpc.frame_mac import ACCEPTOR, DIALLER, TAG_SIZE, FrameKeys, _Hmac, frame_keys, mac_channel
from rpc.peer_server import PeerServer
from rpc.transport import open_peer_channel
from rpc.wire import decode_batch, encode_batch

from .conftest import KEYS, SECRET, Inbox, wait_until

HEADER = struct.Struct("!LB")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("closed")
        data += chunk
    return data


def _handshake_frame(sock: socket.socket) -> bytes:
    head = _recv_exact(sock, 4)
    return head + _recv_exact(sock, struct.unpack("!I", head)[0])


def _peer_frame(sock: socket.socket) -> bytes:
    """One frame after the handshake, as it came: header, body, tag."""
    head = _recv_exact(sock, HEADER.size)
    return head + _recv_exact(sock, HEADER.unpack(head)[0] + TAG_SIZE)


class Relay:
    """A party the dialler reaches instead of the node it means: passes the handshake
    on to the real node, then holds both sockets for the test to pass, drop or forge."""

    def __init__(self, server: PeerServer):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.server = server
        self.inside: socket.socket | None = None  # to the dialler
        self.outside: socket.socket | None = None  # to the real node
        self._ready = threading.Thread(target=self._relay_handshake, daemon=True)
        self._ready.start()

    @property
    def address(self) -> tuple[str, int]:
        return self.listener.getsockname()

    def _relay_handshake(self) -> None:
        inside, _ = self.listener.accept()
        inside.settimeout(5.0)
        outside = socket.create_connection(self.server.address, timeout=5.0)
        outside.sendall(_handshake_frame(inside))  # hello
        inside.sendall(_handshake_frame(outside))  # challenge
        outside.sendall(_handshake_frame(inside))  # proof
        inside.sendall(_handshake_frame(outside))  # ok
        self.inside, self.outside = inside, outside

    def dial(self):
        chan = open_peer_channel(self.address, SECRET, ident="n2", target="n1")
        self._ready.join(5.0)
        assert self.inside is not None
        return chan

    def close(self) -> None:
        for s in (self.inside, self.outside, self.listener):
            if s is not None:
                s.close()


@pytest.fixture
def node(caplog):
    caplog.set_level(logging.WARNING, logger="rpc.transport")
    inbox = Inbox()
    server = PeerServer("127.0.0.1", 0, KEYS, None, on_batch=lambda src, frames: inbox(src, frames) or [b"ack"],
                        node_id="n1")
    yield server, inbox
    server.close()


@pytest.fixture
def relay(node):
    r = Relay(node[0])
    yield r
    r.close()


def _refused(caplog, seq: int) -> None:
    assert wait_until(lambda: any("failed authentication" in r.getMessage() for r in caplog.records), 3.0), \
        caplog.text
    (line,) = [r.getMessage() for r in caplog.records if "failed authentication" in r.getMessage()]
    assert line.startswith(f"frame {seq} from ") and "a relay or a damaged link" in line, line


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(3.0)
    try:
        return sock.recv(1) == b""
    except OSError:
        return True


def test_relayed_frames_passed_on_unchanged_are_served(node, relay):
    _, inbox = node
    chan = relay.dial()
    with chan:
        for i in range(3):
            chan.send([b"m%d" % i])
            relay.outside.sendall(_peer_frame(relay.inside))
            relay.inside.sendall(_peer_frame(relay.outside))
            assert chan.recv() == [b"ack"]
    assert inbox.payloads() == [[b"m0"], [b"m1"], [b"m2"]]


def test_a_replayed_frame_is_refused(node, relay, caplog):
    _, inbox = node
    with relay.dial() as chan:
        chan.send([b"append"])
        first = _peer_frame(relay.inside)
        relay.outside.sendall(first)
        _peer_frame(relay.outside)
        relay.outside.sendall(first)  # the same bytes again: an Append applied twice, a vote counted twice
        assert _closed(relay.outside)
    assert inbox.payloads() == [[b"append"]]
    _refused(caplog, 2)


def test_reordered_frames_are_refused(node, relay, caplog):
    _, inbox = node
    with relay.dial() as chan:
        chan.send([b"one"])
        chan.send([b"two"])
        one, two = _peer_frame(relay.inside), _peer_frame(relay.inside)
        relay.outside.sendall(two + one)
        assert _closed(relay.outside)
    assert inbox.payloads() == []
    _refused(caplog, 1)


def test_a_frame_dropped_and_the_next_passed_on_is_refused(node, relay, caplog):
    _, inbox = node
    with relay.dial() as chan:
        chan.send([b"one"])
        chan.send([b"two"])
        _peer_frame(relay.inside)  # dropped
        relay.outside.sendall(_peer_frame(relay.inside))
        assert _closed(relay.outside)
    assert inbox.payloads() == []
    _refused(caplog, 1)


def test_a_frame_from_another_connection_is_refused(node, caplog):
    """Frame 1 of one connection, spliced into another at its frame 1: the keys are new
    with every handshake (both nonces), so a recording is worth nothing later."""
    server, inbox = node
    recorded = []
    for _ in range(2):
        r = Relay(server)
        try:
            with r.dial() as chan:
                chan.send([b"first"])
                frame = _peer_frame(r.inside)
                if not recorded:
                    recorded.append(frame)
                    r.outside.sendall(frame)
                    assert _peer_frame(r.outside)
                else:
                    r.outside.sendall(recorded[0])
                    assert _closed(r.outside)
        finally:
            r.close()
    assert inbox.payloads() == [[b"first"]]
    _refused(caplog, 1)


def test_a_forged_answer_is_refused_by_the_dialler(node, relay, caplog):
    """The relay answers the leader itself (a vote, an ack for entries the follower never
    got): the dialler checks the answers as the node checks the batches."""
    with relay.dial() as chan:
        chan.send([b"request"])
        _peer_frame(relay.inside)
        body = encode_batch([b"forged ack"])
        relay.inside.sendall(HEADER.pack(len(body), 0) + body + os.urandom(TAG_SIZE))
        assert chan.poll(3.0)
        with pytest.raises(EOFError):
            chan.recv()
    _refused(caplog, 1)


def test_a_dialler_frame_reflected_back_as_an_answer_is_refused(node, relay, caplog):
    """Each direction has its own key: the dialler's own frame 1, sent back to it, is not
    the acceptor's frame 1."""
    with relay.dial() as chan:
        chan.send([b"request"])
        relay.inside.sendall(_peer_frame(relay.inside))
        assert chan.poll(3.0)
        with pytest.raises(EOFError):
            chan.recv()
    _refused(caplog, 1)


def test_the_keys_differ_per_direction_and_per_handshake():
    a = frame_keys(SECRET, b"transcript 1")
    assert a == frame_keys(SECRET, b"transcript 1") and a.dialler != a.acceptor
    assert frame_keys(SECRET, b"transcript 2").dialler != a.dialler
    assert frame_keys(KEYS["client"], b"transcript 1").dialler != a.dialler
    assert SECRET.hex() not in repr(a) and a.dialler.hex() not in repr(a)


@settings(max_examples=300, deadline=None)
@given(key=st.one_of(st.binary(max_size=64), st.binary(min_size=65, max_size=200)),
       parts=st.lists(st.binary(max_size=200), max_size=4))
@example(key=b"k" * 65, parts=[b"frame"])
def test_the_frame_hmac_is_hmac_sha256(key, parts):
    """The per-frame HMAC with its padded keys made once equals the standard library's,
    for a key of any length (one longer than SHA-256's block is hashed first: RFC 2104)."""
    assert _Hmac(key).digest(*parts) == hmac.digest(key, b"".join(parts), "sha256")


# ---------------------------------------------------------------------------- property

def _pair_channels(keys: FrameKeys):
    """A dialler's channel writing into one socket pair, an acceptor's reading another:
    the test carries (and tampers with) the bytes between the two."""
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    for s in (a, b, c, d):
        s.settimeout(2.0)
    sender = mac_channel(a, keys, DIALLER, 1 << 20, "sender")
    receiver = mac_channel(d, keys, ACCEPTOR, 1 << 20, "peer 'n2' at test", frame_timeout=1.0)
    return sender, b, c, receiver, (a, b, c, d)


TAMPERINGS = ("none", "replay", "swap", "drop", "flip", "inject", "truncate")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies=st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=8),
       tampering=st.sampled_from(TAMPERINGS), where=st.integers(0, 7), other=st.integers(0, 7),
       bit=st.integers(0, 10_000), junk=st.binary(min_size=0, max_size=64))
def test_the_receiver_takes_exactly_the_frames_before_the_first_tampered_one(bodies, tampering, where, other, bit,
                                                                            junk):
    keys = frame_keys(SECRET, os.urandom(32))
    sender, tap, feed, receiver, socks = _pair_channels(keys)
    try:
        frames = []
        for body in bodies:
            sender.send(body)
            frames.append(_peer_frame(tap))
        n = len(frames)
        i = where % n
        out = list(frames)
        first_bad = n  # the first position whose frame is not the original one
        if tampering == "replay":
            j = other % n
            out.insert(i, frames[j])  # frame j again, at position i
            first_bad = i + 1 if j == i else i
        elif tampering == "swap" and n > 1 and i + 1 < n:
            out[i], out[i + 1] = out[i + 1], out[i]
            first_bad = i
        elif tampering == "drop":
            del out[i]  # the last one dropped looks like a connection that ended: nothing to tell
            first_bad = i
        elif tampering == "flip":
            f = bytearray(out[i])
            f[bit % len(f)] ^= 1 << (bit % 8)
            out[i] = bytes(f)
            first_bad = i
        elif tampering == "inject":
            forged = HEADER.pack(len(junk), 0) + junk + os.urandom(TAG_SIZE)
            out.insert(i, forged)
            first_bad = i
        elif tampering == "truncate":
            out[i] = out[i][:bit % len(out[i])]
            out = out[:i + 1]  # the connection ends mid-frame
            first_bad = i
        feed.sendall(b"".join(out))
        feed.shutdown(socket.SHUT_WR)
        got = []
        ending = None
        while True:
            try:
                got.append(bytes(receiver.recv()))
            except EOFError as exc:  # FrameRefused is one
                ending = exc
                break
        assert got == bodies[:first_bad], (tampering, i, len(got), first_bad)
        if out == frames[:len(out)]:  # untouched, or its end dropped: a connection that ended
            assert not isinstance(ending, FrameRefused), ending
        elif tampering in ("replay", "swap", "drop", "inject"):  # whole frames, each well framed: the MAC says
            assert isinstance(ending, FrameRefused), ending
    finally:
        for s in socks:
            s.close()


def test_two_threads_sending_at_once_keep_the_numbers_in_wire_order():
    """The numbers are taken under the same lock as the write: frames sent from two
    threads (a direct send and the sender thread) still check in the order they arrive."""
    keys = frame_keys(SECRET, os.urandom(32))
    a, d = socket.socketpair()
    sender = mac_channel(a, keys, DIALLER, 1 << 20, "sender")
    receiver = mac_channel(d, keys, ACCEPTOR, 1 << 20, "receiver", frame_timeout=2.0)
    got: list = []

    def read() -> None:
        try:
            while len(got) < 400:
                got.append(bytes(receiver.recv()))
        except EOFError as exc:
            got.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    writers = [threading.Thread(target=lambda t=t: [sender.send(b"%d-%d" % (t, k)) for k in range(200)])
               for t in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(5.0)
    reader.join(5.0)
    a.close()
    d.close()
    assert len(got) == 400 and all(isinstance(g, bytes) for g in got), got[-1:]


def test_a_large_frame_is_authenticated_in_place():
    """64 KiB and more: read into one buffer and checked there, not copied."""
    keys = frame_keys(SECRET, os.urandom(32))
    a, d = socket.socketpair()
    sender = mac_channel(a, keys, DIALLER, 8 << 20, "sender")
    receiver = mac_channel(d, keys, ACCEPTOR, 8 << 20, "receiver", frame_timeout=2.0)
    big = os.urandom(3 << 20)
    t = threading.Thread(target=lambda: sender.send(encode_batch([big, b"x"])), daemon=True)
    t.start()
    assert decode_batch(receiver.recv()) == [big, b"x"]
    t.join(5.0)
    a.close()
    d.close()

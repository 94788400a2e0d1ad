"""Bounded input on an authenticated connection (issue 15, item 3): the announced length
is checked before the body is read, a compressed frame is refused, a party that stops
mid-frame is dropped, and a listener holds a bounded number of connections."""
from __future__ import annotations

import logging
import socket
import struct
import time
import zlib

import pytest
import rpyc
from rpyc.core.channel import Channel
from rpyc.core.stream import SocketStream
from rpyc.utils.factory import connect_channel

from rpc.auth import client_handshake
from rpc.transport import SAFE_PROTOCOL_CONFIG, open_peer_channel
from rpc.wire import encode_batch

from . import conftest
from .conftest import SECRET, Inbox, wait_until
from tests.cluster.attack import closed_within

HEADER = struct.Struct("!LB")  # RPyC's frame header: length, compressed flag


def key(role: str) -> bytes:
    """The key of ``role`` (one secret for all, or a key per role)."""
    return getattr(conftest, "KEYS", {}).get(role, SECRET)


def authenticated(server, role: str = "peer", ident: str = "n9") -> socket.socket:
    sock = socket.create_connection(server.address, timeout=2.0)
    return client_handshake(sock, key(role), role, ident, timeout=2.0)



class _Zipping(Channel):
    """An RPyC channel that compresses every frame, as a hostile sender may."""

    COMPRESSION_THRESHOLD = 0


@pytest.mark.parametrize("role", ["peer", "client"])
def test_a_compressed_frame_from_the_other_side_is_refused(make_server, caplog, role):
    """RPyC inflates whatever the sender flags as compressed: 195 KB once took a node to
    619 MB. The flag is refused outright and the connection closed."""
    caplog.set_level(logging.WARNING, logger="rpc.transport")
    inbox = Inbox()
    server = make_server(inbox)
    sock = authenticated(server, role)
    if role == "peer":  # batches, not RPyC: the same channel framing, flagged compressed
        body = zlib.compress(encode_batch([b"zipped"]))
        sock.sendall(HEADER.pack(len(body), 1) + body + b"\n")
        assert closed_within(sock, 1.0)
        sock.close()
    else:
        conn = connect_channel(_Zipping(SocketStream(sock), compress=True), service=rpyc.VoidService,
                               config=dict(SAFE_PROTOCOL_CONFIG, sync_request_timeout=2.0))
        try:
            with pytest.raises(EOFError):
                conn.root  # itself a request, compressed like every other
        finally:
            conn.close()
    assert inbox.payloads() == []
    assert any("compressed" in r.getMessage() for r in caplog.records if r.name == "rpc.transport"), caplog.text
    # the server serves others as before
    with open_peer_channel(server.address, SECRET, ident="n2") as good:
        good.call([b"plain"])
    assert inbox.wait_count(1) and inbox.payloads() == [b"plain"]


@pytest.mark.parametrize("role", ["peer", "client"])
def test_a_frame_announcing_4_gib_is_refused_before_its_body(make_server, caplog, role):
    """RPyC reads any announced length (up to 4 GiB), and a sender that then goes silent
    holds the server thread forever."""
    caplog.set_level(logging.WARNING, logger="rpc.transport")
    server = make_server()
    sock = authenticated(server, role)
    try:
        sock.sendall(HEADER.pack(0xFFFFFFFF, 0) + b"x" * 1000)
        assert closed_within(sock, 1.0), "the server waited for a 4 GiB body"
    finally:
        sock.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "rpc.transport"]
    assert any("4294967295 bytes announced" in line for line in lines), lines


def test_a_compressed_bomb_is_never_inflated(make_server):
    """256 MB of zeros compressed to ~250 KB: refused from its header, nothing inflated."""
    server = make_server()
    sock = authenticated(server)
    z = zlib.compressobj(9)
    body = b"".join(z.compress(b"\0" * (1 << 20)) for _ in range(256)) + z.flush()
    assert len(body) < 300_000
    try:
        sock.sendall(HEADER.pack(len(body), 1))
        try:
            sock.sendall(body + b"\n")
        except OSError:
            pass  # closed under us: what we want
        assert closed_within(sock, 1.0)
    finally:
        sock.close()


def test_a_party_that_stops_mid_frame_is_dropped(make_server, caplog):
    caplog.set_level(logging.WARNING, logger="rpc.transport")
    server = make_server(frame_timeout=0.5)
    sock = authenticated(server)
    try:
        sock.sendall(HEADER.pack(1000, 0) + b"0123456789")  # 10 of 1000 bytes, then silence
        t0 = time.monotonic()
        assert closed_within(sock, 3.0), "a stalled frame held the connection"
        assert time.monotonic() - t0 >= 0.4
    finally:
        sock.close()
    assert any("stopped" in r.getMessage() for r in caplog.records if r.name == "rpc.transport"), caplog.text


def test_a_slow_but_steady_frame_within_the_timeout_is_served(make_server):
    """The timeout bounds a frame, not the gaps a legitimate sender leaves between frames."""
    inbox = Inbox()
    server = make_server(inbox, frame_timeout=1.0)
    with open_peer_channel(server.address, SECRET, ident="n2") as conn:
        time.sleep(1.5)  # idle between frames: fine
        conn.call([b"after a pause"])
    assert inbox.wait_count(1) and inbox.payloads() == [b"after a pause"]


def test_a_frame_over_the_limit_is_refused_and_one_at_the_limit_served(make_server):
    inbox = Inbox()
    server = make_server(inbox, max_peer_frame=64 * 1024)
    with open_peer_channel(server.address, SECRET, ident="n2") as conn:
        conn.call([b"y" * 60_000])
        with pytest.raises(EOFError):
            conn.call([b"z" * 70_000])
    assert inbox.wait_count(1) and [len(p) for p in inbox.payloads()] == [60_000]


def test_the_listener_holds_at_most_max_connections(make_server, caplog):
    caplog.set_level(logging.WARNING, logger="rpc.transport")
    server = make_server(max_connections=3)
    held = [socket.create_connection(server.address, timeout=2.0) for _ in range(3)]
    try:
        time.sleep(0.2)
        extra = socket.create_connection(server.address, timeout=2.0)
        try:
            assert closed_within(extra, 1.0), "a connection over the cap was kept"
        finally:
            extra.close()
        assert any("connection limit" in r.getMessage() for r in caplog.records), caplog.text
        held.pop().close()
        assert wait_until(lambda: _serves(server), timeout=3.0)
    finally:
        for s in held:
            s.close()


def _serves(server) -> bool:
    try:
        with open_peer_channel(server.address, SECRET, ident="n2", handshake_timeout=0.5) as conn:
            conn.call([b"ping"])
        return True
    except Exception:  # noqa: BLE001 - not yet
        return False

"""RPyC decodes a request's arguments (brine.load) before any method sees them, and
brine builds up to ~118 bytes of objects per byte (a tuple of empty frozensets: 4 MiB,
the client frame limit, took 470 MB). That decoding takes the process's decode
budget too, so connections decoding at once stay within it."""
from __future__ import annotations

import socket
import threading
import time
import tracemalloc

import pytest
import rpyc
from rpyc.core.stream import SocketStream

import rpc.peer_server as peer_server
from rpc.transport import BoundedChannel
from rpc.decode_budget import DecodeBudget


class _Echo(rpyc.Service):
    def exposed_echo(self, value):
        return len(value)


def _pair(monkeypatch, budget):
    monkeypatch.setattr(peer_server, "BUDGET", budget, raising=False)
    a, b = socket.socketpair()
    server_channel = BoundedChannel(SocketStream(a), 4 << 20)  # frames of 64 KiB or more come as views
    server = peer_server._PlainConnection(_Echo(), server_channel, {"allow_public_attrs": False})
    serving = threading.Thread(target=lambda: _serve(server), daemon=True)
    serving.start()
    client = rpyc.Connection(rpyc.VoidService(), BoundedChannel(SocketStream(b), 4 << 20), {})  # as clients frame
    return server, client


def _serve(conn):
    try:
        conn.serve_all()
    except Exception:  # noqa: BLE001 - closed at the end of the test
        pass


def _peak_until_closed(server, client, frame: bytes) -> int:
    """Send ``frame`` as it is; the process's peak of traced memory until the node's
    side closes (10 s at most)."""
    tracemalloc.start()
    try:
        client._channel.send(frame)
        deadline = time.monotonic() + 10
        while not server.closed and time.monotonic() < deadline:
            time.sleep(0.01)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_request_decodes_within_the_process_budget(monkeypatch):
    budget = DecodeBudget(1 << 20)
    server, client = _pair(monkeypatch, budget)
    try:
        echo = rpyc.async_(client.root.echo)  # (looking it up is a request too)
        assert client.root.echo(b"x" * 1000) == 1000  # a call still goes through
        assert client.root.echo(b"x" * 200_000) == 200_000  # a large frame, read as a view
        assert budget.used == 0
        held = budget.take(1 << 20)  # the budget is full: the next request waits to decode
        result = echo((frozenset(),) * 1000)
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            client.poll_all(0.05)
        assert not result.ready, "a request decoded while the decode budget was full"
        budget.give(held)
        result.wait()
        assert result.value == 1000 and budget.used == 0
    finally:
        client.close()
        server.close()


def test_a_request_of_countless_small_objects_is_refused_before_it_is_decoded(monkeypatch):
    """1 MiB of empty frozensets (2 bytes each in brine, 216 decoded) decoded to 114 MiB
    on the node before the call was refused; the node now reads the request's shape
    first and ends the connection as malformed, having built none of them."""
    from rpyc.core import brine, consts

    server, client = _pair(monkeypatch, DecodeBudget(8 << 20))
    try:
        assert client.root.echo(b"x" * (1 << 20)) == 1 << 20  # a large request of bytes is served
        # the frame built beforehand: brine.dump itself takes 89 MiB for it in this process
        frame = brine.I1.pack(consts.MSG_REQUEST) + brine.dump((99, (consts.HANDLE_PING, (frozenset(),) * (512 << 10))))
        assert len(frame) > 1 << 20
        peak = _peak_until_closed(server, client, frame)
        assert peak < 8 << 20, f"the request took {peak / 2**20:.0f} MiB"
        assert server.closed, "the connection stayed open after a request of half a million objects"
    finally:
        client._channel.close()  # the node closed its side
        server.close()


def test_a_reply_or_exception_from_a_client_is_not_decoded_unchecked(monkeypatch):
    """The node never asks a client anything that needs a long answer (no netrefs: the
    only request it sends a client is the close), yet RPyC decodes whatever reply or
    exception message a client sends with brine.load too: a 1 MiB "reply" of empty
    frozensets decoded to 114 MiB on the node, as a request did before its shape was
    read. Every frame over 8,192 bytes has its shape read, whatever its type."""
    from rpyc.core import brine, consts

    for msg in (consts.MSG_REPLY, consts.MSG_EXCEPTION):
        server, client = _pair(monkeypatch, DecodeBudget(8 << 20))
        try:
            frame = brine.I1.pack(msg) + brine.dump((99, (frozenset(),) * (512 << 10)))
            peak = _peak_until_closed(server, client, frame)
            assert peak < 8 << 20, f"message type {msg} took {peak / 2**20:.0f} MiB"
            assert server.closed, f"the connection stayed open after a message of type {msg} of half a million objects"
        finally:
            client._channel.close()
            server.close()


def test_keyword_names_that_are_not_strings_are_refused_before_they_are_hashed(monkeypatch):
    """RPyC builds dict(kwargs) from the client's pairs before the call itself refuses a
    name that is not a str; ints of one hash (k*(2**61-1)+c) then compare with every key
    before them in one C call: 2,700 of 1,500 digits stalled the process for 0.5 s."""
    hashed = []

    class _Key:
        def __hash__(self):
            hashed.append(self)
            return 1

    server, client = _pair(monkeypatch, DecodeBudget(8 << 20))
    try:
        called = []
        with pytest.raises(TypeError, match="str names"):
            server._handle_call(lambda **kw: called.append(kw), (), ((_Key(), None), (_Key(), None)))
        assert not hashed and not called
        server._handle_call(lambda **kw: called.append(kw), (), (("a", 1),))
        assert called == [{"a": 1}]
        assert client.root.echo(value=b"xy") == 2  # a call with keywords over the wire
    finally:
        client.close()
        server.close()


@pytest.mark.parametrize("kwargs", ["a=1", (("a",),), (("a", 1, 2),), ((1, 2),), (((1,), 2),), ((b"a", 1),), 7])
def test_malformed_keyword_arguments_over_the_wire_are_refused_and_the_connection_serves_on(monkeypatch, kwargs):
    """Keyword arguments as a client really sends them (RPyC's HANDLE_CALL request):
    anything but (str, value) pairs is the caller's TypeError, and its next call on the
    same connection is answered."""
    from rpyc.core import consts

    server, client = _pair(monkeypatch, DecodeBudget(8 << 20))
    try:
        echo = client.root.echo
        with pytest.raises(TypeError, match="str names"):
            client.sync_request(consts.HANDLE_CALL, echo, (b"xy",), kwargs)
        assert echo(b"xyz") == 3
    finally:
        client.close()
        server.close()

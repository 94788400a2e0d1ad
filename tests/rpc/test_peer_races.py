"""The sending side of a peer connection against answers that come early, late or not
at all, and connections that die at once (an attacker's review of the batch protocol
found each of these; every test failed on the code before its fix)."""
from __future__ import annotations

import socket
import struct
import threading
import time

from rpc.auth import ServerAuthenticator
from rpc.frame_mac import ACCEPTOR, MacChannel, mac_channel
from rpc.wire import decode_batch, encode_batch

from .conftest import HOST, KEYS, SECRET, wait_until

HEADER = struct.Struct("!LB")


def _listener() -> socket.socket:
    ls = socket.socket()
    ls.bind((HOST, 0))
    ls.listen(64)
    return ls


def _authenticate(ls: socket.socket, max_frame: int = 1 << 20) -> MacChannel | None:
    """The accepting side's channel of the next connection (frames MACed as a node's)."""
    try:
        sock, _ = ls.accept()
    except OSError:
        return None
    try:
        sock, identity = ServerAuthenticator({"peer": SECRET}, timeout=2)(sock)
    except Exception:  # noqa: BLE001 - a handshake cut short: next
        return None
    return mac_channel(sock, identity.frame_keys, ACCEPTOR, max_frame, "test")


def test_a_connection_that_dies_right_after_the_handshake_is_dialled_again(make_transport):
    """A peer that closes as soon as it has authenticated (a node shutting down, a reset):
    the reader saw the end before the sender had marked the link open, so the link was
    left "connected" with no connection, for good: nothing sent, status saying up."""
    ls = _listener()
    serving = threading.Event()  # set: answer batches; clear: close after the handshake
    answering = threading.Event()  # a connection is being answered
    got: list[bytes] = []

    def serve() -> None:
        while True:
            chan = _authenticate(ls)
            if chan is None:
                if ls.fileno() < 0:
                    return
                continue
            if not serving.is_set():
                chan.stream.close()
                continue
            answering.set()
            try:
                while chan.poll(5.0):
                    got.extend(decode_batch(chan.recv()))
                    chan.send(encode_batch([]))
            except EOFError:
                pass

    threading.Thread(target=serve, daemon=True).start()
    t = make_transport("a", {"x": ls.getsockname()}, backoff_min=0.001, backoff_max=0.005)
    try:
        time.sleep(1.0)  # hundreds of connections, each closed at once
        serving.set()
        # A connection authenticated just before the set is still closed, and what was
        # sent on it is lost (Raft resends): send once one is answered, which the link
        # then has (the server closed every other one before taking it).
        assert answering.wait(5), t.peer_status()["x"]
        for i in range(5):
            t.send("x", b"m%d" % i)
        assert wait_until(lambda: len(got) == 5, timeout=3.0), t.peer_status()["x"]
        assert got == [b"m%d" % i for i in range(5)]
    finally:
        ls.close()


def test_a_slow_on_reply_does_not_make_an_answered_peer_look_hung(make_server, make_transport):
    """on_reply is the node stepping the answer (a follower may fsync there): while it
    runs, the batch it answers is answered, not overdue."""
    srv = make_server(None, on_batch=lambda src, frames: [b"ack"])
    t = make_transport("a", {"x": srv.address}, request_timeout=1.0)
    t.on_reply = lambda peer, frames: time.sleep(2.0)
    assert wait_until(lambda: t.peer_status()["x"]["connected"])
    t.send("x", b"append")
    time.sleep(2.5)
    st = t.peer_status()["x"]
    assert (st["delivered"], st["failed"], st["reconnects"], st["last_error"]) == (1, 0, 0, None), st


def test_an_answer_before_the_batch_is_written_lets_nothing_write_alongside(make_transport):
    """A peer that answers a batch before reading it: the link took the batch for
    delivered while its writer was still writing, and the next message was written by
    the caller's thread at the same time, into the middle of the first (a corrupt frame,
    and a caller blocked on a full socket)."""
    ls = _listener()
    big = b"B" * 3_000_000
    answered, drained = threading.Event(), threading.Event()
    frames: list = []

    def serve() -> None:
        chan = _authenticate(ls, 8 << 20)
        chan.stream.sock.recv(1, socket.MSG_PEEK)  # the big batch is being written
        time.sleep(0.1)
        chan.send(encode_batch([]))  # answered, unread
        answered.set()
        time.sleep(0.5)  # the small message is sent meanwhile
        try:
            while chan.poll(1.5):
                frames.append(decode_batch(chan.recv()))
                if len(frames) > 1:  # the first was answered already
                    chan.send(encode_batch([]))
        except Exception as exc:  # noqa: BLE001 - reported through frames
            frames.append(exc)
        drained.set()

    threading.Thread(target=serve, daemon=True).start()
    t = make_transport("a", {"x": ls.getsockname()}, request_timeout=3.0)
    try:
        assert wait_until(lambda: t.peer_status()["x"]["connected"])
        t.send("x", big)
        assert answered.wait(3.0)
        time.sleep(0.1)
        assert t.peer_status()["x"]["delivered"] == 0  # still being written
        t0 = time.monotonic()
        t.send("x", b"small")
        assert time.monotonic() - t0 < 0.05, "send() wrote on the caller's thread into a full socket"
        assert drained.wait(6.0)
        assert frames == [[big], [b"small"]], [f if isinstance(f, Exception) else [len(x) for x in f]
                                               for f in frames]
        assert wait_until(lambda: t.peer_status()["x"]["delivered"] == 2)
    finally:
        ls.close()


def test_a_bug_in_the_reader_is_said_loudly_and_the_peer_dialled_again(make_server, make_transport, monkeypatch,
                                                                       caplog):
    """The reader took any exception for a lost connection ("connection lost: ..."),
    so a bug in the link looked like a network fault, with no traceback."""
    from replication.runtime.peer_link import PeerLink

    got: list[bytes] = []
    srv = make_server(None, on_batch=lambda src, frames: got.extend(frames) or [])
    t = make_transport("a", {"x": srv.address})
    assert wait_until(lambda: t.peer_status()["x"]["connected"])
    real, calls = PeerLink.replied, []

    def fails_once(self, *args):
        if not calls:
            calls.append(1)
            raise RuntimeError("a bug in the link")
        return real(self, *args)

    monkeypatch.setattr(PeerLink, "replied", fails_once)
    t.send("x", b"one")
    assert wait_until(lambda: "reader thread for peer x: unexpected error" in caplog.text), caplog.text
    assert "a bug in the link" in caplog.text
    t.send("x", b"two")
    assert wait_until(lambda: b"two" in got, timeout=5.0), t.peer_status()["x"]


def test_a_connection_gone_before_it_is_served_ends_quietly(caplog):
    """A client that resets its connection right after connecting or authenticating (a
    status call that gave up on a lossy link): the server's connection thread asked the
    socket for its peer, got 'OSError: [Errno 107] Transport endpoint is not connected'
    and died with a traceback in the node's log, twice (RPyC's and the thread's)."""
    import logging

    from rpc.auth import Identity
    from rpc.peer_server import PeerServer

    server = PeerServer(HOST, 0, KEYS, lambda src, m: None)
    try:
        inner = server._server
        with caplog.at_level(logging.INFO):
            for serve in (inner._run, lambda s: inner._serve_client(s, Identity("client", "ui"))):
                with inner._conns_lock:
                    inner._open += 1  # as the accept counted it
                serve(socket.socket())  # never connected: its peer is unknown, as after a reset
        assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
        assert sum("ended before it was served" in r.getMessage() for r in caplog.records) == 2
    finally:
        server.close()

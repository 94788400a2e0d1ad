"""What both sides of a connection share: sockets, bounded frames, connecting.

A node listens with :class:`rpc.peer_server.PeerServer` (an RPyC ``ThreadedServer``
behind :class:`rpc.auth.ServerAuthenticator`). A connection authenticated with the peer
key speaks :class:`PeerChannel`: batches of opaque byte messages, each answered by a
batch. A client or admin connection speaks RPyC (:func:`open_connection`) to whatever
service ``service_extra`` builds for it.

A node sends with :class:`rpc.peer_sender.PeerTransport`: ``send(to, payload)`` only
appends to a bounded per-peer queue and returns; one sender thread per peer writes the
queue as batches, several unanswered at once, detects a dead or hung connection and
reconnects with jittered exponential backoff. See ``docs/transport.md`` for the numbers.
"""
from __future__ import annotations

import errno
import logging
import select
import socket
import ssl
import sys
import time
from typing import Any

import msgpack
import rpyc
from rpyc.core import consts
from rpyc.core.channel import Channel
from rpyc.core.stream import SocketStream
from rpyc.lib import Timeout
from rpyc.utils.factory import connect_channel

from prevalence.errors import PrevalenceError

from .auth import ConnectFailed, client_handshake, format_address
from .wire import decode_batch, encode_batch

__all__ = [
    "TransportError",
    "open_connection",
    "open_peer_channel",
    "connect_authenticated",
    "PeerChannel",
    "hard_close",
    "NodeLink",
    "remote_method",
    "tune_socket",
    "SAFE_PROTOCOL_CONFIG",
    "BoundedChannel",
    "FrameRefused",
    "PEER_MAX_FRAME",
    "CLIENT_MAX_FRAME",
    "MAX_REQUEST",
    "REPLY_MAX_FRAME",
    "FRAME_TIMEOUT",
    "MAX_CONNECTIONS",
]

log = logging.getLogger("rpc.transport")

#: RPyC protocol settings for every connection we make or accept (see docs/transport.md).
SAFE_PROTOCOL_CONFIG = dict(
    allow_pickle=False,
    allow_public_attrs=False,
    allow_all_attrs=False,
    allow_setattr=False,
    allow_delattr=False,
    include_local_traceback=False,
    include_local_version=False,
    import_custom_exceptions=False,
    instantiate_custom_exceptions=False,
    instantiate_oldstyle_exceptions=False,
    propagate_SystemExit_locally=False,
    bind_threads=False,
)


#: A server-side socket write that makes no progress for this long drops the connection.
SERVER_WRITE_TIMEOUT = 10.0

# Frame limits (bytes of one RPyC frame, checked against the announced length before
# the body is read; see docs/transport.md for how they are sized).
#: What a node reads from a peer: a deliver batch is at most max(1 MiB, one Raft
#: message), a message at most an Append (max_size_per_msg, 16 KiB, + one entry of at most
#: NodeOptions.max_entry_bytes, 8 MiB) or a snapshot chunk (64 KiB).
PEER_MAX_FRAME = 16 << 20
#: Bytes of data one client request carries at most (a command, a batch's commands, a
#: query); a node answers a larger one with a one-line error, and the client refuses to
#: send one (past CLIENT_MAX_FRAME a node could only drop the connection).
MAX_REQUEST = 1 << 20
#: What a node reads from a client: a request of at most MAX_REQUEST plus RPyC's framing.
CLIENT_MAX_FRAME = 4 << 20
#: What a client reads from a node: a reply (a query's result, a page of the log, a
#: backup: a whole snapshot, which followers accept up to RaftConfig.max_snapshot_bytes).
REPLY_MAX_FRAME = 1 << 30
#: Once the first byte of a frame has arrived, the whole frame must arrive within this.
FRAME_TIMEOUT = 10.0
#: Connections one listener holds at once (authenticated or not); more are closed at once.
MAX_CONNECTIONS = 128


class TransportError(PrevalenceError):
    """The transport was misused or could not start (e.g. the port is taken)."""


# ---------------------------------------------------------------- sockets and streams


def tune_socket(sock: socket.socket) -> None:
    """TCP_NODELAY and keepalive (idle 10 s, probes every 3 s), best effort on every OS."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if sys.platform == "win32" and hasattr(socket, "SIO_KEEPALIVE_VALS"):
            sock.ioctl(socket.SIO_KEEPALIVE_VALS, (1, 10_000, 3_000))
        else:
            for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPALIVE", 10),
                                ("TCP_KEEPINTVL", 3), ("TCP_KEEPCNT", 3)):
                opt = getattr(socket, name, None)
                if opt is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, opt, value)
    except (OSError, ValueError):
        pass


class _Stream(SocketStream):
    """SocketStream whose poll() also sees data already decrypted inside an SSL socket,
    and waits on one ``select.poll`` object kept for the stream where the OS has one.

    RPyC's poll builds and registers a new poll object at every call: about 9 µs, paid
    before each frame a connection reads (several per replicated call on a leader),
    against 1 µs for a kept one. Windows has no ``select.poll``: RPyC's own then."""

    __slots__ = ("_poller",)

    def __init__(self, sock):
        super().__init__(sock)
        self._poller = None

    def poll(self, timeout):
        sock = self.sock  # a closed stream's raises EOFError here, as RPyC's poll does
        pending = getattr(sock, "pending", None)
        if pending is not None:
            try:
                if pending():
                    return True
            except (OSError, ValueError):
                pass
        if _POLL is None:
            return super().poll(timeout)
        poller = self._poller
        if poller is None:
            poller = self._poller = _POLL()
            poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
        if isinstance(timeout, Timeout):  # what RPyC's serve() passes
            timeout = timeout.timeleft()
        # any event counts: a hang-up or an error is for recv() to report
        return bool(poller.poll(None if timeout is None else max(0.0, timeout) * 1000.0))


_POLL = getattr(select, "poll", None)
_RETRY_ERRNOS = (errno.EAGAIN, errno.EWOULDBLOCK)
_LARGE = 1 << 16  # frames from this size on are read in place


class FrameRefused(EOFError):
    """A frame from the other side was refused (too large, compressed, stalled); the
    connection is closed. An EOFError, so that RPyC ends the connection quietly."""


class BoundedChannel(Channel):
    """RPyC's channel with its input bounded.

    RPyC reads whatever length a frame header announces (up to 4 GiB) and inflates a
    frame whenever the *sender* sets the compression flag. Here the header is checked
    before anything else is read: a frame longer than ``max_frame`` or flagged as
    compressed is refused, and so is one that does not arrive whole within
    ``frame_timeout`` seconds of its first byte. Refusing closes the stream (the
    framing cannot be resynchronised) and logs one line naming ``where``. What we send
    is never compressed.

    It also reads ahead: one recv() usually brings a small frame's header and body
    (RPyC makes two), and frames of 64 KiB or more are read into one buffer, handed to
    RPyC as a view instead of the three copies RPyC's own reading makes.
    """

    __slots__ = ("max_frame", "frame_timeout", "where", "_buf")

    def __init__(self, stream, max_frame: int, frame_timeout: float = FRAME_TIMEOUT, where: str = "?"):
        super().__init__(stream, compress=False)
        self.max_frame = int(max_frame)
        self.frame_timeout = float(frame_timeout)
        self.where = where
        self._buf = bytearray()  # read ahead, not yet handed to RPyC

    def poll(self, timeout) -> bool:
        return bool(self._buf) or self.stream.poll(timeout)

    def recv(self):
        deadline = time.monotonic() + self.frame_timeout
        buf = self._buf
        header = self.FRAME_HEADER.size
        if len(buf) < header:
            # RPyC polls before it calls recv: with nothing read ahead, data is there
            self._fill(header, deadline, polled=not buf)
        length, compressed = self.FRAME_HEADER.unpack_from(buf)
        if compressed:
            self._refuse(f"compressed frame ({length} bytes) refused: compression from the other side is not accepted")
        if length > self.max_frame:
            self._refuse(f"frame of {length} bytes announced, limit {self.max_frame}")
        end = header + length + len(self.FLUSHER)
        if length < _LARGE or len(buf) >= end:
            self._fill(end, deadline, polled=False)
            with memoryview(buf) as view:
                data = bytes(view[header:header + length])
            del buf[:end]
            return data
        # a large frame: into one buffer of its own, past what was read ahead
        out = bytearray(length + len(self.FLUSHER))
        have = len(buf) - header
        out[:have] = buf[header:]
        buf.clear()
        self._read_into(memoryview(out)[have:], deadline)
        return memoryview(out)[:length]

    def _fill(self, count: int, deadline: float, polled: bool) -> None:
        """Read ahead until ``count`` bytes are buffered, before ``deadline``. The socket
        keeps its own timeout (it bounds writes from other threads); each wait for data
        is bounded here by poll."""
        buf, stream = self._buf, self.stream
        while len(buf) < count:
            if not polled:
                self._wait(deadline)
            polled = False
            try:
                chunk = stream.sock.recv(stream.MAX_IO_CHUNK)
            except (socket.timeout, ssl.SSLWantReadError):
                continue
            except OSError as exc:
                self._read_failed(exc)
                continue
            if not chunk:
                self._read_failed(None)
            buf += chunk

    def _read_into(self, view: memoryview, deadline: float) -> None:
        stream = self.stream
        got, count = 0, len(view)
        while got < count:
            self._wait(deadline)
            try:
                n = stream.sock.recv_into(view[got:], min(stream.MAX_IO_CHUNK, count - got))
            except (socket.timeout, ssl.SSLWantReadError):
                continue
            except OSError as exc:
                self._read_failed(exc)
                continue
            if not n:
                self._read_failed(None)
            got += n

    def _wait(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0 or not self.stream.poll(left):
            self._refuse(f"the other side stopped sending mid-frame for {self.frame_timeout:g} s")

    def _read_failed(self, exc: OSError | None) -> None:
        """Return to retry (EAGAIN); else close and raise EOFError, as RPyC's stream does."""
        if exc is not None and exc.errno in _RETRY_ERRNOS:
            return
        self.stream.close()
        raise EOFError(exc if exc is not None else "connection closed by peer")

    def _refuse(self, reason: str) -> None:
        log.warning("connection with %s closed: %s", self.where, reason)
        self.stream.close()
        raise FrameRefused(f"{self.where}: {reason}")


def _channel(sock: socket.socket, max_frame: int, where: str, frame_timeout: float | None = None) -> BoundedChannel:
    # compress=False: no zlib on what we send, whatever the size (frames are small or
    # already compact msgpack; zlib costs more CPU than a gigabit LAN saves).
    return BoundedChannel(_Stream(sock), max_frame, FRAME_TIMEOUT if frame_timeout is None else frame_timeout,
                          where)


def connect_authenticated(
    address: tuple[str, int],
    secret: bytes,
    *,
    role: str,
    ident: str,
    connect_timeout: float = 0.5,
    handshake_timeout: float = 2.0,
    write_timeout: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> socket.socket:
    """Connect and authenticate as ``(role, ident)``; return the socket, its writes
    bounded by ``write_timeout`` (a write to a party that stopped reading fails then
    instead of blocking for ever). Raises :class:`ConnectFailed` or
    :class:`AuthenticationFailed`, both naming the address."""
    where = format_address(address)
    try:
        sock = socket.create_connection(tuple(address), timeout=connect_timeout)
    except socket.timeout:
        raise ConnectFailed(f"{where}: connect timed out after {connect_timeout:g} s", address=where) from None
    except OSError as exc:
        raise ConnectFailed(f"{where}: cannot connect: {exc.strerror or exc}", address=where,
                            refused=isinstance(exc, ConnectionRefusedError)) from None
    try:
        tune_socket(sock)
        sock = client_handshake(sock, secret, role, ident, address=where, timeout=handshake_timeout,
                                ssl_context=ssl_context, server_hostname=server_hostname)
        sock.settimeout(write_timeout)
        return sock
    except BaseException:
        try:
            sock.close()
        except OSError:
            pass
        raise


def open_connection(
    address: tuple[str, int],
    secret: bytes,
    *,
    role: str,
    ident: str,
    connect_timeout: float = 0.5,
    handshake_timeout: float = 2.0,
    request_timeout: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    service=rpyc.VoidService,
    max_frame: int | None = None,
) -> rpyc.Connection:
    """Connect, authenticate as ``(role, ident)`` and start RPyC over the socket (a
    client or an admin program; nodes speak :class:`PeerChannel` to each other).

    ``connect_timeout`` bounds the TCP connect (one attempt, no retries),
    ``handshake_timeout`` the authentication, ``request_timeout`` every later socket
    write and RPyC's synchronous requests. ``max_frame`` bounds what the node may send
    back (default: :data:`REPLY_MAX_FRAME`); compressed frames are refused. Raises
    :class:`ConnectFailed` or :class:`AuthenticationFailed`, both naming the address.
    """
    if role == "peer":
        raise TransportError("nodes speak to each other through PeerChannel, not RPyC")
    sock = connect_authenticated(address, secret, role=role, ident=ident, connect_timeout=connect_timeout,
                                 handshake_timeout=handshake_timeout, write_timeout=request_timeout,
                                 ssl_context=ssl_context, server_hostname=server_hostname)
    try:
        config = dict(SAFE_PROTOCOL_CONFIG, sync_request_timeout=request_timeout,
                      endpoints=(sock.getsockname(), sock.getpeername()))
        channel = _channel(sock, REPLY_MAX_FRAME if max_frame is None else max_frame, format_address(address))
        return connect_channel(channel, service=service, config=config)
    except BaseException:
        try:
            sock.close()
        except OSError:
            pass
        raise


class PeerChannel:
    """One authenticated connection between two nodes: batches each way, no RPyC.

    After the handshake (protocol :data:`rpc.wire.PEER_PROTOCOL_VERSION`) the dialling
    node sends batches (:func:`rpc.wire.encode_batch`, each one frame of a
    :class:`BoundedChannel`) and the accepting node answers every batch, in order, with
    one batch of its replies (often empty). Each side bounds what it reads exactly as
    for RPyC: the frame's size, no compression, the whole frame within its timeout.

    RPyC cost each batch a request and a reply through its dispatch (brine, sequence
    numbers, locks, a result object, a callback): at two batches and two replies per
    replicated call, about a fifth of a leader's CPU. Here a batch is a header and the
    bytes. Writes are not locked: the sender hands out one batch at a time.
    """

    __slots__ = ("channel", "where")

    def __init__(self, channel: BoundedChannel):
        self.channel = channel
        self.where = channel.where

    def send(self, frames: "list[bytes]") -> None:
        """Write one batch (raises EOFError once the connection is gone)."""
        self.channel.send(encode_batch(frames))

    def poll(self, timeout: float) -> bool:
        """True once a frame's first byte is there (or the connection ended: recv says)."""
        return self.channel.poll(timeout)

    def recv(self) -> "list[bytes]":
        """One batch, after poll() said so; EOFError if the connection ended,
        :class:`rpc.wire.BatchError` if the bytes are not a batch."""
        return decode_batch(self.channel.recv())

    def call(self, frames: "list[bytes]", timeout: float = 5.0) -> "list[bytes]":
        """Send a batch and wait for its reply (tools and tests; nodes pipeline)."""
        self.send(frames)
        if not self.poll(timeout):
            self.close()
            raise EOFError(f"{self.where}: no reply within {timeout:g} s")
        return self.recv()

    def close(self) -> None:
        """Shut the socket (wakes a thread blocked on it) and close it."""
        try:
            self.channel.stream.close()
        except Exception:  # noqa: BLE001 - already closed
            pass

    def __enter__(self) -> "PeerChannel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_peer_channel(
    address: tuple[str, int],
    secret: bytes,
    *,
    ident: str,
    connect_timeout: float = 0.5,
    handshake_timeout: float = 2.0,
    write_timeout: float = 1.0,
    ssl_context: ssl.SSLContext | None = None,
    max_frame: int = PEER_MAX_FRAME,
    frame_timeout: float = FRAME_TIMEOUT,
) -> PeerChannel:
    """Connect to a node as node ``ident`` and authenticate with the peer key."""
    sock = connect_authenticated(address, secret, role="peer", ident=ident, connect_timeout=connect_timeout,
                                 handshake_timeout=handshake_timeout, write_timeout=write_timeout,
                                 ssl_context=ssl_context)
    return PeerChannel(_channel(sock, max_frame, format_address(address), frame_timeout))


def hard_close(conn: rpyc.Connection) -> None:
    """Close a connection without the polite close request (which would wait on a hung peer)."""
    try:
        conn._channel.stream.close()  # shutdown + close: wakes threads blocked on the socket
    except Exception:
        pass
    try:
        conn.close()  # now fails fast on the closed stream and just cleans up
    except Exception:
        pass


def remote_method(conn: rpyc.Connection, name: str) -> Any:
    """``conn.root.<name>``, looked up once per connection.

    Each attribute of a netref is a remote ``getattr``, a round trip of its own: a call
    written ``conn.root.execute(...)`` costs two round trips, this one.
    """
    cache = conn.__dict__.setdefault("_prevalence_methods", {})
    method = cache.get(name)
    if method is None:
        method = cache[name] = getattr(conn.root, name)
    return method


def call_within(conn: rpyc.Connection, name: str, args: tuple, timeout: float) -> Any:
    """``remote_method(conn, name)(*args)``, its reply waited for at most ``timeout`` s
    (AsyncResultTimeout, a TimeoutError, after that). A plain call waits the
    connection's ``sync_request_timeout``, fixed when it was opened: a call with 0.3 s
    left before its caller's deadline waited 1.5 s for a hung node."""
    return conn.async_request(consts.HANDLE_CALL, remote_method(conn, name), args, (), timeout=timeout).value


class NodeLink:
    """A client connection to one particular node (not to whichever leads: that is
    ``rpc.client``), opened on the first call, kept open between calls, and opened
    again on the next call after a failure.

    ``call`` returns the node's decoded reply (``["ok", ...]`` or a refusal) and
    raises what the connection raised (:class:`ConnectFailed` says whether it was
    refused) after closing it. ``secret`` is the client key, or the admin key with
    ``role="admin"``.
    """

    def __init__(self, address: tuple[str, int], secret: bytes, *, ident: str = "client", timeout: float = 1.0,
                 connect_timeout: float | None = None, ssl_context: ssl.SSLContext | None = None,
                 role: str = "client"):
        self.address = address
        self._secret, self._ident, self._timeout, self._ssl = secret, ident, timeout, ssl_context
        self._role = role
        self._connect_timeout = min(0.5, timeout) if connect_timeout is None else connect_timeout
        self._conn: rpyc.Connection | None = None

    def call(self, method: str, *args: Any) -> list:
        try:
            if self._conn is None:
                self._conn = open_connection(self.address, self._secret, role=self._role, ident=self._ident,
                                             connect_timeout=self._connect_timeout, handshake_timeout=self._timeout,
                                             request_timeout=self._timeout, ssl_context=self._ssl)
            return msgpack.unpackb(remote_method(self._conn, method)(*args), raw=False)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            hard_close(self._conn)
            self._conn = None

    def __enter__(self) -> "NodeLink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


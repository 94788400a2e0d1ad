"""What both sides of a connection share: sockets, connecting, the peer channel.

A node listens with :class:`rpc.peer_server.PeerServer` (an RPyC ``ThreadedServer``
behind :class:`rpc.auth.ServerAuthenticator`). A connection authenticated with the peer
key speaks :class:`PeerChannel`: batches of opaque byte messages, each answered by a
batch. A client or admin connection speaks RPyC (:func:`open_connection`) to whatever
service ``service_extra`` builds for it.

A node sends with :class:`rpc.peer_sender.PeerTransport`: ``send(to, payload)`` only
appends to a bounded per-peer queue and returns; one sender thread per peer writes the
queue as batches, several unanswered at once, detects a dead or hung connection and
reconnects with jittered exponential backoff. See ``docs/transport.md`` for the numbers.

Every connection is read through :class:`rpc.channel.BoundedChannel`, with the frame
limits :mod:`rpc.channel` defines; both are re-exported here.
"""
from __future__ import annotations

import socket
import ssl
import sys
import time
from typing import Any

import rpyc
from rpyc.core import consts
from rpyc.utils.factory import connect_channel

from prevalence.codec import unpack_reply
from prevalence.errors import PrevalenceError

from .auth import ConnectFailed, format_address, peer_handshake
from .channel import __all__ as _CHANNEL_NAMES
from .channel import (  # noqa: F401 - the bounded channel and its limits, re-exported: imported from here
    CLIENT_MAX_FRAME, FRAME_TIMEOUT, MAX_REQUEST, PEER_MAX_FRAME, REPLY_MAX_FRAME, BoundedChannel, FrameRefused,
    _channel,
)
from .frame_mac import DIALLER, FrameKeys, mac_channel
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
    "MAX_CONNECTIONS",
    "STATUS_MAX_FRAME",
    *_CHANNEL_NAMES,
]

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

#: What a node's ``status`` reply may take (a few KiB in practice): asked of every node at
#: once, by the CLI and the window, it must not be allowed REPLY_MAX_FRAME each.
STATUS_MAX_FRAME = 1 << 20

#: Connections one listener holds at once (authenticated or not); more are closed at once.
MAX_CONNECTIONS = 128


class TransportError(PrevalenceError):
    """The transport was misused or could not start (e.g. the port is taken)."""


# ---------------------------------------------------------------- sockets


#: Data unacknowledged this long ends the connection (Linux's TCP_USER_TIMEOUT; Windows'
#: TCP_MAXRT, seconds). Keepalive probes only an idle connection: one whose reply went
#: unacknowledged (its client vanished behind a cut) was retransmitted for ~15 minutes,
#: holding a thread and one of the node's connections all that time.
UNACKED_TIMEOUT = 20


def tune_socket(sock: socket.socket) -> None:
    """TCP_NODELAY, keepalive (idle 10 s, probes every 3 s) and a bound on how long sent
    data may stay unacknowledged (UNACKED_TIMEOUT), best effort on every OS."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if sys.platform == "win32" and hasattr(socket, "SIO_KEEPALIVE_VALS"):
            sock.ioctl(socket.SIO_KEEPALIVE_VALS, (1, 10_000, 3_000))
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_MAXRT", 5), UNACKED_TIMEOUT)
        else:
            for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPALIVE", 10),
                                ("TCP_KEEPINTVL", 3), ("TCP_KEEPCNT", 3),
                                ("TCP_USER_TIMEOUT", UNACKED_TIMEOUT * 1000)):
                opt = getattr(socket, name, None)
                if opt is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, opt, value)
    except (OSError, ValueError):
        pass


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
    deadline: float | None = None,
    target: str | None = None,
    want: tuple[str, int] | None = None,
) -> socket.socket:
    """Connect and authenticate as ``(role, ident)``; return the socket, its writes
    bounded by ``write_timeout`` (a write to a party that stopped reading fails then
    instead of blocking for ever). With ``deadline`` (a ``time.monotonic()`` value) the
    handshake also ends by then, whatever the connect took. Raises :class:`ConnectFailed`
    or :class:`AuthenticationFailed`, both naming the address."""
    return _connect_authenticated(address, secret, role=role, ident=ident, connect_timeout=connect_timeout,
                                  handshake_timeout=handshake_timeout, write_timeout=write_timeout,
                                  ssl_context=ssl_context, server_hostname=server_hostname, deadline=deadline,
                                  target=target, want=want)[0]


def _connect_authenticated(address: tuple[str, int], secret: bytes, *, role: str, ident: str,
                           connect_timeout: float, handshake_timeout: float, write_timeout: float,
                           ssl_context: ssl.SSLContext | None, server_hostname: str | None = None,
                           deadline: float | None = None, target: str | None = None,
                           want: tuple[str, int] | None = None) -> tuple[socket.socket, FrameKeys | None]:
    """:func:`connect_authenticated`, with the frame keys of a peer connection."""
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
        if deadline is not None:
            handshake_timeout = max(0.001, min(handshake_timeout, deadline - time.monotonic()))
        sock, keys = peer_handshake(sock, secret, role, ident, address=where, timeout=handshake_timeout,
                                    ssl_context=ssl_context, server_hostname=server_hostname, target=target,
                                    want=want)
        sock.settimeout(write_timeout)
        return sock, keys
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
    deadline: float | None = None,
    frame_timeout: float | None = None,
    want: tuple[str, int] | None = None,
) -> rpyc.Connection:
    """Connect, authenticate as ``(role, ident)`` and start RPyC over the socket (a
    client or an admin program; nodes speak :class:`PeerChannel` to each other).

    ``connect_timeout`` bounds the TCP connect (one attempt, no retries),
    ``handshake_timeout`` the authentication, ``request_timeout`` every later socket
    write and RPyC's synchronous requests, the first the fetch of the node's root object
    (done here, so that :func:`call_within` bounds a method's lookup by its own timeout).
    With ``deadline`` (a ``time.monotonic()`` value) the handshake and that fetch also end
    by then, whatever the connect took. ``max_frame`` bounds what the node may send
    back (default: :data:`REPLY_MAX_FRAME`), ``frame_timeout`` how long a begun frame may
    take (default :data:`FRAME_TIMEOUT`); compressed frames are refused. Raises
    :class:`ConnectFailed` or :class:`AuthenticationFailed`, both naming the address.
    ``want``: the cluster id and epoch the program wants (``rpc.epochs``).
    """
    if role == "peer":
        raise TransportError("nodes speak to each other through PeerChannel, not RPyC")
    began = time.monotonic()
    sock = connect_authenticated(address, secret, role=role, ident=ident, connect_timeout=connect_timeout,
                                 handshake_timeout=handshake_timeout, write_timeout=request_timeout,
                                 ssl_context=ssl_context, server_hostname=server_hostname, deadline=deadline,
                                 want=want)
    try:
        # the root (its GETROOT and the INSPECT of its class) now, by the deadline: a
        # node that authenticates and then stalls held the first call, whatever time it
        # had left, for the whole request timeout
        authenticated = time.monotonic()
        left = request_timeout if deadline is None else max(0.001, min(request_timeout, deadline - authenticated))
        config = dict(SAFE_PROTOCOL_CONFIG, sync_request_timeout=left,
                      endpoints=(sock.getsockname(), sock.getpeername()))
        channel = _channel(sock, REPLY_MAX_FRAME if max_frame is None else max_frame, format_address(address),
                           frame_timeout)
        conn = connect_channel(channel, service=service, config=config)
        conn._unbox_exc = _ordinary_errors(conn._unbox_exc)
    except BaseException:
        try:
            sock.close()
        except OSError:
            pass
        raise
    try:
        conn.root
    except Exception as exc:  # noqa: BLE001 - timed out or lost: the open failed
        hard_close(conn)
        where = format_address(address)
        if not isinstance(exc, TimeoutError):
            raise ConnectFailed(f"{where}: no answer after the handshake ({type(exc).__name__})",
                                address=where) from None
        # how long each part took: a handshake that used up most of the time is a slow
        # link (or a node slow to answer at all), not a node that cannot be reached
        raise ConnectFailed(f"{where}: no answer within {time.monotonic() - began:.1f} s of connecting (connect and "
                            f"handshake took {authenticated - began:.1f} s of it, then {left:.1f} s without an answer: "
                            "a slow link or a stalled node)", address=where) from None
    except BaseException:
        hard_close(conn)
        raise
    conn._config["sync_request_timeout"] = request_timeout
    return conn


def _ordinary_errors(unbox: Any) -> Any:
    """RPyC's rebuilding of the other side's error reply, a KeyboardInterrupt, SystemExit
    or GeneratorExit made an ordinary error: raised as itself, it passed every ``except
    Exception`` of ours (a thread died of it, a command printed a traceback)."""
    def unbox_exc(raw: Any) -> Any:
        exc = unbox(raw)
        if isinstance(exc, BaseException) and not isinstance(exc, Exception):
            return TransportError(f"the other side answered with {type(exc).__name__}")
        return exc
    return unbox_exc


class PeerChannel:
    """One authenticated connection between two nodes: batches each way, no RPyC.

    After the handshake (protocol :data:`rpc.wire.PEER_PROTOCOL_VERSION`) the dialling
    node sends batches (:func:`rpc.wire.encode_batch`, each one frame of a
    :class:`BoundedChannel`) and the accepting node answers every batch, in order, with
    one batch of its replies (often empty). Each side bounds what it reads exactly as
    for RPyC: the frame's size, no compression, the whole frame within its timeout; and
    every frame ends with a MAC under keys drawn from the handshake
    (:class:`rpc.frame_mac.MacChannel`): a frame its other end did not send, as it sent
    it and in order, closes the connection unread.

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
    target: str | None = None,
) -> PeerChannel:
    """Connect to a node as node ``ident`` and authenticate with the peer key; ``target``
    is the id of the node meant (a node always names it: rpc.auth). Every frame either
    way carries a MAC under a key drawn from the handshake (rpc.frame_mac)."""
    sock, keys = _connect_authenticated(address, secret, role="peer", ident=ident, connect_timeout=connect_timeout,
                                        handshake_timeout=handshake_timeout, write_timeout=write_timeout,
                                        ssl_context=ssl_context, target=target)
    return PeerChannel(mac_channel(sock, keys, DIALLER, max_frame, format_address(address), frame_timeout))


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


def remote_method(conn: rpyc.Connection, name: str, timeout: float | None = None) -> Any:
    """``conn.root.<name>``, looked up once per connection (within ``timeout`` s when
    given, else the connection's ``sync_request_timeout``).

    Each attribute of a netref is a remote ``getattr``, a round trip of its own: a call
    written ``conn.root.execute(...)`` costs two round trips, this one.
    """
    cache = conn.__dict__.setdefault("_prevalence_methods", {})
    method = cache.get(name)
    if method is None:
        if timeout is None:
            method = getattr(conn.root, name)
        else:  # the same request as getattr's, with its own expiry
            method = conn.async_request(consts.HANDLE_GETATTR, conn.root, name, timeout=timeout).value
        cache[name] = method
    return method


def call_within(conn: rpyc.Connection, name: str, args: tuple, timeout: float) -> Any:
    """``remote_method(conn, name)(*args)``, its reply waited for at most ``timeout`` s
    (AsyncResultTimeout, a TimeoutError, after that). A plain call waits the
    connection's ``sync_request_timeout``, fixed when it was opened: a call with 0.3 s
    left before its caller's deadline waited 1.5 s for a hung node. The method's lookup,
    the first time on ``conn``, counts in ``timeout`` too."""
    deadline = time.monotonic() + timeout
    method = remote_method(conn, name, timeout)
    left = max(0.001, deadline - time.monotonic())
    return conn.async_request(consts.HANDLE_CALL, method, args, (), timeout=left).value


class NodeLink:
    """A client connection to one particular node (not to whichever leads: that is
    ``rpc.client``), opened on the first call, kept open between calls, and opened
    again on the next call after a failure.

    ``max_frame`` and ``frame_timeout`` bound a reply as in :func:`open_connection` (a
    status round passes :data:`STATUS_MAX_FRAME` and its own timeout). ``call`` returns the node's decoded reply (``["ok", ...]`` or a refusal) and
    raises what the connection raised (:class:`ConnectFailed` says whether it was
    refused) after closing it. ``secret`` is the client key, or the admin key with
    ``role="admin"``; ``want``: the cluster id and epoch the program wants (``rpc.epochs``).
    """

    def __init__(self, address: tuple[str, int], secret: bytes, *, ident: str = "client", timeout: float = 1.0,
                 connect_timeout: float | None = None, ssl_context: ssl.SSLContext | None = None,
                 role: str = "client", max_frame: int | None = None, frame_timeout: float | None = None,
                 want: tuple[str, int] | None = None):
        self.address = address
        self._want = want  # the cluster id and epoch wanted (rpc.epochs); None: not compared
        self._secret, self._ident, self._timeout, self._ssl = secret, ident, timeout, ssl_context
        self._role, self._max_frame, self._frame_timeout = role, max_frame, frame_timeout
        self._connect_timeout = min(0.5, timeout) if connect_timeout is None else connect_timeout
        self._conn: rpyc.Connection | None = None

    def call(self, method: str, *args: Any) -> list:
        """One call, over by ``timeout`` (plus ``connect_timeout`` when it connects) in
        all: the handshake, the root fetch, the method's lookup and the call share it,
        else a node answering each just in time held the call four timeouts."""
        try:
            deadline = time.monotonic() + self._timeout
            if self._conn is None:
                deadline += self._connect_timeout
                self._conn = open_connection(self.address, self._secret, role=self._role, ident=self._ident,
                                             connect_timeout=self._connect_timeout, handshake_timeout=self._timeout,
                                             request_timeout=self._timeout, ssl_context=self._ssl,
                                             max_frame=self._max_frame, frame_timeout=self._frame_timeout,
                                             deadline=deadline, want=self._want)
            reply = call_within(self._conn, method, args, max(0.001, deadline - time.monotonic()))
            return unpack_reply(reply)
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


"""The peer transport between Raft nodes: authenticated RPyC, opaque byte frames.

Receiving side: :class:`PeerServer` (an RPyC ``ThreadedServer`` behind
:class:`rpc.auth.ServerAuthenticator`). A connection authenticated as ``("peer", id)``
may call exactly one thing, ``deliver(batch)``; a ``("client", id)`` connection gets
whatever service ``service_extra`` builds for it (nothing by default).

Sending side: :class:`PeerTransport`. ``send(to, payload)`` only appends to a bounded
per-peer queue and returns; one sender thread per peer batches the queue into
pipelined async ``deliver`` calls, detects a dead or hung connection and reconnects
with jittered exponential backoff. See ``docs/transport.md`` for the numbers.
"""
from __future__ import annotations

import logging
import random
import socket
import ssl
import sys
import threading
import time
from collections import deque
from typing import Callable

import rpyc
from rpyc.core.channel import Channel
from rpyc.core.stream import SocketStream
from rpyc.utils.factory import connect_channel
from rpyc.utils.server import ThreadedServer

from prevalence.errors import PrevalenceError

from .auth import (
    DEFAULT_SERVER_HANDSHAKE_TIMEOUT,
    ConnectFailed,
    Identity,
    ServerAuthenticator,
    client_handshake,
    format_address,
)
from .secret import check_secret
from .wire import BatchError, decode_batch, encode_batch

__all__ = [
    "TransportError",
    "PeerServer",
    "PeerTransport",
    "open_connection",
    "hard_close",
    "tune_socket",
    "SAFE_PROTOCOL_CONFIG",
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
    """SocketStream whose poll() also sees data already decrypted inside an SSL socket."""

    __slots__ = ()

    def poll(self, timeout):
        pending = getattr(self.sock, "pending", None)
        if pending is not None:
            try:
                if pending():
                    return True
            except (OSError, ValueError):
                pass
        return super().poll(timeout)


def _channel(sock: socket.socket) -> Channel:
    # compress=False: no zlib on what we send, whatever the size (frames are small or
    # already compact msgpack; zlib costs more CPU than a gigabit LAN saves).
    return Channel(_Stream(sock), compress=False)


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
) -> rpyc.Connection:
    """Connect, authenticate as ``(role, ident)`` and start RPyC over the socket.

    ``connect_timeout`` bounds the TCP connect (one attempt, no retries),
    ``handshake_timeout`` the authentication, ``request_timeout`` every later socket
    write and RPyC's synchronous requests. Raises :class:`ConnectFailed` or
    :class:`AuthenticationFailed`, both naming the address.
    """
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
        # a bounded blocking socket: a write to a peer that stopped reading fails after
        # request_timeout instead of blocking forever (reads retry on timeout in RPyC)
        sock.settimeout(request_timeout)
        config = dict(SAFE_PROTOCOL_CONFIG, sync_request_timeout=request_timeout,
                      endpoints=(sock.getsockname(), sock.getpeername()))
        return connect_channel(_channel(sock), service=service, config=config)
    except BaseException:
        try:
            sock.close()
        except OSError:
            pass
        raise


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


# ---------------------------------------------------------------- receiving side


class _PeerService(rpyc.Service):
    """What a connection authenticated as ("peer", id) may call: deliver, nothing else."""

    def __init__(self, identity: Identity, on_message: Callable[[str, bytes], None], where: str):
        self._identity = identity
        self._on_message = on_message
        self._where = where

    def _rpyc_getattr(self, name):
        if name == "deliver":
            return self.exposed_deliver
        raise AttributeError(f"{name!r} is not exposed to peers")

    def exposed_deliver(self, batch) -> None:
        try:
            frames = decode_batch(batch)
        except BatchError as exc:
            log.warning("peer %s at %s sent a bad batch: %s", self._identity.id, self._where, exc)
            raise ValueError(str(exc)) from None
        sender = self._identity.id
        for frame in frames:
            try:
                self._on_message(sender, frame)
            except Exception:
                # the Raft core's problem, not the peer's: log here, never send it back
                log.exception("on_message failed for a message from peer %s", sender)

    def on_connect(self, conn):
        log.debug("inbound connection from peer %s at %s", self._identity.id, self._where)

    def on_disconnect(self, conn):
        log.debug("inbound connection from peer %s at %s closed", self._identity.id, self._where)


class _DenyService(rpyc.Service):
    """Authenticated, but nothing is exposed (a client role while no client service exists)."""

    def _rpyc_getattr(self, name):
        raise AttributeError(f"{name!r} is not exposed to this role")


class _RoleRouter(rpyc.Service):
    """Builds the per-connection service from the authenticated role.

    The hook for the client-facing service: ``service_extra(identity)`` returns the
    ``rpyc.Service`` object a ("client", id) connection talks to.
    """

    def __init__(self, on_message, service_extra):
        self._on_message = on_message
        self._service_extra = service_extra

    def _connect(self, channel, config={}):  # noqa: B006 (RPyC's signature)
        identity = config.get("credentials")
        endpoints = config.get("endpoints") or (None, None)
        where = format_address(endpoints[1]) if endpoints[1] else "?"
        if isinstance(identity, Identity) and identity.role == "peer":
            service = _PeerService(identity, self._on_message, where)
        elif isinstance(identity, Identity) and identity.role == "client" and self._service_extra:
            service = self._service_extra(identity)
        else:
            service = _DenyService()
        conn = service._protocol(service, channel, config)
        service.on_connect(conn)
        return conn


class _Server(ThreadedServer):
    """ThreadedServer with our socket options, no zlib, and a close() that also drops
    TLS connections (RPyC only tracks the raw sockets, which TLS wrapping detaches)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._conns: set = set()
        self._conns_lock = threading.Lock()

    def _accept_method(self, sock):
        tune_socket(sock)
        super()._accept_method(sock)

    def _serve_client(self, sock, credentials):
        # bounded writes: a reply to a party that stopped reading fails instead of
        # holding this thread forever (reads just retry on timeout inside RPyC)
        sock.settimeout(SERVER_WRITE_TIMEOUT)
        config = dict(self.protocol_config, credentials=credentials,
                      endpoints=(sock.getsockname(), sock.getpeername()), logger=self.logger)
        conn = self.service._connect(_channel(sock), config)
        with self._conns_lock:
            if not self.active:
                hard_close(conn)
                return
            self._conns.add(conn)
        try:
            conn.serve_all()
        except Exception as exc:
            # the socket closed under us: normal at server shutdown or when the peer dies
            if self.active:
                log.debug("inbound connection from %s ended: %s", format_address(config["endpoints"][1]), exc)
        finally:
            with self._conns_lock:
                self._conns.discard(conn)
            hard_close(conn)

    def close(self):
        super().close()
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn._channel.stream.close()  # the serving thread then finishes the cleanup
            except Exception:
                pass


class PeerServer:
    """Listen on ``(host, port)`` for authenticated peers (and, later, clients).

    ``on_message(from_node_id, payload)`` is called for every frame a peer delivers, in
    order per connection, on that connection's server thread; exceptions it raises are
    logged and not sent back. Port 0 picks a free port (see :attr:`address`). The server
    is listening when the constructor returns.
    """

    def __init__(
        self,
        host: str,
        port: int,
        secret: bytes,
        on_message: Callable[[str, bytes], None],
        *,
        service_extra: Callable[[Identity], rpyc.Service] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float = DEFAULT_SERVER_HANDSHAKE_TIMEOUT,
    ):
        secret = check_secret(secret, f"peer server {host}:{port}")
        authenticator = ServerAuthenticator(secret, timeout=handshake_timeout, ssl_context=ssl_context)
        try:
            self._server = _Server(
                _RoleRouter(on_message, service_extra),
                hostname=host,
                port=port,
                authenticator=authenticator,
                protocol_config=dict(SAFE_PROTOCOL_CONFIG, sync_request_timeout=5.0),
                logger=logging.getLogger("rpc.rpyc"),  # RPyC logs every accept at INFO
                listener_timeout=0.5,
            )
            self._server._listen()
        except OSError as exc:
            raise TransportError(f"cannot listen on {format_address((host, port))}: {exc.strerror or exc}") from None
        self.address: tuple[str, int] = (self._server.host, self._server.port)
        self._thread = threading.Thread(target=self._server.start, name=f"rpc-server-{self.address[1]}",
                                        daemon=True)
        self._thread.start()
        log.info("listening on %s", format_address(self.address))

    def close(self) -> None:
        """Stop accepting and close every connection (returns within ~0.5 s)."""
        self._server.close()
        self._thread.join(2.0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------- sending side


class _Link:
    """One live RPyC connection to a peer, with its in-flight deliver calls."""

    def __init__(self, conn: rpyc.Connection, deliver, address):
        self.conn = conn
        self.deliver = deliver
        self.address = address
        self.inflight: deque = deque()  # (AsyncResult, sent_at, frame count)
        self.dead: str | None = None
        self.opened = time.monotonic()
        self.reader: threading.Thread | None = None

    def kill(self, reason: str) -> None:
        if self.dead is None:
            self.dead = reason
        try:
            self.conn._channel.stream.close()
        except Exception:
            pass


DOWN_QUEUE_LIMIT = 64  # messages kept for a peer that is not connected
DIRECT_SEND_LIMIT = 16 * 1024  # larger messages always go through the sender thread


class _Peer:
    def __init__(self, owner: "PeerTransport", peer_id: str, address: tuple[str, int]):
        self.owner = owner
        self.id = peer_id
        self.address = address
        self.cond = threading.Condition()
        self.wake = threading.Event()
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.dropped = 0
        self.failed = 0
        self.sent = 0
        self.delivered = 0
        self.connects = 0
        self.last_error: str | None = None
        self.state = "unknown"  # "up" | "down"
        self.since = time.time()
        self.link: _Link | None = None
        self.opening: rpyc.Connection | None = None
        self.stopping = False
        self.sending = False  # a batch is between the queue and the wire (keeps FIFO order)
        self.thread = threading.Thread(target=self._run, name=f"rpc-send-{peer_id}", daemon=True)

    # -- called by other threads

    def enqueue(self, payload: bytes) -> None:
        o = self.owner
        with self.cond:
            q = self.queue
            q.append(payload)
            self.queued_bytes += len(payload)
            # While the peer is down, keep only the newest few messages: an old backlog
            # replayed on reconnect is stale by then (Raft resends what is still needed,
            # and a node that fell far behind must get a snapshot, not the backlog).
            limit = min(o.queue_limit, DOWN_QUEUE_LIMIT) if self.state == "down" else o.queue_limit
            while (len(q) > limit or self.queued_bytes > o.queue_bytes_limit) and len(q) > 1:
                self.queued_bytes -= len(q.popleft())  # drop the oldest: Raft resends
                self.dropped += 1
            self.cond.notify()

    def send_now(self, payload: bytes) -> bool:
        """Put a small message on the wire from the caller's thread when the link is idle.

        Saves waking the sender thread for every heartbeat of an idle cluster. Only when
        nothing is queued, in flight or being sent (order is kept) and the payload is
        small enough that the socket buffer takes it without blocking.
        """
        with self.cond:
            link = self.link
            if (link is None or link.dead is not None or self.queue or link.inflight or self.sending
                    or self.stopping or len(payload) > DIRECT_SEND_LIMIT):
                return False
            self.sending = True
        try:
            res = link.deliver(encode_batch([payload]))
        except Exception as exc:  # noqa: BLE001 - the link is broken: queue it for the next one
            link.kill(f"send failed: {exc or type(exc).__name__}")
            with self.cond:
                self.sending = False
                self.cond.notify_all()
            return False
        with self.cond:
            self.sending = False
            link.inflight.append((res, time.monotonic(), 1))
            self.sent += 1
            if self.queue:
                self.cond.notify_all()
        return True

    def set_address(self, address) -> None:
        with self.cond:
            if address == self.address:
                return
            self.address = address
            if self.link is not None:
                self.link.kill("peer address changed")
            self.cond.notify_all()
        self.wake.set()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            if self.link is not None:
                self.link.kill("transport closed")
            if self.opening is not None:
                try:
                    self.opening._channel.stream.close()
                except Exception:
                    pass
            self.cond.notify_all()
        self.wake.set()

    def status(self) -> dict:
        with self.cond:
            link = self.link
            return {
                "address": format_address(self.address),
                "connected": self.state == "up",
                "queued": len(self.queue),
                "queued_bytes": self.queued_bytes,
                "in_flight": len(link.inflight) if link is not None else 0,
                "sent": self.sent,
                "delivered": self.delivered,
                "dropped": self.dropped,
                "failed": self.failed,
                "reconnects": max(0, self.connects - 1),
                "last_error": self.last_error,
                "since": self.since,
            }

    # -- state transitions (one log line each)

    def _set_up(self) -> None:
        with self.cond:
            changed = self.state != "up"
            self.state = "up"
            if changed:
                self.since = time.time()
        if changed:
            log.info("peer %s at %s up", self.id, format_address(self.address))

    def _set_down(self, reason: str) -> None:
        with self.cond:
            self.last_error = reason
            changed = self.state != "down"
            self.state = "down"
            if changed:
                self.since = time.time()
        if changed and not self.stopping:
            log.warning("peer %s at %s down: %s", self.id, format_address(self.address), reason)

    # -- the sender thread

    def _run(self) -> None:
        o = self.owner
        attempt = 0
        while not self.stopping:
            try:
                address = self.address
                try:
                    link = self._open(address)
                except Exception as exc:  # ConnectFailed, AuthenticationFailed, remote errors
                    self._set_down(str(exc))
                else:
                    with self.cond:
                        self.link = link
                        self.connects += 1
                        if self.stopping:
                            link.kill("transport closed")
                    self._set_up()
                    reason = self._pump(link)
                    self._close_link(link)
                    if time.monotonic() - link.opened > 2 * o.backoff_max:
                        attempt = 0  # it was a working connection: reconnect quickly
                    self._set_down(reason)
            except Exception:  # a bug: keep the sender alive, but say so
                log.exception("sender thread for peer %s: unexpected error", self.id)
            if self.stopping:
                break
            delay = min(o.backoff_max, o.backoff_min * (2 ** min(attempt, 20)))
            attempt += 1
            self.wake.wait(delay * random.uniform(0.5, 1.0))
            self.wake.clear()

    def _open(self, address) -> _Link:
        o = self.owner
        conn = open_connection(address, o._secret, role="peer", ident=o.self_id,
                               connect_timeout=o.connect_timeout, handshake_timeout=o.handshake_timeout,
                               request_timeout=o.request_timeout, ssl_context=o.ssl_context)
        with self.cond:
            if self.stopping:
                hard_close(conn)
                raise ConnectFailed("transport closed")
            self.opening = conn  # so stop() can cut the set-up calls short
        try:
            deliver = rpyc.async_(conn.root.deliver)  # sync requests, each bounded by request_timeout
        except Exception as exc:
            hard_close(conn)
            raise ConnectFailed(f"{format_address(address)}: deliver not available: {exc}") from None
        finally:
            with self.cond:
                self.opening = None
        link = _Link(conn, deliver, address)
        link.reader = threading.Thread(target=self._read, args=(link,), name=f"rpc-recv-{self.id}",
                                       daemon=True)
        link.reader.start()
        return link

    def _close_link(self, link: _Link) -> None:
        link.kill(link.dead or "closed")
        if link.reader is not None and link.reader is not threading.current_thread():
            link.reader.join(1.0)
        hard_close(link.conn)
        with self.cond:
            lost = sum(n for _, _, n in link.inflight)
            link.inflight.clear()
            self.failed += lost
            if self.link is link:
                self.link = None

    def _reap(self, link: _Link) -> bool:
        """Account for completed deliver calls; kill the link if the oldest is overdue.

        Called with self.cond held. Only reads the AsyncResults' state (the reader
        thread is the one serving the connection). Returns True if something completed.
        """
        done = False
        if link.inflight:
            keep = deque()
            for item in link.inflight:
                res, _, n = item
                if res._is_ready:  # set by the reader thread when the reply is dispatched
                    done = True
                    if res._is_exc:
                        self.failed += n
                        exc = res._obj
                        self.last_error = f"peer rejected a batch: {type(exc).__name__}: {exc}"
                    else:
                        self.delivered += n
                else:
                    keep.append(item)
            link.inflight = keep
            if keep and time.monotonic() - keep[0][1] > self.owner.request_timeout:
                link.kill(f"no answer within {self.owner.request_timeout:g} s (peer hung?)")
        if done and self.queue:  # the sender waits for room in the window only with work queued
            self.cond.notify_all()
        return done

    def _read(self, link: _Link) -> None:
        """Reader thread: serves the connection so replies are dispatched as they arrive."""
        conn = link.conn
        tick = min(0.5, self.owner.request_timeout / 2)  # also how often overdue calls are checked
        try:
            while link.dead is None:
                conn.serve(tick)
                with self.cond:
                    self._reap(link)
        except Exception as exc:
            link.kill(f"connection lost: {exc or type(exc).__name__}")
        with self.cond:
            self.cond.notify_all()

    def _pump(self, link: _Link) -> str:
        """Send batches until the link dies, the address changes or we stop; return why."""
        o = self.owner
        while True:
            with self.cond:
                while True:
                    if self.stopping:
                        return "transport closed"
                    self._reap(link)
                    if link.dead is not None:
                        return link.dead
                    if self.address != link.address:
                        return "peer address changed"
                    if self.queue and len(link.inflight) < o.max_in_flight and not self.sending:
                        break
                    # Waiting for window room: poll for overdue calls. Idle: sleep until a
                    # send, a death (the reader notifies) or a second passes.
                    self.cond.wait(0.05 if link.inflight and self.queue else 1.0)
                frames = [self.queue.popleft()]
                size = len(frames[0])
                while self.queue and len(frames) < o.max_batch_frames and size + len(self.queue[0]) <= o.max_batch_bytes:
                    frame = self.queue.popleft()
                    frames.append(frame)
                    size += len(frame)
                self.queued_bytes -= size
                self.sending = True
            try:
                res = link.deliver(encode_batch(frames))
            except Exception as exc:
                with self.cond:
                    self.sending = False
                    self.failed += len(frames)
                link.kill(f"send failed: {exc or type(exc).__name__}")
                continue
            with self.cond:
                self.sending = False
                link.inflight.append((res, time.monotonic(), len(frames)))
                self.sent += len(frames)


class PeerTransport:
    """Send opaque byte messages to the other nodes; never blocks the caller.

    ``peers`` maps node id -> (host, port); an entry for ``self_id`` is ignored. Per
    peer: a queue bounded by ``queue_limit`` messages and ``queue_bytes_limit`` bytes
    (the oldest are dropped and counted when full), one sender thread that batches up
    to ``max_batch_frames`` / ``max_batch_bytes`` into one async ``deliver`` call with
    at most ``max_in_flight`` calls outstanding, a connection that is rebuilt when a call
    gets no answer within ``request_timeout``, and reconnects spaced by jittered
    exponential backoff from ``backoff_min`` to ``backoff_max`` seconds.
    """

    def __init__(
        self,
        self_id: str,
        secret: bytes,
        peers: dict[str, tuple[str, int]],
        *,
        queue_limit: int = 10_000,
        queue_bytes_limit: int = 64 * 1024 * 1024,
        max_batch_frames: int = 1024,
        max_batch_bytes: int = 1024 * 1024,
        max_in_flight: int = 8,
        connect_timeout: float = 0.5,
        handshake_timeout: float = 1.0,
        request_timeout: float = 1.0,
        backoff_min: float = 0.05,
        backoff_max: float = 1.0,
        ssl_context: ssl.SSLContext | None = None,
    ):
        if not isinstance(self_id, str) or not self_id:
            raise TransportError(f"self_id must be a non-empty string, got {self_id!r}")
        self.self_id = self_id
        self._secret = check_secret(secret, f"peer transport of node {self_id}")
        if queue_limit < 1 or max_batch_frames < 1 or max_in_flight < 1:
            raise TransportError("queue_limit, max_batch_frames and max_in_flight must be >= 1")
        self.queue_limit = int(queue_limit)
        self.queue_bytes_limit = int(queue_bytes_limit)
        self.max_batch_frames = int(max_batch_frames)
        self.max_batch_bytes = int(max_batch_bytes)
        self.max_in_flight = int(max_in_flight)
        self.connect_timeout = float(connect_timeout)
        self.handshake_timeout = float(handshake_timeout)
        self.request_timeout = float(request_timeout)
        self.backoff_min = float(backoff_min)
        self.backoff_max = float(backoff_max)
        self.ssl_context = ssl_context
        self._lock = threading.Lock()
        self._peers: dict[str, _Peer] = {}
        self._unknown: dict[str, int] = {}
        self._closed = False
        self.set_peers(peers)

    def send(self, to: str, payload: bytes) -> None:
        """Queue ``payload`` for node ``to`` and return at once (never blocks on I/O).

        A message to an unknown node, or after close(), is dropped and counted.
        """
        if type(payload) is not bytes:
            if isinstance(payload, (bytearray, memoryview)):
                payload = bytes(payload)
            else:
                raise TransportError(f"send to {to!r}: payload must be bytes, got {type(payload).__name__}")
        peer = self._peers.get(to)
        if peer is None or self._closed:
            with self._lock:
                n = self._unknown.get(to, 0)
                self._unknown[to] = n + 1
            if n == 0 and not self._closed:
                log.warning("dropping messages to unknown peer %r (not in the peer list)", to)
            return
        if not peer.send_now(payload):
            peer.enqueue(payload)

    def set_peers(self, peers: dict[str, tuple[str, int]]) -> None:
        """Replace the peer list: start senders for new peers, stop removed ones
        (their queued messages are discarded), reconnect peers whose address changed."""
        wanted: dict[str, tuple[str, int]] = {}
        for pid, addr in dict(peers).items():
            if pid == self.self_id:
                continue
            try:
                host, port = addr
                wanted[str(pid)] = (str(host), int(port))
            except (TypeError, ValueError):
                raise TransportError(f"peer {pid!r}: address must be (host, port), got {addr!r}") from None
        stopped = []
        with self._lock:
            if self._closed:
                raise TransportError("set_peers on a closed transport")
            current = dict(self._peers)  # copy-on-write: send() reads self._peers without the lock
            for pid in list(current):
                if pid not in wanted:
                    stopped.append(current.pop(pid))
            new = []
            for pid, addr in wanted.items():
                peer = current.get(pid)
                if peer is None:
                    current[pid] = peer = _Peer(self, pid, addr)
                    new.append(peer)
                else:
                    peer.set_address(addr)
            self._peers = current
            for peer in stopped:
                peer.stop()
            for peer in new:
                peer.thread.start()
        for peer in stopped:  # not joined: set_peers must not block; the thread ends by itself
            log.info("peer %s removed", peer.id)

    def peer_status(self) -> dict[str, dict]:
        """Per peer: address, connected, queued, queued_bytes, in_flight, sent, delivered,
        dropped (queue overflow), failed (lost with a dead connection or rejected),
        reconnects, last_error, since (wall time of the last up/down change)."""
        return {pid: peer.status() for pid, peer in sorted(self._peers.items())}

    def close(self) -> None:
        """Stop every sender thread and close every connection (returns within ~1 s)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            peers = list(self._peers.values())
        for peer in peers:
            peer.stop()
        deadline = time.monotonic() + 3.0
        for peer in peers:
            peer.thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

"""The receiving side of the peer transport: :class:`PeerServer`.

An RPyC ``ThreadedServer`` behind :class:`rpc.auth.ServerAuthenticator`. A connection
authenticated with the peer key, ``("peer", id)``, speaks no RPyC: it sends batches
and reads one batch of replies to each (:class:`rpc.transport.PeerChannel`); a
``("client", id)`` or ``("admin", id)`` connection gets whatever RPyC service
``service_extra`` builds for it (nothing by default). See ``docs/transport.md``.
"""
from __future__ import annotations

import errno
import logging
import socket
import ssl
import threading
import time
import traceback
from typing import Callable, Mapping

import rpyc
from rpyc.core import brine, consts
from rpyc.utils.server import ThreadedServer

from prevalence.text import error_text

from . import pending
from .brine_shape import MAX_OBJECTS, check_request
from .decode_budget import BUDGET
from .auth import DEFAULT_SERVER_HANDSHAKE_TIMEOUT, Identity, ServerAuthenticator, format_address
from .frame_mac import ACCEPTOR, mac_channel
from .pending import PendingHandshakes
from .transport import (
    CLIENT_MAX_FRAME, FRAME_TIMEOUT, MAX_CONNECTIONS, PEER_MAX_FRAME, SAFE_PROTOCOL_CONFIG, SERVER_WRITE_TIMEOUT,
    PeerChannel, TransportError, _channel, hard_close, tune_socket,
)
from .wire import BatchError

log = logging.getLogger("rpc.transport")

#: How often a peer connection's thread with nothing to read checks that the server is open.
PEER_IDLE_TICK = 1.0
#: At the connection limit, the client connection silent the longest (at least this many
#: seconds, no request under way) is closed to make room: clients that never close must
#: not hold every slot for good. The client library reconnects at its next call.
IDLE_CLIENT_EVICT = 5.0
#: Newcomers let in over the limit while they prove a key (each then takes a silent client's
#: slot): a stranger's bare connection must not close an authenticated client's.
MAX_OVER_LIMIT = 8
EVICTION_LOG_EVERY = 60.0  # seconds between two log lines about such closings

OnBatch = Callable[[str, list[bytes]], "list[bytes] | None"]


class _PeerInbox:
    """What a connection authenticated as ("peer", id) gets: its batches handed to the
    node, and the node's replies to each sent back as one batch."""

    def __init__(self, identity: Identity, on_message: Callable[[str, bytes], None] | None,
                 on_batch: OnBatch | None = None):
        self._sender = identity.id
        self._on_message = on_message
        self._on_batch = on_batch

    def take(self, frames: list[bytes]) -> list[bytes]:
        sender = self._sender
        if self._on_batch is not None:
            try:
                return self._on_batch(sender, frames) or []
            except Exception:
                # the Raft core's problem, not the peer's: log here, never send it back
                log.exception("on_batch failed for messages from peer %s", sender)
                return []
        for frame in frames:
            try:
                self._on_message(sender, frame)
            except Exception:
                log.exception("on_message failed for a message from peer %s", sender)
        return []


class _DenyService(rpyc.Service):
    """Authenticated, but nothing is exposed (a client role while no client service exists)."""

    def _rpyc_getattr(self, name):
        raise AttributeError(f"{name!r:.60} is not exposed to this role")


_REQUEST = brine.I1.pack(consts.MSG_REQUEST)


class _PlainConnection(rpyc.Connection):
    """The accepting side of a connection: the other side may hand us plain values only.

    RPyC turns any argument that is not a brine value (bytes, str, int, float, bool,
    None, tuples of them) into a netref, a proxy that calls back into the sender for
    every use, isinstance() included. We never need one from a client or a peer, so a
    request carrying one is refused before any method sees it."""

    _busy, _last_active, _who = False, 0.0, ""  # handling a message; when it last did; for the log

    def _unbox(self, package):
        if type(package) is tuple and len(package) == 2 and package[0] == consts.LABEL_REMOTE_REF:
            raise TypeError("only plain values are accepted (bytes, str, int, float, bool, None and tuples of "
                            "them), not a reference to an object of the caller's")
        return super()._unbox(package)

    def _dispatch(self, data):
        self._busy = True
        try:
            self._dispatch_bounded(data)
        finally:
            self._busy, self._last_active = False, time.monotonic()

    def _dispatch_bounded(self, data):
        # RPyC decodes a request (brine.load) before any method sees it: a client frame
        # of CLIENT_MAX_FRAME (4 MiB) of empty frozensets (2 bytes each, 216 decoded)
        # took 470 MB, per connection at once. Decoding a request takes its size from
        # the process's decode budget, as the service's own decoding does; the call
        # itself runs after it is given back (the service takes it again: never nested).
        # And a message long enough to hold more objects than any call needs has its
        # shape read first (rpc.brine_shape): refused, it is never built. Whatever its
        # type: RPyC decodes a reply or an exception message just as whole, and a client
        # may send those unasked (1 MiB of a "reply" took 114 MiB).
        if len(data) > MAX_OBJECTS:
            check_request(data, 1)  # ValueError: the connection ends as malformed
        if data[:1] != _REQUEST:
            return super()._dispatch(data)
        if self._bind_threads:
            self._get_thread()._occupation_count += 1
        else:
            self._recvlock.release()
        held = BUDGET.take(len(data))
        try:
            seq, args = brine.load(data[1:])
        finally:
            BUDGET.give(held)
        self._dispatch_request(seq, args)

    def _handle_call(self, obj, args, kwargs=()):
        # RPyC builds dict(kwargs) from the client's pairs before the call refuses any
        # key that is not a str, and ints or complex numbers of one hash (k*(2**61-1)+c)
        # compare with every key before them in one C call holding the GIL: 2,700 such
        # keys of 1,500 digits (a 4 MiB frame) stalled the process for 0.5 s, past a
        # leader's election timeout. A str's hash is randomized per process.
        if type(kwargs) is not tuple or any(type(pair) is not tuple or len(pair) != 2 or type(pair[0]) is not str
                                            for pair in kwargs):
            raise TypeError("keyword arguments must be (name, value) pairs with str names")
        return super()._handle_call(obj, args, kwargs)

    def serve_all(self) -> None:
        """RPyC's, except that a connection ending on an error is not closed politely:
        the close request waits ``sync_request_timeout`` (5 s) for an answer from the
        party that just sent a malformed message, holding this thread."""
        try:
            while not self.closed:
                self.serve(None)
        except EOFError:
            pass
        except BaseException:
            hard_close(self)
            raise
        finally:
            self.close()  # a no-op once hard-closed

    def _dispatch_request(self, seq, raw_args):
        # RPyC keeps the last failed request's traceback, whose frames (and so the
        # request's arguments) form a cycle with it: only the cyclic GC would free them,
        # much later. A client sending megabyte requests that fail grew a node by
        # hundreds of MiB that way. The frames are cleared as soon as the error is sent.
        super()._dispatch_request(seq, raw_args)
        del raw_args  # this frame may outlive the call: the traceback's frames refer to it
        self._forget_traceback()

    def _forget_traceback(self) -> None:
        tb, self._last_traceback = self._last_traceback, None
        if tb is not None:
            traceback.clear_frames(tb)


class _RoleRouter(rpyc.Service):
    """Builds the per-connection service from the authenticated role.

    The hook for the client-facing service: ``service_extra(identity)`` returns the
    ``rpyc.Service`` object a ("client", id) connection talks to. A peer gets no RPyC
    at all (:meth:`inbox`).
    """

    def __init__(self, on_message, service_extra, on_batch=None):
        self._on_message = on_message
        self._service_extra = service_extra
        self._on_batch = on_batch

    def inbox(self, identity: Identity) -> _PeerInbox:
        return _PeerInbox(identity, self._on_message, self._on_batch)

    def _connect(self, channel, config={}):  # noqa: B006 (RPyC's signature)
        identity = config.get("credentials")
        if isinstance(identity, Identity) and identity.role in ("client", "admin") and self._service_extra:
            service = self._service_extra(identity)
        else:
            service = _DenyService()
        conn = _PlainConnection(service, channel, config)
        service.on_connect(conn)
        return conn


# accept() errors that only mean this one connection went away before it was taken
_GONE = {getattr(errno, name) for name in ("EINTR", "EAGAIN", "EWOULDBLOCK", "ECONNABORTED", "EPROTO", "WSAECONNRESET",
                                           "WSAECONNABORTED", "WSAEINTR", "WSAEWOULDBLOCK") if hasattr(errno, name)}
ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX = 0.05, 1.0


class _Server(ThreadedServer):
    """ThreadedServer with our socket options, bounded frames, a connection cap, an
    accept loop that outlives a lack of file descriptors or threads, and a close()
    that also drops TLS connections (RPyC only tracks the raw sockets, which TLS
    wrapping detaches).

    RPyC's own accept loop ends the server, silently, on the first accept() error
    other than EINTR/EAGAIN: a node out of descriptors (EMFILE) would never listen
    again. Here such an error is logged once, accepting backs off (50 ms doubling to
    1 s) and resumes when descriptors are free again.
    """

    def __init__(self, *args, max_connections: int = MAX_CONNECTIONS, max_peer_frame: int = PEER_MAX_FRAME,
                 max_client_frame: int = CLIENT_MAX_FRAME, frame_timeout: float = FRAME_TIMEOUT, **kwargs):
        super().__init__(*args, **kwargs)
        self._conns: set = set()
        self._clients: set = set()  # client and admin connections being served: closed to make room
        # descriptor -> socket let in over the limit, in its handshake (see _make_room); by
        # descriptor: a TLS handshake hands _serve_client another socket object on the same one
        self._over: dict = {}
        self._conns_lock = threading.Lock()
        self._evictions = 0  # closed to make room since the last log line about it
        self._eviction_logged = -EVICTION_LOG_EVERY
        self.max_connections = int(max_connections)
        self.max_peer_frame = int(max_peer_frame)
        self.max_client_frame = int(max_client_frame)
        self.frame_timeout = float(frame_timeout)
        self._open = 0  # connections accepted and not finished (in the handshake or served)
        self._full = False  # the cap was hit and not yet logged as over
        self._trouble: str | None = None  # why accept() fails, while it does
        self._backoff = ACCEPT_BACKOFF_MIN
        self._closing = threading.Event()
        self._pending = PendingHandshakes()  # a host that never authenticates holds a few slots, not all
        authenticate = self.authenticator
        if authenticate is not None:
            self.authenticator = lambda sock: self._authenticating(authenticate, sock)

    def _authenticating(self, authenticate, sock):
        try:
            return authenticate(sock)
        finally:
            self._pending.settled(sock, pending.MAX_PENDING_PER_ADDRESS)

    def accept(self):
        """Take one connection; an accept() error never ends the server."""
        while self.active:
            try:
                sock, addr = self.listener.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                if not self.active:
                    raise EOFError("listener closed") from None
                if exc.errno in _GONE:
                    continue
                self._accept_failed(exc)
                continue
            break
        else:
            return
        if self._trouble is not None:
            log.info("accepting connections on %s again", format_address((self.host, self.port)))
            self._trouble = None
            self._backoff = ACCEPT_BACKOFF_MIN
        if not self.active:
            sock.close()
            return
        self._take(sock, addr)

    def _accept_failed(self, exc: BaseException) -> None:
        """Out of descriptors, memory or threads: say so once, wait, try again."""
        if self._trouble is None:
            log.warning("cannot accept connections on %s: %s; still listening, retrying until it recovers",
                        format_address((self.host, self.port)), exc)
            self._trouble = str(exc)
        self._closing.wait(self._backoff)
        self._backoff = min(ACCEPT_BACKOFF_MAX, self._backoff * 2)

    def _take(self, sock, addr=None) -> None:
        host = str(addr[0]) if isinstance(addr, tuple) and addr else ""
        admitted, say = self._pending.admit(sock, host, pending.MAX_PENDING_PER_ADDRESS, pending.exempt)
        if not admitted:
            if say:
                log.warning("%d handshakes pending from %s on %s: closing its new connections until some end",
                            pending.MAX_PENDING_PER_ADDRESS, host, format_address((self.host, self.port)))
            sock.close()
            return
        with self._conns_lock:
            full = self._open >= self.max_connections
            if full and len(self._over) < MAX_OVER_LIMIT and self._silent_client(take=False) is not None:
                full = False  # let in over the limit: a silent client makes room once it proves a key
                self._over[sock.fileno()] = sock
            if not full:
                self._open += 1
            log_full, self._full = full and not self._full, self._full or full
        if full:
            self._pending.settled(sock, pending.MAX_PENDING_PER_ADDRESS)
            if log_full:
                log.warning("connection limit (%d) reached on %s: closing new connections until some end",
                            self.max_connections, format_address((self.host, self.port)))
            sock.close()
            return
        try:
            sock.setblocking(True)
            tune_socket(sock)
            self.clients.add(sock)
            threading.Thread(target=self._run, args=(sock,), name="rpc-conn", daemon=True).start()
        except Exception as exc:  # noqa: BLE001 - no thread (or the socket died): drop this one, keep listening
            self.clients.discard(sock)
            self._pending.settled(sock, pending.MAX_PENDING_PER_ADDRESS)
            self._release()
            try:
                sock.close()
            except OSError:
                pass
            self._accept_failed(exc)

    def _run(self, sock) -> None:
        fd = sock.fileno()
        try:
            self._authenticate_and_serve_client(sock)
        except OSError as exc:
            # gone before it was served (a reset right after the accept: RPyC asks the
            # socket for its peer first): one line, not a traceback from a dying thread
            log.info("a connection ended before it was served: %s", exc)
        finally:
            self._pending.settled(sock, pending.MAX_PENDING_PER_ADDRESS)  # if its handshake never began
            with self._conns_lock:
                if self._over.get(fd) is sock:
                    del self._over[fd]
            self._release()

    def _silent_client(self, take: bool = True):
        """The client connection to close to make room (taken out of the candidates if
        ``take``), or None. Lock held."""
        now = time.monotonic()
        idle = [c for c in self._clients if not c._busy and now - c._last_active >= IDLE_CLIENT_EVICT]
        victim = min(idle, key=lambda c: c._last_active) if idle else None
        if take:
            self._clients.discard(victim)
        return victim

    def _make_room(self, sock) -> bool:
        """A newcomer that proved its key: if it was let in over the limit, close the
        client connection silent the longest for it. False if none is silent any more."""
        with self._conns_lock:
            if self._over.pop(sock.fileno(), None) is None:
                return True
            victim = self._silent_client()
        if victim is None:
            return False
        self._evict(victim)
        return True

    def _evict(self, conn) -> None:
        now = time.monotonic()
        self._evictions += 1
        if now - self._eviction_logged >= EVICTION_LOG_EVERY:
            log.warning("connection limit (%d) reached on %s: closed the connection of %s, silent for %.0f s, to "
                        "make room (%d such in the last %.0f s; clients that never close their connections?)",
                        self.max_connections, format_address((self.host, self.port)), conn._who,
                        now - conn._last_active, self._evictions, EVICTION_LOG_EVERY)
            self._eviction_logged, self._evictions = now, 0
        hard_close(conn)  # its serving thread then ends and frees its slot

    def _release(self) -> None:
        with self._conns_lock:
            self._open -= 1
            if self._open < self.max_connections:
                self._full = False

    def _serve_client(self, sock, credentials):
        # bounded writes: a reply to a party that stopped reading fails instead of
        # holding this thread forever (reads are bounded by the channel)
        sock.settimeout(SERVER_WRITE_TIMEOUT)
        if not self._make_room(sock):
            log.info("connection limit (%d) reached on %s: closed a new connection, no client silent any more",
                     self.max_connections, format_address((self.host, self.port)))
            return
        try:
            peer = sock.getpeername()
        except OSError as exc:  # reset right after its handshake (a status call that gave up)
            who = f"{credentials.role} {credentials.id!r}" if isinstance(credentials, Identity) else "a party"
            log.info("connection of %s ended before it was served: %s", who, exc)
            return
        if isinstance(credentials, Identity) and credentials.role == "peer":
            who = f"peer {credentials.id!r} at {format_address(peer)}"
            keys = getattr(credentials, "frame_keys", None)
            if keys is None:  # an authenticator that drew no frame keys: nothing here could be trusted
                log.warning("connection with %s closed: no frame keys from its handshake", who)
                return
            self._serve_peer(PeerChannel(mac_channel(sock, keys, ACCEPTOR, self.max_peer_frame, who,
                                                     self.frame_timeout)),
                             self.service.inbox(credentials), who)
            return
        config = dict(self.protocol_config, credentials=credentials,
                      endpoints=(sock.getsockname(), peer), logger=self.logger)
        if isinstance(credentials, Identity):
            who = f"{credentials.role} {credentials.id!r} at {format_address(peer)}"
        else:
            who = f"unauthenticated {format_address(peer)}"
        conn = self.service._connect(_channel(sock, self.max_client_frame, who, self.frame_timeout), config)
        if not self._track(conn._channel.stream):
            hard_close(conn)
            return
        with self._conns_lock:
            conn._who, conn._last_active = who, time.monotonic()
            self._clients.add(conn)
        try:
            conn.serve_all()
        except OSError as exc:
            # the socket closed under us: normal at server shutdown or when the peer dies
            if self.active:
                log.debug("connection with %s ended: %s", who, exc)
        except Exception as exc:  # noqa: BLE001 - malformed RPyC from an authenticated party
            if self.active:
                log.warning("connection with %s closed: malformed message (%s: %.200s)", who,
                            type(exc).__name__, error_text(exc))
        finally:
            with self._conns_lock:
                self._clients.discard(conn)
            self._untrack(conn._channel.stream)
            hard_close(conn)

    def _serve_peer(self, chan: PeerChannel, inbox: _PeerInbox, who: str) -> None:
        """A node's connection: each batch to the node, its replies back, in order, until
        the connection ends. A batch that is not one ends it (nothing after it can be
        trusted to be framed as meant); the node dials again."""
        if not self._track(chan.channel.stream):
            chan.close()
            return
        log.debug("inbound connection from %s", who)
        try:
            while self.active:
                if chan.poll(PEER_IDLE_TICK):
                    chan.send(inbox.take(chan.recv()))
        except EOFError as exc:  # closed by either side, or a frame refused (logged)
            if self.active:
                log.debug("connection with %s ended: %s", who, exc)
        except BatchError as exc:
            log.warning("connection with %s closed: %s", who, exc)
        except OSError as exc:
            if self.active:
                log.debug("connection with %s ended: %s", who, exc)
        except Exception as exc:  # noqa: BLE001 - e.g. a TLS socket shut under a read: this connection ends
            if self.active:
                log.warning("connection with %s closed: %s: %.200s", who, type(exc).__name__, error_text(exc))
        finally:
            self._untrack(chan.channel.stream)
            chan.close()

    def _track(self, stream) -> bool:
        """Remember a served stream so close() can shut it; False once the server closes."""
        with self._conns_lock:
            if not self.active:
                return False
            self._conns.add(stream)
            return True

    def _untrack(self, stream) -> None:
        with self._conns_lock:
            self._conns.discard(stream)

    def close(self):
        self._closing.set()
        super().close()
        with self._conns_lock:
            conns = list(self._conns)
        for stream in conns:
            try:
                stream.close()  # the serving thread then finishes the cleanup
            except Exception:
                pass


class PeerServer:
    """Listen on ``(host, port)`` for authenticated peers and clients, one key per role
    in ``keys`` (``{"peer": ..., "client": ..., "admin": ...}``; bytes: peers only).

    ``on_message(from_node_id, payload)`` is called for every frame a peer delivers, in
    order per connection, on that connection's server thread; exceptions it raises are
    logged and not sent back. With ``on_batch(from_node_id, frames)`` instead, the
    frames of one delivery come together and the frames it returns for that peer go
    back as the reply (see ``PeerTransport.on_reply``): an ack then costs the two nodes
    no message of its own. Port 0 picks a free port (see :attr:`address`). The server
    is listening when the constructor returns.

    Input is bounded (docs/transport.md): at most ``max_connections`` at once, frames of
    at most ``max_peer_frame`` / ``max_client_frame`` bytes by role, never compressed,
    each arriving whole within ``frame_timeout`` seconds of its first byte.
    """

    def __init__(
        self,
        host: str,
        port: int,
        keys: "Mapping[str, bytes | tuple[bytes, ...]] | bytes",
        on_message: Callable[[str, bytes], None] | None,
        *,
        on_batch: OnBatch | None = None,
        service_extra: Callable[[Identity], rpyc.Service] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float = DEFAULT_SERVER_HANDSHAKE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        max_peer_frame: int = PEER_MAX_FRAME,
        max_client_frame: int = CLIENT_MAX_FRAME,
        frame_timeout: float = FRAME_TIMEOUT,
        node_id: str | None = None,
    ):
        # keys: role -> key (bytes alone: the peer key, peers only); the key that proves
        # itself decides the role (rpc.auth); a hello naming another node than node_id is
        # refused (a relayed handshake)
        authenticator = ServerAuthenticator(keys, timeout=handshake_timeout, ssl_context=ssl_context,
                                            node_id=node_id)
        try:
            self._server = _Server(
                _RoleRouter(on_message, service_extra, on_batch),
                hostname=host,
                ipv6=":" in host,  # "::1", "fe80::1": RPyC binds AF_INET unless told
                port=port,
                authenticator=authenticator,
                protocol_config=dict(SAFE_PROTOCOL_CONFIG, sync_request_timeout=5.0),
                logger=logging.getLogger("rpc.rpyc"),  # RPyC logs every accept at INFO
                listener_timeout=0.5,
                max_connections=max_connections,
                max_peer_frame=max_peer_frame,
                max_client_frame=max_client_frame,
                frame_timeout=frame_timeout,
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


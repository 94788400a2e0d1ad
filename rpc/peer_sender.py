"""The sending side of the peer transport: :class:`PeerTransport`.

``send(to, payload)`` only appends to a bounded per-peer queue and returns; one sender
thread per peer batches the queue into pipelined async ``deliver`` calls, detects a
dead or hung connection and reconnects with jittered exponential backoff. See
``docs/transport.md`` for the numbers.
"""
from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections import deque
from typing import Callable

import rpyc

from .auth import ConnectFailed, format_address
from .secret import check_secret
from .transport import TransportError, hard_close, open_connection
from .wire import BatchError, decode_batch, encode_batch

log = logging.getLogger("rpc.transport")


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
            self._watch_reply(res)
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

    def _watch_reply(self, res) -> None:
        if self.owner.on_reply is not None:
            res.add_callback(self._on_reply)

    def _on_reply(self, res) -> None:
        """A deliver call's reply carries the peer's answers to it (see ``on_reply``).

        Runs on the reader thread as the reply is dispatched, or on the sender's if it
        came first."""
        if res._is_exc or not res._obj:
            return
        try:
            frames = decode_batch(res._obj)
        except BatchError as exc:
            log.warning("peer %s at %s replied with a bad batch: %s", self.id, format_address(self.address), exc)
            return
        try:
            self.owner.on_reply(self.id, frames)
        except Exception:  # the receiver's problem, not the link's
            log.exception("on_reply failed for messages from peer %s", self.id)

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

    def _set_down(self, reason: str, starting: bool = False) -> None:
        with self.cond:
            self.last_error = reason
            was = self.state
            changed = was != "down"
            self.state = "down"
            if changed:
                self.since = time.time()
        if changed and not self.stopping:
            # a peer lost is news; one whose port is not open yet (still starting) is not
            quiet = starting and was != "up"
            log.log(logging.INFO if quiet else logging.WARNING, "peer %s at %s down: %s", self.id,
                    format_address(self.address), reason)

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
                    # nothing listening yet is no news at start; anything else (a wrong key) is
                    self._set_down(str(exc), starting=isinstance(exc, ConnectFailed) and exc.refused)
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
                self._watch_reply(res)
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
        # on_reply(peer id, frames): what a peer answered to a delivery, for the receiver
        self.on_reply: Callable[[str, list[bytes]], None] | None = None
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

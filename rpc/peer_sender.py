"""The sending side of the peer transport: :class:`PeerTransport`.

``send(to, payload)`` only appends to a bounded per-peer queue and returns; one sender
thread per peer writes the queue as batches on a :class:`rpc.transport.PeerChannel`,
several in flight, reads the peer's answer to each on a reader thread, detects a dead
or hung connection and reconnects with jittered exponential backoff. See
``docs/transport.md`` for the numbers.

Every decision (what to queue or drop, what goes out and when, when a connection is
hung, when to dial again, the counters) is made by the peer's
:class:`replication.runtime.peer_link.PeerLink`, which the simulator drives too. This
module is its shell: threads, sockets and log lines.
"""
from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections import deque
from typing import Callable

from replication.runtime.peer_link import (  # noqa: F401 - the two limits re-exported
    CONNECTING, DIRECT_SEND_LIMIT, DOWN_QUEUE_LIMIT, ROUND_TRIPS_KEPT, Batch, LinkSettings, PeerLink,
)

from .auth import ConnectFailed, format_address
from .secret import check_secret
from .transport import PeerChannel, TransportError, open_peer_channel
from .wire import MAX_BATCH_FRAMES, BatchError

log = logging.getLogger("rpc.transport")


class _Conn:
    """One live connection to a peer, and the batches it has yet to answer."""

    def __init__(self, chan: PeerChannel, address):
        self.chan = chan
        self.address = address
        self.unanswered: deque[int] = deque()  # batch ids in the order written: replies come in it
        self.dead: str | None = None
        self.was: str | None = None  # the peer's state before this connection died, if it changed
        self.reader: threading.Thread | None = None


class _Peer:
    def __init__(self, owner: "PeerTransport", peer_id: str, address: tuple[str, int]):
        self.owner = owner
        self.id = peer_id
        self.address = address
        self.cond = threading.Condition()
        self.wake = threading.Event()
        self.link = PeerLink(owner.settings, random.Random(), time.monotonic())
        self.conn: _Conn | None = None
        self.stopping = False
        self.causes: set[str] = set()  # why it is down, as logged since it last was up
        self.thread = threading.Thread(target=self._run, name=f"rpc-send-{peer_id}", daemon=True)

    # -- called by other threads

    def enqueue(self, payload: bytes) -> None:
        with self.cond:
            self.link.enqueue(payload)
            self.cond.notify()

    def send_now(self, payload: bytes) -> bool:
        """Put a small message on the wire from the caller's thread when the link is idle.

        Saves waking the sender thread for every heartbeat of an idle cluster. The link
        decides (``can_send_direct``: nothing queued, in flight or being written, and a
        payload small enough that the socket buffer takes it without blocking); the
        message then goes through the queue like any other, as a batch of one.
        """
        with self.cond:
            c = self.conn
            if c is None or c.dead is not None or self.stopping or not self.link.can_send_direct(len(payload)):
                return False
            self.link.enqueue(payload)
            batch = self.link.next_batch()
        self._write(c, batch)
        return True

    def _write(self, c: _Conn, batch: Batch) -> None:
        """Write one batch; a failed write kills the connection (the batch counts as failed).

        The link hands out one batch at a time, so writes never interleave and the ids
        enter ``unanswered`` in the order the peer answers them."""
        c.unanswered.append(batch.id)  # before the bytes: the reply may come before the write returns
        try:
            c.chan.send(batch.frames)
        except Exception as exc:  # noqa: BLE001 - the link is broken
            with self.cond:
                self._kill(c, f"send failed: {exc or type(exc).__name__}")
            return
        with self.cond:
            self.link.sent(batch.id, time.monotonic())  # settles it if its answer came already
            if self.link.queued:
                self.cond.notify_all()

    def set_address(self, address) -> None:
        with self.cond:
            if address == self.address:
                return
            self.address = address
            self.link.address_changed(time.monotonic())
            if self.conn is not None:
                self._kill(self.conn, "peer address changed")
            self.cond.notify_all()
        self.wake.set()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            if self.conn is not None:
                self._kill(self.conn, "transport closed")
            self.cond.notify_all()
        self.wake.set()

    def status(self) -> dict:
        with self.cond:
            st = self.link.status()
        st["since"] = time.time() - (time.monotonic() - st["since"])  # wall time, as documented
        return {"address": format_address(self.address), **st}

    # -- one log line per up/down transition

    def _log_up(self, was: str | None) -> None:
        self.causes.clear()
        if was is not None:
            log.info("peer %s at %s up", self.id, format_address(self.address))

    def _log_down(self, was: str | None, reason: str, starting: bool = False) -> None:
        if was is not None and not self.stopping:
            # a peer lost is news; one whose port is not open yet (still starting) is not
            quiet = starting and was != "up"
            log.log(logging.INFO if quiet else logging.WARNING, "peer %s at %s down: %s", self.id,
                    format_address(self.address), reason)
            self.causes = {reason}

    def _log_still_down(self, reason: str) -> None:
        """A peer down already fails for a cause not logged since it was last up (nothing
        listened, now it hangs up on our hello: a node of an older release): once each,
        or its log would name only the first cause, for good."""
        if not self.stopping and reason not in self.causes and len(self.causes) < 8:
            self.causes.add(reason)
            log.warning("peer %s at %s still down: %s", self.id, format_address(self.address), reason)

    # -- the sender thread

    def _run(self) -> None:
        while not self.stopping:
            try:
                with self.cond:
                    now = time.monotonic()
                    due = self.link.start_connect(now)
                    address = self.address
                    deadline = self.link.next_deadline()
                    wait = 0.0 if due else 1.0 if deadline is None else max(0.0, deadline - now)
                if not due:
                    self.wake.wait(wait)  # the backoff; set_address and stop cut it short
                    self.wake.clear()
                    continue
                try:
                    c = self._open(address)
                except Exception as exc:  # ConnectFailed, AuthenticationFailed, remote errors
                    with self.cond:
                        was = self.link.connect_failed(str(exc), time.monotonic())
                    # nothing listening yet is no news at start; anything else (a wrong key) is
                    quiet = isinstance(exc, ConnectFailed) and exc.refused
                    self._log_down(was, str(exc), starting=quiet)
                    if was is None and not quiet:
                        self._log_still_down(str(exc))
                    continue
                with self.cond:
                    self.conn = c
                    was = self.link.connected(time.monotonic())
                    if self.stopping:
                        self._kill(c, "transport closed")
                c.reader.start()  # only now: a death it sees must find the link open, to count
                self._log_up(was)
                self._pump(c)
                self._close(c)
                self._log_down(c.was, c.dead)
            except Exception:  # a bug: keep the sender alive, but say so
                log.exception("sender thread for peer %s: unexpected error", self.id)
                with self.cond:
                    if self.conn is not None:
                        self._kill(self.conn, "internal error")
                        self.conn = None
                    elif self.link.phase == CONNECTING:
                        self.link.connect_failed("internal error", time.monotonic())
                self.wake.wait(self.owner.backoff_min)

    def _open(self, address) -> _Conn:
        o = self.owner
        chan = open_peer_channel(address, o._secret, ident=o.self_id, connect_timeout=o.connect_timeout,
                                 handshake_timeout=o.handshake_timeout, write_timeout=o.request_timeout,
                                 ssl_context=o.ssl_context, target=self.id)  # good for that node only
        c = _Conn(chan, address)
        c.reader = threading.Thread(target=self._read, args=(c,), name=f"rpc-recv-{self.id}", daemon=True)
        return c

    def _kill(self, c: _Conn, reason: str) -> None:
        """Called with self.cond held: the link learns the connection is lost (the first
        reason wins) and its socket is shut, which also wakes a thread blocked on it."""
        if c.dead is None:
            c.dead = reason
            c.was = self.link.lost(reason, time.monotonic())
            self.cond.notify_all()
        c.chan.close()

    def _close(self, c: _Conn) -> None:
        if c.reader is not None and c.reader is not threading.current_thread():
            c.reader.join(1.0)
        c.chan.close()
        with self.cond:
            if self.conn is c:
                self.conn = None

    def _check(self, c: _Conn) -> None:
        """Called with self.cond held: kill the connection if the link finds a call overdue."""
        if c.dead is None:
            reason = self.link.check(time.monotonic())
            if reason is not None:
                self._kill(c, reason)

    def _read(self, c: _Conn) -> None:
        """Reader thread: takes the peer's answer to each batch as it arrives, hands its
        messages to ``on_reply`` and tells the link; checks for overdue answers."""
        chan = c.chan
        tick = min(0.5, self.owner.request_timeout / 2)  # also how often overdue calls are checked
        try:
            while c.dead is None:
                if not chan.poll(tick):
                    with self.cond:
                        self._check(c)
                    continue
                frames = chan.recv()
                try:
                    bid = c.unanswered.popleft()
                except IndexError:
                    raise BatchError("an answer to no batch") from None
                # the link first: what on_reply does with the messages (a follower's inline
                # fsync) must not make an answered batch look overdue
                with self.cond:
                    self.link.replied(bid, time.monotonic())
                    slow = self.link.too_slow(time.monotonic())
                    self._check(c)
                    if self.link.queued:  # the sender waits for room in the window only with work queued
                        self.cond.notify_all()
                if slow is not None:
                    log.warning("peer %s at %s answers in %.2f s at best (its last %d answers), longer than the "
                                "election timeout (%g s): over such a link elections can fail again and again (the "
                                "votes come back after their candidate started over); raise [timeouts] tick or "
                                "election_ticks on every node so that tick x election_ticks is well above the round "
                                "trip (docs/operations.md)", self.id,
                                format_address(self.address), slow, ROUND_TRIPS_KEPT,
                                self.owner.settings.slow_round_trip)
                on_reply = self.owner.on_reply  # read each time: set after the first connections
                if frames and on_reply is not None:
                    try:
                        on_reply(self.id, frames)
                    except Exception:  # the receiver's problem, not the link's
                        log.exception("on_reply failed for messages from peer %s", self.id)
        except BatchError as exc:
            log.warning("peer %s at %s answered with a bad batch: %s", self.id, format_address(c.address), exc)
            with self.cond:
                self._kill(c, f"bad answer: {exc}")
        except (EOFError, OSError, ValueError) as exc:  # the connection is gone (ValueError: a closed file)
            with self.cond:
                self._kill(c, f"connection lost: {exc or type(exc).__name__}")
        except Exception as exc:  # noqa: BLE001 - a bug here, not the peer's: said loudly, the link stays whole
            log.exception("reader thread for peer %s: unexpected error", self.id)
            with self.cond:
                self._kill(c, f"internal error: {type(exc).__name__}")
        with self.cond:
            self.cond.notify_all()

    def _pump(self, c: _Conn) -> None:
        """Write the batches the link hands out until the connection dies."""
        while True:
            with self.cond:
                while True:
                    if self.stopping:
                        self._kill(c, "transport closed")
                    elif self.address != c.address:  # moved while this connection was being made
                        self._kill(c, "peer address changed")
                    else:
                        self._check(c)
                    if c.dead is not None:
                        return
                    batch = self.link.next_batch()
                    if batch is not None:
                        break
                    # Waiting for window room: poll for overdue calls. Idle: sleep until a
                    # send, a death (the reader notifies) or a second passes.
                    self.cond.wait(0.05 if self.link.in_flight and self.link.queued else 1.0)
            self._write(c, batch)


class PeerTransport:
    """Send opaque byte messages to the other nodes; never blocks the caller.

    ``peers`` maps node id -> (host, port); an entry for ``self_id`` is ignored. Per
    peer: a queue bounded by ``queue_limit`` messages and ``queue_bytes_limit`` bytes
    (the oldest are dropped and counted when full), one sender thread that batches up
    to ``max_batch_frames`` / ``max_batch_bytes`` into one batch with at most
    ``max_in_flight`` batches unanswered, a connection that is rebuilt when a call
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
        slow_round_trip: float = 0.0,
    ):
        if not isinstance(self_id, str) or not self_id:
            raise TransportError(f"self_id must be a non-empty string, got {self_id!r}")
        self.self_id = self_id
        self._secret = check_secret(secret, f"peer transport of node {self_id}")
        if queue_limit < 1 or max_batch_frames < 1 or max_in_flight < 1:
            raise TransportError("queue_limit, max_batch_frames and max_in_flight must be >= 1")
        if max_batch_frames > MAX_BATCH_FRAMES:
            raise TransportError(f"max_batch_frames must be at most {MAX_BATCH_FRAMES}, what a node reads in one batch")
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
        self.settings = LinkSettings(
            queue_limit=self.queue_limit, queue_bytes_limit=self.queue_bytes_limit,
            max_batch_frames=self.max_batch_frames, max_batch_bytes=self.max_batch_bytes,
            max_in_flight=self.max_in_flight, request_timeout=self.request_timeout,
            backoff_min=self.backoff_min, backoff_max=self.backoff_max, slow_round_trip=float(slow_round_trip))
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

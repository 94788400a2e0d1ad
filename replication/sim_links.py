"""The runtime simulator's network: each node's :class:`PeerLink` per peer, over modelled
TCP connections.

A node process holds one ``PeerLink`` per peer, as ``rpc.peer_sender`` does in
production; this module plays the sender thread, the reader thread and the socket
around it, on the simulator's heap and clocks. What the link decides (queue bounds,
drop-oldest, batching, the in-flight window, overdue detection, backoff) is the shipped
policy; what this module decides is only what the network does:

- A connect attempt takes a drawn delay and succeeds only if the peer's process is up
  and the pair is not cut at its end. Against a cut pair it fails after
  ``CONNECT_TIMEOUT``; against a peer that is down it is refused at once.
- A connection is FIFO: batches arrive in the order written, each after a drawn delay
  and never before the previous one; replies come back in order.
- A cut or a crash of either side ends a connection. The sender learns it at once when
  the connection is reset; when it drops silently (a hung peer) only overdue
  detection finds it, and only once a call is in flight. During the fault phase a
  connection also breaks, now and then, as a batch is written.
- A crash of the sender drops its links (they belong to the process).
- Loss, duplication and reordering therefore come from connection deaths: calls in
  flight on a dead connection are lost, except that a batch may still arrive late
  (the old connection's server thread was still running it, so it lands after the next
  connection's batches), or arrive once more after its connection died.

Acknowledgements travel as ordinary messages on the reverse link, not as a deliver
call's reply (``on_reply`` in production): Raft does not depend on the path.
"""
from __future__ import annotations

import random
from typing import AbstractSet, Any, Callable, Mapping, Protocol

from replication.runtime.events import PeerMsg
from replication.runtime.peer_link import OPEN, Batch, LinkSettings, PeerLink

CONNECT_TIMEOUT = 0.5  # PeerTransport's connect_timeout: what an attempt against a cut pair costs


class _Clock(Protocol):
    def now(self, t: float) -> float: ...
    def to_global(self, local: float) -> float: ...


class _Process(Protocol):
    @property
    def incarnation(self) -> int: ...


class _Phases(Protocol):
    @property
    def chaos(self) -> float: ...  # virtual seconds of the fault phase


class LinkSim(Protocol):
    """What the network needs of the simulation that owns it
    (:class:`replication.sim_runtime.RuntimeSim`): a Protocol rather than an import of
    sim_runtime, which imports this module."""

    @property
    def rng(self) -> random.Random: ...
    @property
    def t(self) -> float: ...  # virtual time now
    @property
    def cfg(self) -> _Phases: ...
    @property
    def clocks(self) -> Mapping[str, _Clock]: ...
    @property
    def nodes(self) -> Mapping[str, _Process | None]: ...  # None: the process is down
    @property
    def cut(self) -> AbstractSet[frozenset]: ...  # the pairs of nodes partitioned apart
    @property
    def max_delay(self) -> float: ...
    @property
    def p_dup(self) -> float: ...
    def at(self, when: float, fn: Callable[..., Any], *args: Any) -> None: ...
    def note(self, text: str) -> None: ...
    def post(self, node: Any, ev: PeerMsg) -> None: ...  # node: one of ``nodes``


class Conn:
    """One simulated TCP connection src -> dst (to one incarnation of dst)."""

    __slots__ = ("dst_incarnation", "dead", "hung", "arrive_at", "reply_at")

    def __init__(self, dst_incarnation: int, now: float) -> None:
        self.dst_incarnation = dst_incarnation
        self.dead = False  # the sender closed it or learned it is gone
        self.hung = False  # nothing written from now on arrives (cut, peer crashed)
        self.arrive_at = now  # when the last batch written arrives (FIFO)
        self.reply_at = now


class SimLink:
    """A node incarnation's PeerLink to one peer and the connection it holds."""

    __slots__ = ("src", "dst", "pl", "conn", "pump_due", "timer_at")

    def __init__(self, src: str, dst: str, pl: PeerLink) -> None:
        self.src, self.dst, self.pl = src, dst, pl
        self.conn: Conn | None = None
        self.pump_due = False  # the sender thread is woken
        self.timer_at: float | None = None  # a _timer action is scheduled then


class SimNetwork:
    def __init__(self, sim: LinkSim) -> None:
        self.sim = sim
        rng = sim.rng
        # swarm: the production settings in most seeds, tight queues, windows and timeouts in some
        self.settings = LinkSettings(queue_limit=rng.choice([10_000, 10_000, 24]),
                                     max_batch_frames=rng.choice([1024, 1024, 4]),
                                     max_in_flight=rng.choice([8, 8, 2]),
                                     request_timeout=rng.choice([1.0, 1.0, 0.3]),
                                     backoff_max=rng.choice([1.0, 0.25]))
        self.p_break = rng.choice([0.0, 0.002, 0.01, 0.03])  # a connection breaks as a batch is written
        self.p_silent = rng.choice([0.0, 0.3, 0.7])  # a broken connection drops silently (no reset)
        self.p_late = rng.choice([0.0, 0.05, 0.2])  # a batch on a dead connection still arrives, late
        self.links: dict[tuple[str, str], SimLink] = {}

    # -- the node's side: PeerTransport.send ------------------------------------------------
    def send(self, src: str, dst: str, payload: bytes) -> None:
        sl = self.links.get((src, dst))
        if sl is None:
            sl = self.links[(src, dst)] = SimLink(src, dst, PeerLink(
                self.settings, random.Random(self.sim.rng.getrandbits(64)), self._now(src)))
        pl = sl.pl
        direct = sl.conn is not None and pl.can_send_direct(len(payload))
        pl.enqueue(payload)
        if direct:  # the caller's thread writes it (send_now)
            self._write(sl, pl.next_batch())
            self._arm(sl)
        else:
            self._kick(sl)

    # -- the sender thread ------------------------------------------------------------------
    def _kick(self, sl: SimLink) -> None:
        pl = sl.pl
        if pl.phase == OPEN:
            if pl.queued and not sl.pump_due:
                sl.pump_due = True
                self.sim.at(self.sim.t + self.sim.rng.uniform(0.00005, 0.0005), self._pump, sl)
        else:
            self._arm(sl)  # not connected: dial when the backoff allows

    def _pump(self, sl: SimLink) -> None:
        if self.links.get((sl.src, sl.dst)) is not sl:
            return
        sl.pump_due = False
        pl = sl.pl
        while (batch := pl.next_batch()) is not None:
            self._write(sl, batch)
        self._arm(sl)

    def _write(self, sl: SimLink, batch: Batch) -> None:
        sim, c = self.sim, sl.conn
        sl.pl.sent(batch.id, self._now(sl.src))
        if self.p_break and sim.t < sim.cfg.chaos and sim.rng.random() < self.p_break:
            self._break(sl, c)
        if c.hung:
            return  # the bytes go nowhere
        c.arrive_at = max(c.arrive_at, sim.t + sim.rng.uniform(0.0001, sim.max_delay))
        sim.at(c.arrive_at, self._arrive, sl, c, batch.id, batch.frames)

    def _timer(self, sl: SimLink, when: float) -> None:
        """The reader thread's overdue check and the sender thread's backoff wait."""
        if sl.timer_at != when or self.links.get((sl.src, sl.dst)) is not sl:
            return
        sl.timer_at = None
        pl, now = sl.pl, self._now(sl.src)
        reason = pl.check(now)
        if reason is not None:
            self._lose(sl, reason)
        if pl.start_connect(now):
            self._dial(sl)
        # a deadline that stays due is polled, as the reader thread polls (every 0.5 s at most)
        self._arm(sl, self.sim.t + min(0.5, self.settings.request_timeout / 2))

    def _arm(self, sl: SimLink, poll: float | None = None) -> None:
        d = sl.pl.next_deadline()
        if d is None:
            return
        sim = self.sim
        # a microsecond late, so that the node's clock has surely passed the deadline
        when = max(sim.t, sim.clocks[sl.src].to_global(d)) + 1e-6
        if poll is not None and when <= sim.t + 1e-6:
            when = poll
        if sl.timer_at is None or when < sl.timer_at:
            sl.timer_at = when
            sim.at(when, self._timer, sl, when)

    def _lose(self, sl: SimLink, reason: str) -> None:
        c = sl.conn
        if c is not None:
            c.dead = True
            sl.conn = None
        if sl.pl.lost(reason, self._now(sl.src)) is not None:
            self.sim.note(f"{sl.src} -> {sl.dst} down: {reason}")
        self._arm(sl)

    # -- connections ------------------------------------------------------------------------
    def _dial(self, sl: SimLink) -> None:
        sim = self.sim
        if frozenset((sl.src, sl.dst)) in sim.cut:
            sim.at(sim.t + CONNECT_TIMEOUT, self._dialed, sl, "connect timed out")
        elif sim.nodes.get(sl.dst) is None:
            sim.at(sim.t + sim.rng.uniform(0.0002, 0.002), self._dialed, sl, "connection refused")
        else:  # TCP, the handshake, the root and deliver look-ups
            sim.at(sim.t + sim.rng.uniform(0.0005, 0.005), self._dialed, sl, None)

    def _dialed(self, sl: SimLink, failure: str | None) -> None:
        sim = self.sim
        if self.links.get((sl.src, sl.dst)) is not sl:
            return
        node = sim.nodes.get(sl.dst)
        if failure is None and (node is None or frozenset((sl.src, sl.dst)) in sim.cut):
            failure = "connection lost during the handshake"
        now = self._now(sl.src)
        if failure is not None:
            sl.pl.connect_failed(failure, now)
            self._arm(sl)
            return
        sl.conn = Conn(node.incarnation, sim.t)
        sl.pl.connected(now)
        self._kick(sl)

    def _break(self, sl: SimLink, c: Conn) -> None:
        """The connection stops carrying anything; the sender hears of it soon (a reset)
        or only through overdue detection (silently dropped)."""
        if c.hung or c.dead:
            return
        c.hung = True
        sim = self.sim
        if sim.rng.random() >= self.p_silent:
            sim.at(sim.t + sim.rng.uniform(0.0001, 0.002), self._reset, sl, c)

    def _reset(self, sl: SimLink, c: Conn) -> None:
        if sl.conn is c and self.links.get((sl.src, sl.dst)) is sl:
            self._lose(sl, "connection lost: connection reset by peer")

    # -- the receiving side -----------------------------------------------------------------
    def _arrive(self, sl: SimLink, c: Conn, batch_id: int, frames: list) -> None:
        sim = self.sim
        if c.hung or c.dead:  # it may or may not have made it: if so, after a while
            if self.p_late and sim.rng.random() < self.p_late:
                sim.at(sim.t + sim.rng.uniform(0.0, 0.1), self._late, sl, c, frames, False)
            return
        self._deliver(sl.src, sl.dst, c, frames)
        c.reply_at = max(c.reply_at, sim.t + sim.rng.uniform(0.0001, sim.max_delay))
        sim.at(c.reply_at, self._reply, sl, c, batch_id)
        if sim.p_dup and sim.rng.random() < sim.p_dup:  # once more, if by then this connection is gone
            sim.at(sim.t + sim.rng.uniform(0.05, 0.5), self._late, sl, c, frames, True)

    def _late(self, sl: SimLink, c: Conn, frames: list, again: bool) -> None:
        """A batch of a dead connection that the peer's server thread was still running:
        it lands after whatever the next connection carried meanwhile."""
        if (c.dead or not again) and frozenset((sl.src, sl.dst)) not in self.sim.cut:
            self._deliver(sl.src, sl.dst, c, frames)

    def _deliver(self, src: str, dst: str, c: Conn, frames: list) -> None:
        node = self.sim.nodes.get(dst)
        if node is not None and node.incarnation == c.dst_incarnation:
            for payload in frames:
                self.sim.post(node, PeerMsg(src, payload))

    def _reply(self, sl: SimLink, c: Conn, batch_id: int) -> None:
        if sl.conn is not c or c.hung or self.links.get((sl.src, sl.dst)) is not sl:
            return
        sl.pl.replied(batch_id, self._now(sl.src))
        self._kick(sl)

    # -- faults -----------------------------------------------------------------------------
    def crashed(self, nid: str) -> None:
        """``nid``'s process is gone: its own links with it, and the connections to it break."""
        for key, sl in list(self.links.items()):
            if sl.src == nid:
                del self.links[key]
                if sl.conn is not None:
                    sl.conn.dead = True
            elif sl.dst == nid and sl.conn is not None:
                self._break(sl, sl.conn)

    def cut(self, pairs: set) -> None:
        """The pairs in ``pairs`` are cut from now on: their connections break."""
        for sl in list(self.links.values()):
            if sl.conn is not None and frozenset((sl.src, sl.dst)) in pairs:
                self._break(sl, sl.conn)

    def _now(self, nid: str) -> float:
        return self.sim.clocks[nid].now(self.sim.t)

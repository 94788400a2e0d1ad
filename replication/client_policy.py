"""The client's side of the session protocol, without I/O: which node a call goes to,
how it retries, and which session number a command carries.

``rpc.client.ClusterClient`` drives these objects over RPyC connections and the runtime
simulator drives the same objects over simulated ones, so the retry and session rules
that the simulator checks for exactly-once and linearizability are the ones that ship.
No clock, socket or thread here: times are arguments, randomness an injected Random,
and a caller serialises access (the client under its lock, the simulator by running
one step at a time).

A reply is the list a node answers: ``["ok", value]``, ``["not_leader", leader_id,
leader_address]``, ``["unavailable", message]``, ``["expired", message]``,
``["rejected"|"failed", type, message]`` or ``["error", message]``.
"""
from __future__ import annotations

import math
import random
import reprlib
from collections import deque
from typing import Any, Callable, Iterable, NamedTuple

from prevalence.errors import PrevalenceError
from prevalence.sessions import MIN_EXPIRY_S
from replication.errors import NoDiskSpace, ProposalRefused

SUSPECT_FOR = 1.0  # seconds an address that failed us is tried after the others (about two elections)
BACKOFF_FIRST, BACKOFF_MAX = 0.02, 0.25  # nobody answered at all: back off, but not for long
ELECTION_PAUSE = (0.02, 0.05)  # "not the leader, none known": an election takes ~0.3 s
PROBE_AFTER = 0.25  # a call to the leader unanswered this long: ask the others who leads now
PROBE_EVERY = 0.1  # and again this often until it answers, or a new leader is named
TRIED_KEPT = 8  # what a call that runs out of time names: its last attempts
#: Seconds a free session may go unused and still be taken again: under the shortest
#: expiry a cluster allows (60 s of journaled time), with room for the journal's clock
#: to run ahead of the client's. A session unused longer may have expired, and a command
#: sent on it would be refused with its outcome unknown, though it never applied.
SESSION_REUSE_IDLE = MIN_EXPIRY_S - 15.0

_show = reprlib.Repr()
_show.maxlevel, _show.maxstring, _show.maxother, _show.maxlist = 3, 60, 60, 4


def shown(value: Any) -> str:
    """``value`` for a message, bounded in length and depth (a node's reply may be
    nested a thousand levels deep: a plain repr would raise RecursionError)."""
    return _show.repr(value)[:120]


_ARITY = {"expired": 2, "error": 2, "unavailable": 2, "failed": 3, "rejected": 3, "not_leader": 3, "compacted": 2}


def well_formed(reply: Any) -> bool:
    """A reply of the shape a node sends: a known kind with its fields (messages are
    strings; "ok" carries one value or more). Anything else is treated as no answer,
    never indexed blindly."""
    if type(reply) is not list or not reply or type(reply[0]) is not str:
        return False
    kind = reply[0]
    if kind == "ok":
        return len(reply) >= 2
    if _ARITY.get(kind) != len(reply):
        return False
    if kind == "not_leader":
        return True  # its hint fields are checked where they are used
    if kind == "compacted":
        return type(reply[1]) is int
    return all(type(x) is str for x in reply[1:])


def refusal_reply(exc: BaseException, address_of: Callable[[str | None], str | None],
                  describe: Callable[[BaseException], str]) -> list | None:
    """The reply a node gives when the framework refuses a request (not the leader, an
    error of the request, a time-out), or None for an exception that is not a refusal.
    ``rpc.service`` answers with it, and the simulator's nodes answer its clients so."""
    if isinstance(exc, NoDiskSpace) and exc.leader is None:
        # a full leader with nobody to hand over to: no node takes commands until space is
        # freed, and "not the leader, none known" would only send the client after an
        # election that is not coming; nothing was proposed, so the retry is safe
        return ["unavailable", str(exc)]
    if isinstance(exc, ProposalRefused):  # not the leader, or handing leadership over
        return ["not_leader", exc.leader, address_of(exc.leader)]
    if isinstance(exc, PrevalenceError):
        return ["error", describe(exc)]
    if isinstance(exc, TimeoutError):
        return ["unavailable", "timed out waiting for the cluster"]
    return None


class Route:
    """Where the client's calls go: the addresses it knows, the leader it was told of,
    the nodes that failed it lately (tried after the others for ``SUSPECT_FOR``), and
    those that answered lately that they know no leader (tried after the others too: a
    node cut off from its peers says so for as long as the cut lasts, while the leader
    may be one connection away)."""

    def __init__(self, addresses: Iterable[str]) -> None:
        self.addresses = list(addresses)
        self.hint: str | None = None
        self.suspect: dict[str, float] = {}  # address -> until when it is tried last
        self.leaderless: dict[str, float] = {}  # address -> until when it is tried after the others

    def order(self, now: float, first: str | None) -> list[str]:
        """The addresses to connect to, in turn: ``first`` (the leader when known), then
        the others; the ones that knew no leader lately after them, the ones that failed
        us lately last."""
        order = ([first] if first else []) + [a for a in self.addresses if a != first]
        # stable: the named leader first within its group
        order.sort(key=lambda a: (self.suspect.get(a, 0) > now, self.leaderless.get(a, 0) > now))
        return order

    def connect_order(self, now: float, main: bool = True, fallback: str | None = None) -> list[str]:
        """The order in which a line tries the nodes when it (re)connects. The main line
        consumes the hint (a later redirect sets a fresh one); another line (a
        subscription's, a further command lane) starts at the hint or at ``fallback``,
        the main line's node, where the freshest log is."""
        first = self.hint if main else (self.hint or fallback)
        if main:
            self.hint = None
        return self.order(now, first)

    def connected(self, addr: str) -> None:
        if addr not in self.addresses:
            self.addresses.append(addr)  # learnt from a hint: a member added later

    def failed(self, addr: str, now: float) -> None:
        """``addr`` did not answer (refused, lost, timed out): try it last for a while."""
        self.suspect[addr] = now + SUSPECT_FOR

    def answered(self, addr: str) -> None:
        if self.suspect:
            self.suspect.pop(addr, None)

    def is_suspect(self, addr: str, now: float) -> bool:
        return self.suspect.get(addr, 0) > now

    def redirected(self, leader_addr: str | None, now: float, by: str | None = None) -> bool:
        """A node (``by``) said it does not lead and named ``leader_addr``: go there next.
        True when no usable leader was named (none known, or one that just failed us), so
        the caller pauses while an election settles, then asks the others before ``by``."""
        unusable = leader_addr is None or self.is_suspect(leader_addr, now)
        self.hint = None if unusable else leader_addr
        if by is not None:
            if unusable:
                self.leaderless[by] = now + SUSPECT_FOR
            else:
                self.leaderless.pop(by, None)
        if leader_addr is not None:
            self.leaderless.pop(leader_addr, None)  # a leader named: it is the one to ask
        return unusable

    def leader_found(self, stuck: str, leader_addr: str, now: float) -> None:
        """While a call to ``stuck`` went unanswered, another node said it leads: the
        caller drops the stuck connection and retries there."""
        self.hint = leader_addr
        self.failed(stuck, now)


def leader_among(statuses: Iterable[tuple[str, dict | None]]) -> str | None:
    """Of the nodes' answers to a status call (None: no answer), the address of the one
    that says it leads in the newest epoch, then the highest term; None when none does.
    A node that knows a later epoch exists (``superseded_by``: a peer of it dialled this
    one) was left out of a ``cluster recover``: its leadership is none of the cluster's."""
    best: tuple[int, int, str] | None = None
    for addr, st in statuses:
        if type(st) is not dict or st.get("role") != "leader" or type(st.get("term")) is not int:
            continue  # no answer, or not a leader's (or not a status at all)
        if type(st.get("superseded_by")) is int:
            continue
        epoch = st.get("epoch") if type(st.get("epoch")) is int else 0  # a release before epochs: none
        if best is None or (epoch, st["term"]) > best[:2]:
            best = (epoch, st["term"], addr)
    return None if best is None else best[2]


class Step(NamedTuple):
    """What a call does next: ``done`` (return ``reply``), or retry after ``pause``
    seconds, with the current connection dropped first when ``drop``."""

    done: bool
    reply: list | None = None
    pause: float = 0.0
    drop: bool = False


class Attempts:
    """One call's retries until its deadline: every retry carries the same request, so
    a command keeps its session number and applies at most once."""

    def __init__(self, route: Route, method: str, deadline: float, rng: random.Random,
                 any_node: bool = False) -> None:
        self.route, self.method, self.deadline, self.any_node = route, method, deadline, any_node
        self.rng = rng
        self.tried: deque[str] = deque(maxlen=TRIED_KEPT)
        # two backoffs: when nobody accepts a connection, and when a node keeps refusing
        # with "unavailable" (one that refuses at once must not make us spin)
        self._backoff = {"unreachable": BACKOFF_FIRST, "unavailable": BACKOFF_FIRST}
        self._reopened = False  # a connection found closed by its node was opened again

    def _pause_for(self, why: str, now: float) -> float:
        """The next jittered pause of the backoff ``why``, never past the deadline; it doubles, up to BACKOFF_MAX."""
        b = self._backoff[why]
        self._backoff[why] = min(b * 2, BACKOFF_MAX)
        return min(b * self.rng.uniform(0.5, 1.0), max(0.0, self.deadline - now))

    def over(self, now: float) -> bool:
        return now >= self.deadline

    def why_over(self, closed: bool) -> str:
        """The one-line reason a call that ran out of time (or was closed) gives."""
        causes = list(dict.fromkeys(reversed(self.tried)))[::-1]  # each once, where it was last seen
        what = "closed" if closed else ("no leader answered within the deadline; tried "
                                        f"{', '.join(causes) or 'nothing'}")
        return f"{self.method}: {what}"

    def unreachable(self, why: str, now: float) -> float:
        """No node accepted a connection: how long to wait before trying them again."""
        for cause in why.split("; "):  # one round names each address: each is bounded, not the round
            self.tried.append(cause[:200])
        return self._pause_for("unreachable", now)

    def closed(self, addr: str, why: str, now: float) -> Step:
        """The connection to ``addr`` was closed by the node's side (end of stream,
        reset). Once in a call, no sign against the node: a node at its connection limit
        closes the one silent the longest, so ask it again first (a node that died
        refuses the connection at once, and is then tried last). Again: as :meth:`lost`."""
        if self._reopened:
            return self.lost(addr, why, now)
        self._reopened = True
        self.tried.append(f"{addr}: {why}"[:200])
        self.route.hint = addr
        return Step(False, drop=True)

    def lost(self, addr: str, why: str, now: float) -> Step:
        """The call to ``addr`` failed without an answer (connection lost, timed out)."""
        self.tried.append(f"{addr}: {why}"[:200])
        self.route.failed(addr, now)
        return Step(False, drop=True)

    def answered(self, addr: str, reply: Any, now: float) -> Step:
        """``addr`` answered ``reply``: return it, or retry where it points."""
        if not well_formed(reply):
            return self.lost(addr, f"malformed reply {shown(reply)}", now)  # not a node of ours, or broken
        self.route.answered(addr)
        kind = reply[0]
        if kind == "not_leader" and not self.any_node:
            leader_id = reply[1]
            leader_addr = reply[2] if type(reply[2]) is str else None
            self.tried.append(f"{addr}: not the leader (hint: {shown(leader_id)} at {shown(leader_addr)})")
            if leader_addr == addr:
                leader_addr = None  # a node that names itself and refuses: no usable leader
            if self.route.redirected(leader_addr, now, by=addr):
                pause = self.rng.uniform(*ELECTION_PAUSE)
                return Step(False, pause=min(pause, max(0.0, self.deadline - now)), drop=True)
            return Step(False, drop=True)
        if kind == "unavailable":
            self.tried.append(f"{addr}: {reply[1][:200]}")
            # the same request again (the session makes the retry safe)
            return Step(False, pause=self._pause_for("unavailable", now))
        return Step(True, reply)


class Session:
    """A client session: its id and the number its next command carries."""

    __slots__ = ("id", "next_seq", "idle_since", "idle_before")

    def __init__(self, sid: int) -> None:
        self.id, self.next_seq = sid, 1
        self.idle_since: float | None = None  # when it was last given back (monotonic)
        self.idle_before = 0.0  # seconds it had been unused when last taken


class SessionPool:
    """The sessions of one client. A command takes one (a new one is registered when
    none is free) and numbers itself ``next_seq``; whatever became of it, the number is
    never reused. A session the cluster expired is dropped: its numbers mean nothing
    there any more, and reusing it would only be refused again. So are the other idle
    ones: they have been idle about as long (a client that pipelined once holds dozens),
    and each would cost one more command refused with an unknown outcome.

    The pool learns from such a refusal: a free session unused for about as long as the
    expired one had been (3/4 of it, never under ``SESSION_REUSE_IDLE``) is replaced, not
    taken again, so a client that stays open for days meets the cluster's expiry once,
    not after every pause; before any expiry is seen, sessions are reused however long
    they waited (a cluster's default expiry is a day: no registration per pause)."""

    def __init__(self) -> None:
        self.free: list[Session] = []  # the most recently given back last
        self.reuse_idle = math.inf  # seconds unused after which a session is replaced (learnt)

    def take(self, now: float | None = None) -> Session | None:
        """A free session, or None: the caller registers one and wraps it in ``Session``."""
        while self.free:
            session = self.free.pop()
            idle = 0.0 if now is None or session.idle_since is None else now - session.idle_since
            if idle < self.reuse_idle:
                session.idle_before = idle
                return session
            self.free.clear()  # given back before this one: idle longer still
        return None

    def release(self, session: Session, seq: int, reply: list | None, now: float | None = None) -> None:
        session.next_seq = seq + 1  # whether or not that command applied
        session.idle_since = now
        if reply is None or reply[0] != "expired":
            self.free.append(session)
        else:
            self.free.clear()
            if session.idle_before > 0:  # the cluster's expiry is about this long, or shorter
                self.reuse_idle = max(SESSION_REUSE_IDLE, min(self.reuse_idle, 0.75 * session.idle_before))

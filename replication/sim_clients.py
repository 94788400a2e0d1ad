"""The runtime simulator's application and clients.

The application is a map of lists (:class:`Lists`) pushed to by :class:`Push` and read
by :class:`Items`; :class:`ListsModel` is its model for the linearizability check.

:class:`SimClient` is an operator's client in the simulation. Its decisions are
``replication.client_policy``'s, the code ``rpc.client.ClusterClient`` runs: which
node to connect to (the leader it was told of first, nodes that failed it lately last),
what a reply means (redirect, pause for an election, retry the same request), the
backoff when nobody answers, the call's deadline, the session pool (a command's number
is never reused; an expired session is dropped), and the watch that leaves a leader
that stopped answering once another node says it leads. What it supplies is what
RPyC supplies in production: a connection to a node, a request posted into its inbox,
and the reply or its absence. A node's answer becomes the reply list
``rpc.service`` would send for it.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import prevalence
from prevalence.codec import CODEC
from prevalence.sessions import RegisterSession
from replication.client_policy import (
    PROBE_AFTER, PROBE_EVERY, Attempts, Route, Session, SessionPool, leader_among, refusal_reply,
)
from replication.linearizability import Operation, partition
from replication.ready import Role
from replication.runtime.events import Propose, Read


class Lists:
    """The simulated application's state: key -> the items appended, in order."""

    def __init__(self) -> None:
        self.data: dict[str, list[str]] = {}


@dataclass(frozen=True)
class Push(prevalence.Transaction, name="sim.Push"):
    key: str
    item: str

    def execute(self, root: Lists, ctx: prevalence.Context) -> int:
        items = root.data.setdefault(self.key, [])
        items.append(self.item)
        return len(items)


@dataclass(frozen=True)
class Items(prevalence.Query, name="sim.Items"):
    key: str

    def run(self, root: Lists) -> tuple:
        return tuple(root.data.get(self.key, ()))


class ListsModel:
    """The linearizability model of :class:`Lists`, one key at a time: push((key, item))
    returns the list's new length, read(key) the items."""

    def init(self) -> tuple:
        return ()

    def step(self, state: tuple, op: str, arg: Any, result: Any) -> tuple[bool, tuple]:
        if op == "push":
            new = state + (arg[1],)
            return result is None or result == len(new), new
        return result == state, state

    def step_unknown(self, state: tuple, op: str, arg: Any) -> tuple:
        return state + (arg[1],) if op == "push" else state

    def partition_key(self, op: str, arg: Any) -> str:
        return arg[0] if op == "push" else arg

    def partition(self, operations: Any) -> dict:
        return partition(self, operations)


class Violation(Exception):
    """An invariant broke: the seed fails."""




def reply_of(kind: str, value: Any, exc: BaseException | None) -> list:
    """The reply ``rpc.service`` sends for a node's answer to a request of ``kind``
    ("register", "execute" or "read")."""
    if exc is None:
        return list(value) if kind == "execute" else ["ok", value]  # a session's reply is the reply
    refusal = refusal_reply(exc, lambda leader: leader, str)  # addresses are node ids here
    if refusal is not None:
        return refusal
    raise Violation(f"{kind}: the node answered with {type(exc).__name__}: {exc}")


class SimClient:
    """One client thread: pushes and linearizable reads, one at a time, each a call
    retried as ``replication.client_policy`` decides until its deadline."""

    TIMEOUT = 10.0  # a call's deadline (ClusterClient's default)
    ATTEMPT_TIMEOUT = 1.5  # an attempt unanswered this long: the connection is dropped (the default)

    def __init__(self, sim: Any, k: int) -> None:
        self.sim, self.id = sim, f"c{k + 1}"
        self.rng = random.Random(sim.rng.getrandbits(64))
        self.timeout = self.rng.choice([self.TIMEOUT, 2.0, 1.0])  # what its caller passes, if anything
        self.route = Route(sim.rng.sample(sim.ids, len(sim.ids)))  # the order the operator listed them
        self.sessions = SessionPool()
        self.conn: tuple[str, int] | None = None  # (node, incarnation) connected to
        self.call: Attempts | None = None
        self.request: tuple | None = None  # ("register",) | ("execute", key, item, session) | ("read", key)
        self.session: Session | None = None  # the one the command under way took
        self.seq = 0  # the number the command under way carries
        self.attempt = 0  # bumped by every attempt: a late answer to an earlier one is ignored
        self.sent: list[str] = []
        self.acked: list[tuple[str, str]] = []
        self.history: list[Operation] = []  # what this client saw, for the linearizability check
        self.called = 0.0  # when the operation under way was first sent
        self.pending_key = ""  # the key of a push waiting for its session to be registered
        self.finished = False
        self.done = 0
        self.served_healed = False  # a command begun after the faults ended was acknowledged

    def start(self) -> None:
        self._next()

    # -- one call ---------------------------------------------------------------------------
    def _begin(self, method: str, request: tuple, deadline: float | None = None) -> None:
        deadline = self.sim.t + self.timeout if deadline is None else deadline
        self.call = Attempts(self.route, method, deadline, self.rng)
        self.request = request
        self._try(self.attempt)

    def _try(self, attempt: int) -> None:
        sim, call = self.sim, self.call
        if attempt != self.attempt or self.finished:
            return
        self.attempt += 1
        attempt = self.attempt
        if call.over(sim.t):
            self._gave_up(call.why_over(False))
            return
        if self.conn is not None and sim.alive(*self.conn) is None:
            # the node restarted or is down: the connection was reset, as a call on it finds
            self._lost(attempt, "connection reset")
            return
        if self.conn is None:
            self.conn = self._connect()
            if self.conn is None:
                sim.at(sim.t + call.unreachable("no node accepted a connection", sim.t), self._try, attempt)
                return
        node = sim.alive(*self.conn)
        token = sim.token(lambda value, exc: self._answer(attempt, value, exc))
        kind = self.request[0]
        if kind == "read":
            sim.post(node, Read(Items(self.request[1]), token))
        elif kind == "register":
            sim.post(node, Propose(CODEC.to_plain(RegisterSession()), None, token))
        else:
            _kind, key, item, session = self.request
            sim.post(node, Propose(CODEC.to_plain(Push(key, item)), session, token))
        sim.at(sim.t + self.ATTEMPT_TIMEOUT, self._timed_out, attempt)  # a connection's request timeout
        sim.at(sim.t + PROBE_AFTER, self._probe, attempt)

    def _connect(self) -> tuple[str, int] | None:
        """The first node in the route's order that is up: a connection to it."""
        sim, route = self.sim, self.route
        for nid in route.connect_order(sim.t):
            node = sim.nodes.get(nid)
            if node is not None:
                route.connected(nid)
                return nid, node.incarnation
            route.failed(nid, sim.t)  # connection refused
        return None

    def _lost(self, attempt: int, why: str) -> None:
        if attempt != self.attempt or self.finished:
            return
        step = self.call.lost(self.conn[0], why, self.sim.t)
        self._follow(step)

    def _timed_out(self, attempt: int) -> None:
        self._lost(attempt, f"no answer within {self.ATTEMPT_TIMEOUT:g} s")

    def _probe(self, attempt: int) -> None:
        """The leader watch: the call is unanswered; does another node lead now?"""
        if attempt != self.attempt or self.finished:
            return
        sim, stuck = self.sim, self.conn[0]
        answers = []
        for nid in sim.ids:
            node = sim.nodes.get(nid)
            if nid != stuck and node is not None:
                role = "leader" if node.machine.role == Role.LEADER else "other"
                answers.append((nid, {"role": role, "term": node.core.term}))
        found = leader_among(answers)
        if found is None:
            sim.at(sim.t + PROBE_EVERY, self._probe, attempt)
            return
        self.route.leader_found(stuck, found, sim.t)
        self._lost(attempt, "left for the node that leads now")

    def _answer(self, attempt: int, value: Any, exc: BaseException | None) -> None:
        if attempt != self.attempt or self.finished:
            return  # an answer to an attempt given up: the retry carries the same seq
        step = self.call.answered(self.conn[0], reply_of(self.request[0], value, exc), self.sim.t)
        if step.done:
            self.attempt += 1
            self._done(step.reply)
        else:
            self._follow(step)

    def _follow(self, step: Any) -> None:
        self.attempt += 1  # the attempt is over: its timer and watch must not fire again
        if step.drop:
            self.conn = None
        self.sim.at(self.sim.t + max(step.pause, 1e-6), self._try, self.attempt)

    # -- the operations ---------------------------------------------------------------------
    def _done(self, reply: list) -> None:
        sim, kind = self.sim, self.request[0]
        if reply[0] == "error":
            raise Violation(f"{self.id}: the node refused a well-formed request: {reply[-1]}")
        if kind == "register":  # the push goes on under the deadline it began with
            self.session = Session(reply[1])
            self._push(self.pending_key, self.call.deadline)
            return
        if kind == "read":
            self.history.append(Operation(self.id, self.called, sim.t, "read", self.request[1], reply[1]))
            self._finish()
            return
        _kind, key, item, (sid, seq) = self.request
        self.sessions.release(self.session, seq, reply)
        if reply[0] == "ok":
            self.history.append(Operation(self.id, self.called, sim.t, "push", (key, item), reply[1]))
            self.acked.append((key, item))
            self.served_healed |= self.called >= sim.cfg.chaos
            sim.note(f"{self.id}: {item} acknowledged by {self.conn[0] if self.conn else '?'}")
        elif reply[0] == "expired":  # SessionExpired: whether it applied is unknown
            self.history.append(Operation(self.id, self.called, None, "push", (key, item)))
        else:
            raise Violation(f"{self.id}: unexpected reply {reply!r:.120}")
        self._finish()

    def _gave_up(self, why: str) -> None:
        """ClusterUnavailable: the operation's outcome is unknown; the next one goes on."""
        self.sim.note(f"{self.id}: {why[:160]}")
        if self.request[0] == "execute":
            _kind, key, item, (sid, seq) = self.request
            self.sessions.release(self.session, seq, None)
            self.history.append(Operation(self.id, self.called, None, "push", (key, item)))
        self._finish()

    def _finish(self) -> None:
        self.done += 1
        self.session = None
        self._next()

    def _next(self) -> None:
        sim = self.sim
        if self.done >= sim.cfg.ops and sim.t < sim.cfg.chaos:  # its last command waits for the end of the faults
            sim.at(sim.cfg.chaos, self._next)
            return
        # liveness: the client goes on until, the faults over, the cluster takes a command of it
        if self.done >= sim.cfg.ops and self.served_healed:
            self.finished = True
            return
        key = f"k{sim.rng.randrange(sim.cfg.keys)}"
        self.called = sim.t + sim.rng.uniform(0.0, 0.02)
        if sim.rng.random() < 0.3 and self.done < sim.cfg.ops:  # a linearizable read (ReadIndex) of one key
            sim.at(self.called, self._begin, "query", ("read", key))
            return
        sim.at(self.called, self._command, key)

    def _command(self, key: str) -> None:
        self.session = self.sessions.take()
        if self.session is None:  # registered through the log, then the push
            self.pending_key = key
            self._begin("register_session", ("register",))
            return
        self._push(key)

    def _push(self, key: str, deadline: float | None = None) -> None:
        seq = self.session.next_seq
        item = f"{self.id}:{self.session.id}:{seq}"
        self.sent.append(item)
        self._begin("execute_batch", ("execute", key, item, (self.session.id, seq)), deadline)

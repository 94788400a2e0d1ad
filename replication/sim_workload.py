"""Simulated clients: key-value operations with retries across nodes.

A client runs one operation at a time. A write carries (client, seq) so that the
state machine applies it at most once however often it is retried; a read goes
through ReadIndex. What each client observed is recorded as a history for the
linearizability checker: a write that was never confirmed has an unknown outcome.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from replication.errors import ProposalRefused
from replication.linearizability import Operation
from replication.sim_host import SimHost, SimTime, encode_command

TICK = 100  # virtual time units per base tick


class _Timeouts(Protocol):
    @property
    def attempt_ticks(self) -> int: ...  # an attempt waits this long for its answer
    @property
    def give_up_ticks(self) -> int: ...  # an operation is abandoned after this long


class ClientSim(SimTime, Protocol):
    """What a client needs of the simulation that runs it (:class:`replication.sim.Simulation`):
    a Protocol rather than an import of sim, which imports this module."""

    @property
    def cfg(self) -> _Timeouts: ...
    @property
    def ids(self) -> Sequence[str]: ...
    @property
    def hosts(self) -> dict[str, SimHost]: ...
    @property
    def history(self) -> list[Operation]: ...  # what the clients observed, for the checker

    def schedule(self, at: int, kind: str, arg: object) -> None: ...
    def trace(self, line: str) -> None: ...


@dataclass
class PendingOp:
    seq: int
    op: str
    arg: object
    call: int
    give_up_at: int
    node: str | None = None
    deadline: int = 0
    attempts: int = 0
    ctxs: set = field(default_factory=set)


class Client:
    def __init__(self, sim: ClientSim, client_id: str, record: bool = True, keys: tuple = ("k0", "k1")) -> None:
        self.sim = sim
        self.id = client_id
        self.record = record
        self.keys = keys
        self.seq = 0
        self.op: PendingOp | None = None
        self.hint: str | None = None
        self.completed = 0
        self.stopped = False

    # ---------------------------------------------------------------- driving
    def wake(self) -> None:
        sim = self.sim
        if self.op is None:
            if not self.stopped:
                self._start()
            return
        op = self.op
        if sim.now >= op.give_up_at:
            self._give_up()
        elif sim.now >= op.deadline:
            self._attempt()

    def _start(self) -> None:
        sim = self.sim
        rng = sim.rng
        self.seq += 1
        kind = rng.choice(("put", "add", "get", "get")) if self.record else "put"
        # registers (put/get) and counters (add/get) live under distinct keys
        if kind == "put":
            arg: object = (rng.choice(self.keys), f"{self.id}.{self.seq}")
        elif kind == "add":
            arg = ("n" + rng.choice(self.keys), rng.randint(1, 9))
        else:
            key = rng.choice(self.keys)
            arg = key if rng.random() < 0.5 else "n" + key
        self.op = PendingOp(self.seq, kind, arg, sim.now, sim.now + sim.cfg.give_up_ticks * TICK)
        self._attempt()

    def _attempt(self) -> None:
        sim = self.sim
        op = self.op
        op.attempts += 1
        ids = sim.ids
        if self.hint in sim.hosts and op.attempts % 4 != 0:
            target = self.hint
        else:
            target = ids[sim.rng.randrange(len(ids))]
        self.hint = None
        op.node = target
        op.deadline = sim.now + sim.cfg.attempt_ticks * TICK
        host = sim.hosts[target]
        if not host.up:  # connection refused: try elsewhere soon
            op.deadline = sim.now + TICK
            sim.schedule(sim.now + TICK, "client", self.id)
            return
        sim.schedule(op.deadline, "client", self.id)
        if host.paused_until > sim.now:
            return  # the call hangs until our deadline
        node = host.node
        try:
            if op.op == "get":
                ctx = f"{self.id}:{op.seq}:{op.attempts}".encode()
                host.reads[ctx] = (self.id, op.arg)
                op.ctxs.add(ctx)
                node.read_index(ctx)
            else:
                index = node.propose(encode_command(self.id, op.seq, op.op, list(op.arg)))
                host.pending[index] = (self.id, op.seq)
        except ProposalRefused as exc:
            host.reads.pop(f"{self.id}:{op.seq}:{op.attempts}".encode(), None)
            self.hint = exc.leader
            op.deadline = sim.now + sim.rng.randint(1, 3) * TICK // 2
            sim.schedule(op.deadline, "client", self.id)
            return
        sim.trace(f"{self.id} {op.op}{op.arg} seq={op.seq} via {target}")
        host.process()

    def _give_up(self) -> None:
        op = self.op
        if op.op != "get":
            self._record(op, None, None)  # outcome unknown: it may still be applied
        self.sim.trace(f"{self.id} gives up {op.op}{op.arg} seq={op.seq}")
        self.op = None
        self.sim.schedule(self.sim.now + TICK, "client", self.id)

    def _record(self, op: PendingOp, ret: int | None, result: object) -> None:
        if self.record:
            self.sim.history.append(Operation(self.id, op.call, ret, op.op, op.arg, result))

    def _finish(self, result: object) -> None:
        op = self.op
        self._record(op, self.sim.now, result)
        self.sim.trace(f"{self.id} ok {op.op}{op.arg} -> {result!r}")
        self.op = None
        self.completed += 1
        self.sim.schedule(self.sim.now + self.sim.rng.randint(0, 3) * TICK, "client", self.id)

    # ---------------------------------------------------------------- host callbacks
    def write_done(self, seq: int, result: object) -> bool:
        op = self.op
        if op is None or op.seq != seq or op.op == "get":
            return False
        self._finish(result)
        return True

    def read_done(self, ctx: bytes, value: object) -> None:
        op = self.op
        if op is not None and ctx in op.ctxs:
            self._finish(value)

    def attempt_failed(self, seq: int, node: str) -> None:
        op = self.op
        if op is not None and op.seq == seq and op.node == node:
            op.deadline = self.sim.now
            self.sim.schedule(self.sim.now + TICK // 4, "client", self.id)

    def finalize(self) -> None:
        """End of run: a write still in flight has an unknown outcome."""
        if self.op is not None and self.op.op != "get":
            self._record(self.op, None, None)
        self.op = None

"""The runtime simulator's node process: :class:`SimNode` and its :class:`Clock`.

A :class:`SimNode` is what one node process holds, built by
:func:`replication.runtime.assemble.assemble` as the threaded node builds it (storage,
state machine, core, machine) on its :class:`~prevalence.simfs.SimFileSystem`, with
the disk lane's :class:`~replication.persist.DiskWorker`, the apply lane's
:class:`~replication.apply.Applier`, its inbox and the two lanes' queues. A crash drops
the SimNode; its disk and its :class:`Clock` stay with the simulation, which schedules
everything (:mod:`replication.sim_runtime`).
"""
from __future__ import annotations

import random
from collections import deque
from typing import Any, Protocol

from prevalence.simfs import SimFileSystem
from replication.apply import Applier
from replication.membership import Membership
from replication.persist import DiskWorker
from replication.runtime.assemble import NodeOptions, assemble
from replication.runtime.events import DiskState, DiskWork, Persisted
from replication.sim_clients import Lists


class NodeHost(Protocol):
    """What a node process needs of the simulation that runs it
    (:class:`replication.sim_runtime.RuntimeSim`): a Protocol rather than an import of
    sim_runtime, which imports this module."""

    ids: list[str]
    opts: NodeOptions
    rng: random.Random
    t: float
    clocks: dict[str, Clock]

    def send(self, src: str, dst: str, payload: bytes) -> None: ...
    def post(self, node: SimNode, ev: Any) -> None: ...
    def complete(self, token: int, value: Any, exc: BaseException | None) -> None: ...


class SimNode:
    """One node process: its parts, its inbox and its two lanes. A crash drops it all;
    only its SimFileSystem survives, cut back to what a power cut leaves."""

    def __init__(self, sim: NodeHost, nid: str, fs: SimFileSystem, incarnation: int) -> None:
        self.sim, self.id, self.fs, self.incarnation = sim, nid, fs, incarnation
        clock = sim.clocks[nid]
        parts = assemble(nid, f"/data/{nid}", Lists, Membership(tuple(sim.ids)), sim.opts, fs=fs,
                         rng=random.Random(sim.rng.getrandbits(64)), now=clock.now(sim.t))
        self.storage, self.sm, self.core, self.machine = parts
        self.applier = Applier(nid, self.sm, self.storage, sim.complete)
        self.disk = DiskWorker(self.storage, lambda dst, p: sim.send(nid, dst, p),
                               lambda seqs: sim.post(self, Persisted(seqs)), lambda full: sim.post(self, DiskState(full)))
        self.inbox: list = []
        self.disk_q: deque[DiskWork] = deque()
        self.apply_q: deque[tuple] = deque()
        self.drain_at: float | None = None  # a drain is scheduled
        self.disk_busy = self.apply_busy = False
        self.timer_gen = 0
        self.slow_disk = 0.0  # extra seconds per disk batch while the disk is slow
        self.fail_fsync = False


class Clock:
    """A node's clocks: monotonic time drifts; wall time drifts and jumps both ways."""

    def __init__(self, rng: random.Random) -> None:
        self.rate = 1.0 + rng.uniform(-0.01, 0.01)
        self.offset = rng.uniform(0, 1000.0)
        self.wall_base = 1_700_000_000_000_000 + int(rng.uniform(-2e6, 2e6))
        self.jump_us = 0

    def now(self, t: float) -> float:
        return self.offset + t * self.rate

    def to_global(self, local: float) -> float:
        return (local - self.offset) / self.rate

    def wall_us(self, t: float) -> int:
        return self.wall_base + int(t * self.rate * 1e6) + self.jump_us

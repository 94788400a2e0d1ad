"""A simulated host: drives one RaftNode the way the real runtime will.

It owns the node's "disk" (a MemoryStorage that survives crashes), a small key-value
state machine with client sessions (exactly-once: a retried command is applied once),
and the host half of the Ready contract, including a torn last write on a crash.
"""
from __future__ import annotations

import random
from collections import deque
from typing import TYPE_CHECKING, Protocol

import msgpack

from prevalence.entry import Entry, EntryKind
from replication.config import RaftConfig
from replication.core import RaftNode
from replication.membership import Membership
from replication.storage import MemoryStorage

if TYPE_CHECKING:  # pragma: no cover
    from replication.messages import Message
    from replication.sim_check import Checker

_COMMAND = int(EntryKind.COMMAND)


class SimTime(Protocol):
    """The simulation's randomness and clock, which its hosts and clients share."""

    @property
    def rng(self) -> random.Random: ...  # the seed's one source of randomness
    @property
    def now(self) -> int: ...  # virtual time


class HostSim(SimTime, Protocol):
    """What a host needs of the simulation that runs it (:class:`replication.sim.Simulation`):
    a Protocol rather than an import of sim, which imports this module."""

    @property
    def check(self) -> "Checker": ...

    def schedule(self, at: int, kind: str, arg: object) -> None: ...
    def send(self, m: "Message") -> None: ...
    def disk_latency(self) -> int: ...
    def trace(self, line: str) -> None: ...
    def count(self, what: str) -> None: ...
    # answers to the clients
    def write_done(self, client: str, seq: int, result: object, entry: Entry, node: str) -> None: ...
    def read_done(self, client: str, ctx: bytes, value: object, node: str) -> None: ...
    def attempt_failed(self, client: str, seq: int, node: str) -> None: ...


def encode_command(client: str, seq: int, op: str, arg: object) -> bytes:
    return msgpack.packb([client, seq, op, arg], use_bin_type=True)


class KVStateMachine:
    """Keys to values, plus each client's last (seq, result) for deduplication."""

    def __init__(self) -> None:
        self.data: dict[str, object] = {}
        self.sessions: dict[str, tuple[int, object]] = {}
        self.index = 0

    def apply(self, index: int, data: bytes) -> tuple[str, int, object]:
        client, seq, op, arg = msgpack.unpackb(data, raw=False, use_list=False)
        last = self.sessions.get(client)
        if last is not None and seq <= last[0]:
            result = last[1] if seq == last[0] else None  # duplicate: not applied again
        else:
            if op == "put":
                key, value = arg
                self.data[key] = value
                result = None
            elif op == "add":
                key, n = arg
                result = self.data[key] = (self.data.get(key) or 0) + n
            else:
                result = None
            self.sessions[client] = (seq, result)
        self.index = index
        return client, seq, result

    def dump(self) -> bytes:
        return msgpack.packb(
            [sorted(self.data.items()), sorted((c, list(v)) for c, v in self.sessions.items())], use_bin_type=True
        )

    @classmethod
    def load(cls, data: bytes, index: int) -> "KVStateMachine":
        sm = cls()
        if data:
            items, sessions = msgpack.unpackb(data, raw=False, use_list=False)
            sm.data = {k: v for k, v in items}
            sm.sessions = {c: (s, r) for c, (s, r) in sessions}
        sm.index = index
        return sm


class SimHost:
    def __init__(self, sim: HostSim, node_id: str, membership: Membership, config: RaftConfig) -> None:
        self.sim = sim
        self.id = node_id
        self.config = config
        self.disk = MemoryStorage(membership)
        self.node: RaftNode | None = None
        self.sm = KVStateMachine()
        self.paused_until = 0
        self.tick_period = 100
        self.torn_next_write = False
        # writes handed to the "disk", in order: (ready, ops). The head is being written;
        # with async storage writes more may wait behind it (sync: at most one).
        self.writes: deque[tuple] = deque()
        self.incarnation = 0
        self.crash_times: dict[int, int] = {}  # incarnation -> when it crashed
        self.pending: dict[int, tuple[str, int]] = {}  # index -> (client, seq) proposed here
        self.reads: dict[bytes, tuple[str, str]] = {}  # ctx -> (client, key)
        self.start()

    @property
    def up(self) -> bool:
        return self.node is not None

    def start(self) -> None:
        snap = self.disk.snapshot()
        self.sm = KVStateMachine.load(snap.data, snap.meta.index)
        cfg = RaftConfig(**{k: getattr(self.config, k) for k in self.config.__slots__})
        cfg.applied = snap.meta.index
        self.node = RaftNode(self.id, self.disk, cfg, random.Random(self.sim.rng.getrandbits(64)))
        self.sim.check.on_restart(self)

    def crash(self) -> None:
        """Lose everything not on disk; the write in flight is torn (a random prefix of
        its operations reached the disk) and writes queued behind it are lost."""
        if self.writes:
            ops = self.writes[0][1]
            k = self.sim.rng.randrange(len(ops) + 1)
            self._write(ops[:k])
            self.sim.trace(f"{self.id} crashes mid-write: {k}/{len(ops)} writes done, {len(self.writes) - 1} queued lost")
            self.sim.count("torn_write")
            self.writes.clear()
        self.crash_times[self.incarnation] = self.sim.now  # the end of that incarnation
        self.incarnation += 1
        self.node = None
        self.torn_next_write = False
        self.sm = KVStateMachine()
        self.pending.clear()
        self.reads.clear()

    # ---------------------------------------------------------------- the Ready loop
    def process(self) -> None:
        """Handle Readies until none is left (sync writes: or a disk write is in flight).

        Immediate messages leave at once; a write takes a random disk latency during
        which the node keeps receiving messages; when it completes, the persisted
        messages leave. Sync writes (the core's default): the Ready is then applied and
        advanced, one write at a time. Async writes (``async_storage_writes``): the
        Ready is advanced at once, its committed entries (durable here already) are
        applied at once, and writes queue up in order; each completion is reported
        with ``persisted``, which is when a leader counts its own entries.
        """
        sim = self.sim
        async_writes = self.config.async_storage_writes
        while self.node is not None and (async_writes or not self.writes) and self.node.has_ready():
            rd = self.node.ready()
            sim.check.on_ready(self, rd)
            for m in rd.messages:
                sim.send(m)
            ops = []
            if rd.snapshot is not None:
                ops.append(("snapshot", rd.snapshot))
            if rd.truncate_from is not None:
                ops.append(("truncate", rd.truncate_from))
            for e in rd.entries:
                ops.append(("append", e))
            if rd.hard_state is not None:
                ops.append(("hardstate", rd.hard_state))
            if async_writes:
                if ops or (self.writes and rd.persisted_messages):
                    self._queue_write(rd, ops)
                else:
                    for m in rd.persisted_messages:
                        sim.send(m)
                if self.node is None:
                    return  # crashed in that write
                self._applied(rd)
                self.node.advance(rd)
                continue
            self._queue_write(rd, ops)
            if self.writes and self.node is not None:
                return  # the disk is busy: the rest waits for write_done

    def _queue_write(self, rd, ops: list) -> None:
        self.writes.append((rd, ops))
        if len(self.writes) == 1:
            self._start_write()

    def _start_write(self) -> None:
        """Begin the head write: a crash may be due in it, or it takes a disk latency."""
        sim = self.sim
        while self.writes:
            ops = self.writes[0][1]
            if self.torn_next_write and ops and (self.torn_next_write is True or self._changes_vote(ops)):
                self.crash()  # dies in the middle of this write
                return
            latency = sim.disk_latency() if ops else 0
            if latency:
                sim.schedule(sim.now + latency, "write_done", (self.id, self.incarnation))
                return
            self._complete(*self.writes.popleft())

    def _changes_vote(self, ops: list) -> bool:
        hs = self.disk.hard_state
        return any(k == "hardstate" and (a.term, a.vote) != (hs.term, hs.vote) for k, a in ops)

    def write_done(self, incarnation: int) -> None:
        if incarnation != self.incarnation or not self.writes:
            return
        self._complete(*self.writes.popleft())
        self._start_write()
        self.process()

    def _complete(self, rd, ops: list) -> None:
        sim = self.sim
        self._write(ops)
        for m in rd.persisted_messages:
            sim.send(m)
        if rd.snapshot is not None:
            self.sm = KVStateMachine.load(rd.snapshot.data, rd.snapshot.meta.index)
            sim.check.on_install(self, rd.snapshot)
            sim.count("snapshot_installed")
            for idx in [i for i in self.pending if i <= rd.snapshot.meta.index]:
                client, seq = self.pending.pop(idx)
                sim.attempt_failed(client, seq, self.id)
        if self.config.async_storage_writes:
            self.node.persisted(rd)
            return
        self._applied(rd)
        self.node.advance(rd)

    def _applied(self, rd) -> None:
        for e in rd.committed_entries:
            self._apply(e)
        for rs in rd.read_states:
            req = self.reads.pop(rs.ctx, None)
            if req is not None:
                self.sim.read_done(req[0], rs.ctx, self.sm.data.get(req[1]), self.id)

    def _write(self, ops: list) -> None:
        disk = self.disk
        appended = []
        for kind, arg in ops:
            if kind == "snapshot":
                disk.apply_snapshot(arg)
            elif kind == "truncate":
                disk.truncate(arg)
            elif kind == "append":
                appended.append(arg)
                disk.append([arg])
            else:
                disk.set_hard_state(arg)
        if appended:
            self.sim.check.on_persist(self, appended)

    def _apply(self, e) -> None:
        sim = self.sim
        sim.check.on_apply(self, e)
        if e.kind == _COMMAND:
            client, seq, result = self.sm.apply(e.index, e.data)
        else:
            self.sm.index = e.index
        waiting = self.pending.pop(e.index, None)
        if waiting is not None:
            if e.kind == _COMMAND and (client, seq) == waiting:
                sim.write_done(client, seq, result, e, self.id)
            else:
                sim.attempt_failed(waiting[0], waiting[1], self.id)

    # ---------------------------------------------------------------- snapshots
    def take_snapshot(self, keep: int) -> int | None:
        """Snapshot the state machine at its applied index, compact keeping ``keep``."""
        node = self.node
        index = self.sm.index
        if node is None or index <= self.disk.snapshot().meta.index or index != node.log.applied:
            return None
        meta = node.snapshot_meta(index)
        data = self.sm.dump()
        self.sim.check.on_snapshot(self, meta, data)
        self.disk.create_snapshot(meta, data)
        upto = max(self.disk.first_index() - 1, index - keep)
        self.disk.compact(upto)
        node.compact(upto)
        return index

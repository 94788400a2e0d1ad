"""A node's parts, built the same way for the threaded node and for the simulator.

From a data directory on a :class:`~prevalence.fs.FileSystem`: the Raft storage, the
state machine recovered from its snapshot and journal up to the stored commit, the Raft
core and the :class:`NodeMachine` around it. Randomness and the time come in as
arguments, so a simulator gets the same node from the same seed.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from prevalence.fs import FileSystem
from prevalence.recovery import recover
from prevalence.state import StateMachine
from replication.clock import DEFAULT_MAX_OFFSET_US, JournalClock
from replication.config import RaftConfig
from replication.core import RaftNode
from replication.journal_storage import JournalStorage
from replication.membership import Membership
from replication.runtime.events import ApplyBlocked
from prevalence.state import newest_stamp
from replication.runtime.machine import NodeMachine

log = logging.getLogger("replication.node")


@dataclass
class NodeOptions:
    tick_interval: float = 0.025  # seconds per Raft tick
    raft: RaftConfig = field(default_factory=lambda: RaftConfig(election_tick=10, heartbeat_tick=5))
    fsync: str = "always"
    snapshot_every: int = 10_000  # entries applied between automatic snapshots (0: never)
    keep_snapshots: int = 2
    segment_bytes: int = 16 * 1024 * 1024
    max_batch: int = 512  # proposals taken into one Ready at most
    follower_apply_delay: float = 0.002  # seconds a follower lets committed entries gather
    max_clock_offset_us: int = DEFAULT_MAX_OFFSET_US  # a voter's clock further off the median is reported
    # seconds an index may stay committed but not durable on the leader before it hands
    # leadership over (None: one election timeout; 0: never)
    slow_disk_handover: float | None = None
    # a journal entry larger than this is refused when proposed: an Append carries at most
    # raft.max_size_per_msg plus one entry, and must fit a peer frame (16 MiB)
    max_entry_bytes: int = 8 << 20


class NodeParts(NamedTuple):
    storage: JournalStorage
    sm: StateMachine
    core: RaftNode
    machine: NodeMachine


def assemble(node_id: str, data_dir: str, root_factory: Callable[[], Any], membership: Membership,
             opts: NodeOptions, *, fs: FileSystem, rng: random.Random, now: float) -> NodeParts:
    """Open ``data_dir`` and build the node's parts; ``rng`` seeds the core's and the
    machine's randomness, ``now`` is the monotonic time the tick schedule starts from."""
    storage = JournalStorage(
        data_dir, initial_membership=membership, fsync=opts.fsync,
        segment_bytes=opts.segment_bytes, keep_snapshots=opts.keep_snapshots, fs=fs,
    )
    hs, _m = storage.initial_state()
    snap_index = storage.first_index() - 1
    upto = max(min(hs.commit, storage.last_index()), snap_index)
    # an entry this program cannot read (a newer release wrote it) ends the replay: the
    # node starts with the state before it, stuck there (replication.runtime.unreadable)
    sm, warnings = recover(storage.journal, storage.snapshots, root_factory, upto=upto, check=True,
                           stop_unreadable=True)
    for w in warnings:
        log.warning("%s: %s", node_id, w)
    cfg = RaftConfig(**{f: getattr(opts.raft, f) for f in opts.raft.__slots__})
    cfg.applied = sm.applied_index
    cfg.async_storage_writes = True
    core = RaftNode(node_id, storage, cfg, random.Random(rng.getrandbits(64)))
    clock = JournalClock(node_id, opts.max_clock_offset_us)
    clock.saw_stamp(sm.timestamp_us)
    tail = storage.last_index()
    if tail > sm.applied_index:  # entries not applied yet carry stamps too
        lo = max(sm.applied_index + 1, tail - 64, storage.first_index())  # a state stuck before a snapshot: 0
        clock.saw_stamp(newest_stamp(storage.entries(lo, tail + 1, None)))
    machine = NodeMachine(
        node_id, core, tick_interval=opts.tick_interval, max_batch=opts.max_batch,
        max_entry_bytes=opts.max_entry_bytes, slow_disk_handover=opts.slow_disk_handover, clock=clock,
        rng=random.Random(rng.getrandbits(64)), now=now, snapshot_every=opts.snapshot_every)
    if sm.unreadable is not None:
        machine.apply_guard.update(ApplyBlocked(sm.unreadable.index, str(sm.unreadable), sm.applied_index), now)
    return NodeParts(storage, sm, core, machine)

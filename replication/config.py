"""Tunables of a Raft node, validated before use."""
from __future__ import annotations

from dataclasses import dataclass

from replication.errors import RaftError


@dataclass(slots=True)
class RaftConfig:
    election_tick: int = 10  # followers campaign after [election_tick, 2*election_tick) ticks
    heartbeat_tick: int = 1
    # Flow control per follower (etcd's MaxSizePerMsg, MaxInflightMsgs, MaxInflightBytes),
    # sized for Python: reading, encoding and decoding an entry cost microseconds each, and
    # a leader does that for a follower under its core lock. A follower catching up is fed
    # a window at a time, so heartbeats and the healthy followers' appends go out between
    # windows (1 MiB Appends, unbounded in bytes, cost an election: docs/benchmarks.md).
    max_size_per_msg: int = 16 << 10  # entry data bytes per Append (at least one entry)
    max_inflight_msgs: int = 256  # unacknowledged Appends per follower
    max_inflight_bytes: int = 64 << 10  # their entry data bytes (0: no limit)
    max_committed_size_per_ready: int = 16 << 20
    snapshot_chunk_size: int = 1 << 16
    max_snapshot_bytes: int = 1 << 30  # a follower drops a snapshot it is sent that grows past this
    pre_vote: bool = True
    check_quorum: bool = True
    lease_read: bool = False  # serve reads from a leader lease; needs check_quorum
    lease_margin: int = 2  # ticks of clock drift the lease tolerates
    applied: int = 0  # index the host's state machine is at on start (>= snapshot index)
    # The host may keep several Readies' writes in flight and reports each one durable
    # with persisted(rd) (etcd's async storage writes); advance() then no longer means
    # "written". See replication/ready.py.
    async_storage_writes: bool = False

    def validate(self) -> None:
        if self.heartbeat_tick < 1 or self.election_tick <= self.heartbeat_tick:
            raise RaftError("need 1 <= heartbeat_tick < election_tick")
        if self.lease_read and not self.check_quorum:
            raise RaftError("lease_read requires check_quorum")
        if not 0 <= self.lease_margin < self.election_tick:
            raise RaftError("lease_margin must be in [0, election_tick)")
        if (self.max_inflight_msgs < 1 or self.max_size_per_msg < 1 or self.snapshot_chunk_size < 1
                or self.max_snapshot_bytes < 1):
            raise RaftError("max_inflight_msgs, max_size_per_msg, snapshot_chunk_size and max_snapshot_bytes "
                            "must be positive")
        if self.max_inflight_bytes < 0:
            raise RaftError("max_inflight_bytes must be >= 0 (0: no limit)")

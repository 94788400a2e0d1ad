"""Raft for the replicated master: a pure, deterministic core and its simulator.

The core (``RaftNode``) takes ticks, messages and client requests and hands back a
``Ready`` batch for its host to persist, send and apply (see ``replication.ready``
and docs/raft.md). ``python -m replication.sim`` runs seeded fault simulations.
"""
from replication.config import RaftConfig
from replication.core import RaftNode
from replication.errors import (
    CompactedError, ConfigChangeRefused, DecodeError, NotLeader, ProposalRefused,
    RaftError, TransferInProgress, UnavailableError,
)
from replication.membership import ChangeType, ConfigChange, Membership
from replication.messages import HardState, Snapshot, SnapshotMeta, decode, encode
from replication.ready import ReadState, Ready, Role, SoftState
from replication.status import PeerStatus, Status
from replication.storage import MemoryStorage, Storage

__all__ = [
    "RaftConfig", "RaftNode", "Ready", "ReadState", "Role", "SoftState", "Status", "PeerStatus",
    "Storage", "MemoryStorage", "HardState", "Snapshot", "SnapshotMeta", "Membership",
    "ConfigChange", "ChangeType", "encode", "decode", "RaftError", "NotLeader",
    "ProposalRefused", "TransferInProgress", "ConfigChangeRefused", "CompactedError",
    "UnavailableError", "DecodeError",
]

"""What the core hands to its host after each input: the ``Ready`` batch.

The contract (see also docs/raft.md). The host handles one Ready at a time:

1. Send ``messages`` at once; they do not depend on this Ready being durable (a
   leader's appends, heartbeats and snapshot chunks, pre-votes, read forwarding). This
   is how a leader writes its own entries in parallel with replicating them.
2. Persist, in this order: ``snapshot`` (replaces the whole log), then delete entries
   from ``truncate_from`` on (a follower's conflicting suffix), append ``entries``,
   then write ``hard_state``. Make it durable (fsync).
3. Only then send ``persisted_messages``: vote requests (they carry the candidate's own
   vote), vote responses (a granted vote must be on disk first) and append/snapshot
   responses (they acknowledge entries as stored). Sending them earlier breaks safety.
4. Install ``snapshot`` into the state machine, then apply ``committed_entries`` in
   order (they are committed, possibly in this very Ready's ``entries``).
5. Serve ``read_states``: each is safe to answer now, since applied >= its index.
6. Call ``advance(ready)``; only then ask for the next Ready.

With ``RaftConfig.async_storage_writes`` the writes of step 2 may still be under way
when ``advance`` is called and the next Ready taken: they are queued in Ready order, and
once one is durable the host sends its ``persisted_messages``, installs its
``snapshot`` and calls ``persisted(ready)``. ``committed_entries`` are then always
durable on this node already, so step 4 may run at once (docs/raft.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple, Optional

from replication.messages import HardState, Snapshot


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3

    def __str__(self) -> str:
        return self.name.lower()


class SoftState(NamedTuple):
    """Volatile state the host may want to react to (e.g. fail pending proposals)."""

    leader: Optional[str]
    role: Role


class ReadState(NamedTuple):
    """A linearizable read that may be served now: the state machine is at >= index."""

    ctx: bytes
    index: int


@dataclass(slots=True)
class Ready:
    hard_state: Optional[HardState] = None
    soft_state: Optional[SoftState] = None
    snapshot: Optional[Snapshot] = None
    truncate_from: Optional[int] = None
    entries: list = field(default_factory=list)
    messages: list = field(default_factory=list)
    persisted_messages: list = field(default_factory=list)
    committed_entries: list = field(default_factory=list)
    read_states: list = field(default_factory=list)

    def must_persist(self) -> bool:
        """Whether this Ready carries anything to write before persisted_messages."""
        return self.hard_state is not None or bool(self.entries) or self.snapshot is not None

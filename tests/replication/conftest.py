"""A tiny synchronous cluster harness for the direct tests of the Raft rules.

Messages are delivered by hand (``deliver``) or all at once (``settle``), with optional
drop rules, so each test can stage exactly the interleaving a rule is about. Nodes are
real ``RaftNode``s over ``MemoryStorage``; the harness only does the host's job.
"""
from __future__ import annotations

import random
from typing import Callable

import pytest

from replication.config import RaftConfig
from replication.core import RaftNode
from replication.membership import Membership
from replication.ready import Role
from replication.storage import MemoryStorage


class Cluster:
    def __init__(self, ids, config: RaftConfig | None = None, voters=None, learners=(), seed: int = 1) -> None:
        self.config = config or RaftConfig(election_tick=10, heartbeat_tick=1)
        membership = Membership(tuple(voters if voters is not None else ids), tuple(learners))
        self.storage = {i: MemoryStorage(membership) for i in ids}
        self.rng = random.Random(seed)
        self.nodes: dict[str, RaftNode] = {}
        for i in ids:
            self.nodes[i] = self._make(i)
        self.inflight: list = []  # messages sent, not yet delivered
        self.applied: dict[str, list] = {i: [] for i in ids}
        self.read_states: dict[str, list] = {i: [] for i in ids}
        self.drop: Callable[[object], bool] = lambda m: False
        self.readies: dict[str, list] = {i: [] for i in ids}  # every Ready handled, per node

    def _make(self, i: str) -> RaftNode:
        cfg = RaftConfig(**{k: getattr(self.config, k) for k in self.config.__slots__})
        return RaftNode(i, self.storage[i], cfg, random.Random(self.rng.random()))

    def add_node(self, i: str) -> RaftNode:
        self.storage[i] = MemoryStorage(Membership())
        self.nodes[i] = self._make(i)
        self.applied[i], self.read_states[i], self.readies[i] = [], [], []
        return self.nodes[i]

    # ------------------------------------------------------------- host duties
    def process(self, i: str) -> None:
        node, st = self.nodes[i], self.storage[i]
        while node.has_ready():
            rd = node.ready()
            self.readies[i].append(rd)
            self.inflight.extend(rd.messages)
            if rd.snapshot is not None:
                st.apply_snapshot(rd.snapshot)
                self.applied[i].append(("snapshot", rd.snapshot.meta.index))
            if rd.truncate_from is not None:
                st.truncate(rd.truncate_from)
            st.append(rd.entries)
            if rd.hard_state is not None:
                st.set_hard_state(rd.hard_state)
            self.inflight.extend(rd.persisted_messages)
            self.applied[i].extend(rd.committed_entries)
            self.read_states[i].extend(rd.read_states)
            node.advance(rd)

    def process_all(self) -> None:
        for i in sorted(self.nodes):
            self.process(i)

    def deliver(self, limit: int | None = None) -> int:
        """Deliver the messages sent so far (not those they cause); returns the count."""
        batch, self.inflight = self.inflight, []
        if limit is not None:
            self.inflight = batch[limit:]
            batch = batch[:limit]
        n = 0
        for m in batch:
            if m.dst in self.nodes and not self.drop(m):
                self.nodes[m.dst].step(m)
                n += 1
        self.process_all()
        return n

    def settle(self, rounds: int = 100) -> None:
        self.process_all()
        for _ in range(rounds):
            if not self.inflight:
                return
            self.deliver()

    def tick(self, i: str, n: int = 1) -> None:
        for _ in range(n):
            self.nodes[i].tick()
        self.process(i)

    def tick_all(self, n: int = 1, settle: bool = True) -> None:
        for _ in range(n):
            for i in sorted(self.nodes):
                self.nodes[i].tick()
            self.process_all()
            if settle:
                self.settle()

    def fix_timeouts(self, **extra: int) -> None:
        """Script the election timeouts: node ``i`` times out after election_tick +
        ``extra[i]`` ticks, every time (the staged tests need exact timings)."""
        for i, k in extra.items():
            node = self.nodes[i]
            node.rng = _FixedTimeout(k)
            node.randomized_timeout = node.cfg.election_tick + k

    def restart(self, i: str) -> RaftNode:
        """Crash and restart node ``i``: volatile state is lost, storage is kept."""
        self.inflight = [m for m in self.inflight if m.dst != i and m.src != i]
        self.nodes[i] = self._make(i)
        self.applied[i] = []  # the state machine is rebuilt by re-applying the log
        return self.nodes[i]

    def campaign(self, i: str, expire_leases: bool = True) -> Role:
        """Time ``i`` out once and let the votes flow; returns its role afterwards.

        With ``expire_leases`` the other followers vote as if an election timeout had
        passed since a leader last reached them (``heard_at``), restart quiet included.
        """
        node = self.nodes[i]
        saved = {}
        if expire_leases:
            for j, other in self.nodes.items():
                if j != i and other.role != Role.LEADER:
                    saved[j] = other.heard_at
                    other.heard_at = None
        node.election_elapsed = node.randomized_timeout - 1
        node.tick()
        self.settle()
        for j, heard in saved.items():  # no real time passed for the others
            if self.nodes[j].heard_at is None:
                self.nodes[j].heard_at = heard
        return node.role

    def elect(self, i: str, expire_leases: bool = True) -> None:
        """Make ``i`` leader: time it out and let the votes flow (see ``campaign``;
        without ``expire_leases`` CheckQuorum makes followers of a live leader ignore us).
        """
        role = self.campaign(i, expire_leases)
        assert role == Role.LEADER, f"{i} failed to become leader: {self.nodes[i].status()}"

    def leader(self) -> str | None:
        leaders = [i for i, n in self.nodes.items() if n.role == Role.LEADER]
        return leaders[0] if len(leaders) == 1 else None

    def propose(self, i: str, data: bytes) -> int:
        idx = self.nodes[i].propose(data)
        self.process(i)
        return idx

    def commands(self, i: str) -> list[bytes]:
        """Data of the COMMAND entries node ``i`` applied, in order."""
        return [e.data for e in self.applied[i] if getattr(e, "kind", None) == 1]

    def isolate(self, *ids: str) -> None:
        cut = set(ids)
        self.drop = lambda m: (m.src in cut) != (m.dst in cut)

    def heal(self) -> None:
        self.drop = lambda m: False

    def snapshot(self, i: str, data: bytes = b"state") -> int:
        """Host-side snapshot + compaction of node ``i`` at its applied index."""
        node, st = self.nodes[i], self.storage[i]
        index = node.log.applied
        st.create_snapshot(node.snapshot_meta(index), data)
        st.compact(index)
        node.compact(index)
        return index

    def log_terms(self, i: str) -> list[tuple[int, int]]:
        st = self.storage[i]
        return [(e.index, e.term) for e in st.entries(st.first_index(), st.last_index() + 1, None)]


class _FixedTimeout(random.Random):
    """An rng whose ``randrange`` (the core's only use: the timeout) is a constant."""

    def __init__(self, k: int) -> None:
        super().__init__(k)
        self.k = k

    def randrange(self, *args, **kwargs) -> int:
        return self.k


@pytest.fixture
def make_cluster():
    return Cluster

"""Safety invariants the simulator checks while it runs.

Checked incrementally, at the moment the relevant state changes, so that a violation
is reported at the step that caused it:
- election safety: at most one leader per term;
- log matching: an (index, term) pair always names the same entry, with the same
  predecessor term (so equal entries imply equal prefixes);
- state machine safety: an index is only ever applied with one entry, in index order
  on every node (applied sequences are prefixes of one another);
- leader completeness: a new leader of term L holds every entry committed in a term
  below L (the term of a commit is that of the leader whose commit index first
  covered it; a leader of an older term may be elected late and legitimately lack
  newer commits);
- snapshots taken at the same index hold the same state;
- safe commits: when a leader commits an entry, no disk lacking it is as up to date
  as a majority of the voters' disks (such a node could be elected and overwrite it);
- term origin: every term a node takes was started by a candidate (one that voted
  for itself in it); a term raised by anything else (a pre-vote, say) disrupts;
- commit before apply: a node applies only entries it knows to be committed;
- votes survive crashes: a node that sent a vote (granted, or asked for itself) in
  term T restarts in a later term or with that same vote (and never sends two votes
  in one term). Acknowledged entries are not checked this way: the Ready's write order
  (entries before the hard state) lets a torn write truncate a suffix for a newer
  leader before that leader's term is stored; the end-of-run durability check and the
  commit checks see acknowledgements that lied;
- lease promise (check_quorum): a node grants no (pre)vote, except to a transfer's
  candidate, within an election timeout of its clock after a leader reached it.

It also keeps the persist record (every entry any node wrote to disk, with its
predecessor's term), from which ``persisted_log`` rebuilds the log a snapshot covers:
the end-of-run durability check looks there for acknowledged writes that a replica
has compacted away.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Callable, Mapping, Protocol

from replication.errors import CompactedError, UnavailableError
from replication.messages import Vote, VoteResp
from replication.ready import Role

if TYPE_CHECKING:  # pragma: no cover
    from replication.core import RaftNode
    from replication.storage import MemoryStorage


class CheckedHost(Protocol):
    """What the checks read of a simulated host (:class:`replication.sim_host.SimHost`,
    which calls them): a Protocol rather than an import of sim_host."""

    @property
    def id(self) -> str: ...
    @property
    def disk(self) -> "MemoryStorage": ...  # what survives a crash
    @property
    def node(self) -> "RaftNode | None": ...  # None while crashed


def _last(disk) -> tuple[int, int]:
    """(term, index) of a disk's last entry: how elections compare logs."""
    last = disk.last_index()
    return disk.term(last), last


class Violation(Exception):
    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


class Unknown(Violation):
    """A check that could not decide within its budget. Not a pass: it fails the seed
    like a violation and is reported as unknown."""


class Checker:
    def __init__(self, hosts: Mapping[str, CheckedHost],
                 on_leader: Callable[[CheckedHost], None] | None = None,
                 on_commit: Callable[[CheckedHost], None] | None = None) -> None:
        self.hosts = hosts  # the cluster's hosts by id, as the simulation fills it in
        self.on_leader, self.on_commit = on_leader, on_commit  # the simulation's hooks (triggered faults)
        self.started: set[int] = {0}  # terms some candidate started (voted for itself in)
        self.voted: dict[str, tuple[int, str]] = {}  # node -> newest (term, vote) it sent
        self.check_quorum = False
        self._leader_commit: dict[str, int] = {}  # node -> commit in its last hard state
        self.election_tick = 10
        self.leaders: dict[int, str] = {}  # term -> leader
        self.entries: dict[tuple[int, int], tuple] = {}  # (index, term) -> (kind, data, prev term)
        self.committed: dict[int, tuple] = {}  # index -> (term, kind, data), from applies
        self.applied: dict[str, int] = {}  # node -> last applied index
        self.snapshots: dict[int, str] = {}  # index -> digest of the state
        self.max_committed = 0
        self.commit_term: dict[int, tuple[int, int]] = {}  # index -> (term committed in, entry term)
        self.commit_hw = 0  # highest index whose commit term is known
        self._logs: dict[tuple[int, int], dict[int, tuple[int, bytes]]] = {}  # persisted_log cache

    def on_restart(self, host: CheckedHost) -> None:
        self.applied[host.id] = host.disk.snapshot().meta.index
        node = host.node
        voted = self.voted.get(host.id)
        if voted is not None and (node.term < voted[0] or (node.term == voted[0] and node.vote != voted[1])):
            raise Violation(
                "vote durability",
                f"{host.id} sent its vote for {voted[1]} in term {voted[0]}, and restarts in term "
                f"{node.term} with vote {node.vote}: it may vote twice in one term",
            )

    def on_send(self, m) -> None:
        """A message leaves a node: record what it promises about that node's disk."""
        t = type(m)
        if t is VoteResp:
            if not m.reject:
                self._vote_sent(m.src, m.term, m.dst)
        elif t is Vote:
            self._vote_sent(m.src, m.term, m.src)

    def _vote_sent(self, node: str, term: int, vote: str) -> None:
        old = self.voted.get(node)
        if old is not None and old[0] == term and old[1] != vote:
            raise Violation("election safety", f"{node} voted for {old[1]} and for {vote} in term {term}")
        if old is None or term > old[0]:
            self.voted[node] = (term, vote)

    def on_vote_granted(self, host: CheckedHost, m, was_heard: int | None) -> None:
        """``host`` granted the (pre)vote request ``m``; ``was_heard`` is its clock when
        a leader last reached it (tracked by the simulation, not read from the core)."""
        if not self.check_quorum or was_heard is None or getattr(m, "transfer", False):
            return
        if host.node.clock - was_heard < self.election_tick:
            raise Violation(
                "lease promise",
                f"{host.id} granted {type(m).__name__} to {m.src} (term {m.term}) {host.node.clock - was_heard} "
                f"ticks after a leader reached it (election timeout {self.election_tick})",
            )

    def on_ready(self, host: CheckedHost, rd) -> None:
        node = host.node
        hs = rd.hard_state
        if hs is not None:
            if hs.vote == host.id:
                self.started.add(hs.term)
            elif hs.term not in self.started:
                raise Violation("term origin", f"{host.id} moved to term {hs.term}, which no candidate started")
            # usually the leader's; a leader deposed before this Ready, or a follower
            # learning a commit first, records its own term: an upper bound of the
            # committing leader's, which only makes the completeness check skip more
            if hs.commit > self.commit_hw:
                log = node.log
                fresh = {}
                for index in range(max(self.commit_hw + 1, log.first_index()), hs.commit + 1):
                    fresh[index] = log.term(index)
                    self.commit_term[index] = (node.term, fresh[index])
                self.commit_hw = hs.commit
                if node.role == Role.LEADER:
                    self._check_electable(host, fresh)
            if node.role == Role.LEADER and self.on_commit is not None and hs.commit > self._leader_commit.get(host.id, 0):
                self.on_commit(host)
            self._leader_commit[host.id] = hs.commit
        if rd.soft_state is not None and rd.soft_state.role == Role.LEADER:
            node = host.node
            term = node.term
            other = self.leaders.get(term)
            if other is not None and other != host.id:
                raise Violation("election safety", f"{other} and {host.id} are both leader of term {term}")
            self.leaders[term] = host.id
            self._check_leader_log(host)
            if self.on_leader is not None:
                self.on_leader(host)

    def _check_electable(self, host: CheckedHost, fresh: dict[int, int]) -> None:
        """A leader just committed ``fresh`` (index -> term): no disk that lacks one of
        them may be at least as up to date as a majority of the voters' disks, or that
        node could be elected and overwrite a committed entry. In Raft a commit quorum
        holds the entry, and any log as up to date as one of them holds it too; this
        sees the unsafe commit itself, not only the rare schedule that then elects such
        a node (the Figure 8 interleaving)."""
        hosts = self.hosts
        voters = host.node.membership.voters
        last = {i: _last(h.disk) for i, h in hosts.items()}
        for x, h in hosts.items():
            lacking = [i for i, t in fresh.items() if not self._disk_has(h.disk, i, t)]
            if not lacking:
                continue
            beaten = [v for v in voters if v in last and last[x] >= last[v]]
            if len(beaten) >= len(voters) // 2 + 1:
                i = lacking[0]
                raise Violation(
                    "unsafe commit",
                    f"{host.id} (term {host.node.term}) committed index {i} of term {fresh[i]}, but {x}'s "
                    f"disk lacks it and its log (last term, index) {last[x]} is as up to date as the voters "
                    f"{beaten}: {x} could be elected and overwrite it",
                )

    def _disk_has(self, disk, index: int, term: int) -> bool:
        if index > disk.last_index():
            return False
        if index >= disk.first_index() - 1:
            return disk.term(index) == term
        meta = disk.snapshot().meta
        rec = self.persisted_log(meta.index, meta.term).get(index)
        return rec is None or rec[0] == term  # unknown: assume it is there

    def _check_leader_log(self, host: CheckedHost) -> None:
        log = host.node.log
        term = host.node.term
        first = log.first_index()
        for index in range(max(first - 1, 1), self.commit_hw + 1):
            c = self.commit_term.get(index)
            if c is None or c[0] >= term:
                continue
            committed_in, entry_term = c
            try:
                t = log.term(index)
            except (CompactedError, UnavailableError):
                t = None
            if t != entry_term:
                raise Violation(
                    "leader completeness",
                    f"new leader {host.id} (term {term}) has term {t} at index {index}, committed "
                    f"with term {entry_term} in term {committed_in}",
                )

    def on_persist(self, host: CheckedHost, entries: list) -> None:
        disk = host.disk
        seen = self.entries
        for e in entries:
            try:
                prev_term = disk.term(e.index - 1)
            except (CompactedError, UnavailableError):
                prev_term = -1
            key = (e.index, e.term)
            rec = seen.get(key)
            if rec is None or (rec[2] == -1 and prev_term != -1 and rec[:2] == (e.kind, e.data)):
                seen[key] = (e.kind, e.data, prev_term)
            elif rec[0] != e.kind or rec[1] != e.data or (prev_term != -1 and rec[2] != -1 and rec[2] != prev_term):
                raise Violation(
                    "log matching",
                    f"{host.id} stored index {e.index} term {e.term} as {(e.kind, e.data[:40], prev_term)}, "
                    f"elsewhere it is {(rec[0], rec[1][:40], rec[2])}",
                )

    def persisted_log(self, index: int, term: int) -> dict[int, tuple[int, bytes]]:
        """index -> (term, data) of the log that ends with entry (index, term), as nodes
        wrote it to disk (log matching makes it unique), back to where it is known."""
        key = (index, term)
        log = self._logs.get(key)
        if log is None:
            log = self._logs[key] = {}
            while index > 0:
                rec = self.entries.get((index, term))
                if rec is None:
                    break
                log[index] = (term, rec[1])
                index, term = index - 1, rec[2]
        return log

    def on_apply(self, host: CheckedHost, e) -> None:
        if e.index > host.node.log.committed:
            raise Violation("commit before apply",
                            f"{host.id} applied index {e.index}, its commit index is {host.node.log.committed}")
        last = self.applied.get(host.id, 0)
        if e.index != last + 1:
            raise Violation("applied order", f"{host.id} applied index {e.index} after {last}")
        self.applied[host.id] = e.index
        rec = (e.term, e.kind, e.data)
        c = self.committed.get(e.index)
        if c is None:
            self.committed[e.index] = rec
            if e.index > self.max_committed:
                self.max_committed = e.index
        elif c != rec:
            raise Violation(
                "state machine safety",
                f"{host.id} applied {rec[0], rec[1], rec[2][:40]} at index {e.index}, another node applied {c[0], c[1], c[2][:40]}",
            )

    def on_install(self, host: CheckedHost, snap) -> None:
        idx = snap.meta.index
        c = self.committed.get(idx)
        if c is not None and c[0] != snap.meta.term:
            raise Violation("snapshot", f"{host.id} installed snapshot {idx} of term {snap.meta.term}, committed term is {c[0]}")
        self._check_snapshot(host, idx, snap.data)
        self.applied[host.id] = idx

    def on_snapshot(self, host: CheckedHost, meta, data: bytes) -> None:
        self._check_snapshot(host, meta.index, data)

    def _check_snapshot(self, host: CheckedHost, index: int, data: bytes) -> None:
        digest = hashlib.sha256(data).hexdigest()[:16]
        other = self.snapshots.setdefault(index, digest)
        if other != digest:
            raise Violation("snapshot", f"{host.id}'s state at index {index} differs from another node's")

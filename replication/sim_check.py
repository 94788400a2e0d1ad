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
- snapshots taken at the same index hold the same state.

It also keeps the persist record (every entry any node wrote to disk, with its
predecessor's term), from which ``persisted_log`` rebuilds the log a snapshot covers:
the end-of-run durability check looks there for acknowledged writes that a replica
has compacted away.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from replication.errors import CompactedError, UnavailableError
from replication.ready import Role

if TYPE_CHECKING:  # pragma: no cover
    from replication.sim_host import SimHost


class Violation(Exception):
    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


class Unknown(Violation):
    """A check that could not decide within its budget. Not a pass: it fails the seed
    like a violation and is reported as unknown."""


class Checker:
    def __init__(self) -> None:
        self.leaders: dict[int, str] = {}  # term -> leader
        self.entries: dict[tuple[int, int], tuple] = {}  # (index, term) -> (kind, data, prev term)
        self.committed: dict[int, tuple] = {}  # index -> (term, kind, data), from applies
        self.applied: dict[str, int] = {}  # node -> last applied index
        self.snapshots: dict[int, str] = {}  # index -> digest of the state
        self.max_committed = 0
        self.commit_term: dict[int, tuple[int, int]] = {}  # index -> (term committed in, entry term)
        self.commit_hw = 0  # highest index whose commit term is known
        self._logs: dict[tuple[int, int], dict[int, tuple[int, bytes]]] = {}  # persisted_log cache

    def on_restart(self, host: "SimHost") -> None:
        self.applied[host.id] = host.disk.snapshot().meta.index

    def on_ready(self, host: "SimHost", rd) -> None:
        node = host.node
        if rd.hard_state is not None and node.role == Role.LEADER and rd.hard_state.commit > self.commit_hw:
            log = node.log
            for index in range(max(self.commit_hw + 1, log.first_index()), rd.hard_state.commit + 1):
                self.commit_term[index] = (node.term, log.term(index))
            self.commit_hw = rd.hard_state.commit
        if rd.soft_state is not None and rd.soft_state.role == Role.LEADER:
            node = host.node
            term = node.term
            other = self.leaders.get(term)
            if other is not None and other != host.id:
                raise Violation("election safety", f"{other} and {host.id} are both leader of term {term}")
            self.leaders[term] = host.id
            self._check_leader_log(host)

    def _check_leader_log(self, host: "SimHost") -> None:
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

    def on_persist(self, host: "SimHost", entries: list) -> None:
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

    def on_apply(self, host: "SimHost", e) -> None:
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

    def on_install(self, host: "SimHost", snap) -> None:
        idx = snap.meta.index
        c = self.committed.get(idx)
        if c is not None and c[0] != snap.meta.term:
            raise Violation("snapshot", f"{host.id} installed snapshot {idx} of term {snap.meta.term}, committed term is {c[0]}")
        self._check_snapshot(host, idx, snap.data)
        self.applied[host.id] = idx

    def on_snapshot(self, host: "SimHost", meta, data: bytes) -> None:
        self._check_snapshot(host, meta.index, data)

    def _check_snapshot(self, host: "SimHost", index: int, data: bytes) -> None:
        digest = hashlib.sha256(data).hexdigest()[:16]
        other = self.snapshots.setdefault(index, digest)
        if other != digest:
            raise Violation("snapshot", f"{host.id}'s state at index {index} differs from another node's")

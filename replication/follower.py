"""The follower's half of RaftNode: appends, heartbeats, snapshot chunks, TimeoutNow.

Kept apart from core.py only for size; ``FollowerMixin`` has no state of its own and is
only meaningful as a base of :class:`replication.core.RaftNode`.
"""
from __future__ import annotations

from replication.messages import (
    Append, AppendResp, Heartbeat, HeartbeatResp, InstallSnapshot, ReadIndexResp,
    Snapshot, SnapshotResp, TimeoutNow,
)
from replication.ready import ReadState


class FollowerMixin:
    #: Set by the host while this node cannot apply its log (a newer release wrote an
    #: entry it cannot read): it stores and votes, but starts no election, transfers
    #: included, since as leader it could answer no command and no read.
    hold_campaign: bool = False

    def may_campaign(self) -> bool:
        """Start an election now, if the timeout (or a transfer) says so?"""
        return not self.hold_campaign and self.promotable()

    def _step_follower(self, m, t) -> None:
        if t is Append or t is Heartbeat or t is InstallSnapshot:
            if self.leader is not None and m.src != self.leader:
                return  # one leader per term: another member claiming to lead it is confused or forging
            self.election_elapsed = 0
            self.heard_at = self.clock
            self.leader = m.src
        if t is Append:
            self._handle_append(m)
        elif t is Heartbeat:
            last = self.log.last_index()
            if m.commit <= last:
                self.log.commit_to(m.commit)
            else:
                # The leader sends no commit past what we acknowledged to it: our log lost
                # entries we had (data put back from an old copy, a disk that lost writes).
                # Said as a rejection of index 0, which no append can earn: the leader then
                # sends from our real end (a leader that does not know it drops it as stale).
                self._send(AppendResp(self.id, m.src, self.term, 0, reject=True, hint_index=last,
                                      hint_term=self.log.term(last)))
            self._send(HeartbeatResp(self.id, m.src, self.term, m.ctx, m.seq))
        elif t is InstallSnapshot:
            self._handle_snapshot_chunk(m)
        elif t is TimeoutNow:
            if self.may_campaign():
                self._campaign(transfer=True)
        elif t is ReadIndexResp:
            self.read_states.append(ReadState(m.ctx, m.index))

    def _handle_append(self, m) -> None:
        log = self.log
        if m.prev_index < log.committed:
            self._send(AppendResp(self.id, m.src, self.term, log.committed))
            return
        ents = m.entries
        if ents and (ents[0].index != m.prev_index + 1 or ents[-1].index != m.prev_index + len(ents)):
            return  # malformed: ignore
        if not log.match_term(m.prev_index, m.prev_term):
            hint_index, hint_term = log.find_conflict_by_term(min(m.prev_index, log.last_index()), m.prev_term)
            self._send(AppendResp(self.id, m.src, self.term, m.prev_index, True, hint_index, hint_term))
            return
        conflict = log.find_conflict(ents)
        if conflict:
            self._append_follower(ents[conflict - ents[0].index:])
        last_new = m.prev_index + len(ents)
        log.commit_to(min(m.commit, last_new))
        self._send(AppendResp(self.id, m.src, self.term, last_new))

    def _append_follower(self, ents: list) -> None:
        first = ents[0].index
        self.log.append(ents)
        changed = self.configs.truncate(first) if self.configs.latest_index >= first else False
        if self.configs.observe(ents) or changed:
            self._membership_changed()

    def _handle_snapshot_chunk(self, m) -> None:
        """Reassemble a snapshot from one sender, in one term, at most
        ``cfg.max_snapshot_bytes``; chunks from anyone else start it over."""
        log = self.log
        meta = m.meta
        if meta.index <= log.committed:  # already have it (or a newer state)
            self._snap_rx = None
            self._send(AppendResp(self.id, m.src, self.term, log.committed))
            return
        rx = self._snap_rx  # (src, term, meta, bytes so far)
        if rx is not None and (rx[0] != m.src or rx[1] != m.term or rx[2] != meta):
            rx = None  # never mix two senders' bytes: equal metas need not mean equal bytes
        if m.offset == 0 and (rx is None or len(rx[3]) < len(m.data)):
            rx = (m.src, m.term, meta, bytearray())
        have = len(rx[3]) if rx is not None else 0
        if rx is None or m.offset != have:
            self._snap_rx = rx
            self._send(SnapshotResp(self.id, m.src, self.term, meta.index, have))
            return
        if have + len(m.data) > self.cfg.max_snapshot_bytes:
            self._snap_rx = None  # over the bound: dropped (docs/transport.md, "Bounds")
            return
        rx[3].extend(m.data)
        self._snap_rx = rx
        if not m.done:
            self._send(SnapshotResp(self.id, m.src, self.term, meta.index, len(rx[3])))
            return
        self._snap_rx = None
        snap = Snapshot(meta, bytes(rx[3]))
        if log.match_term(meta.index, meta.term):
            log.commit_to(meta.index)  # our log already has it: just fast-forward
        else:
            log.restore(snap)
            self.configs.reset(meta.index, meta.membership)
            self._membership_changed()
        self._send(AppendResp(self.id, m.src, self.term, meta.index))

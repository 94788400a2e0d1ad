"""The leader's half of RaftNode: replication, commit, reads, transfer, membership.

Kept apart from core.py only for size; ``LeaderMixin`` has no state of its own and is
only meaningful as a base of :class:`replication.core.RaftNode`.
"""
from __future__ import annotations

from prevalence.entry import Entry, EntryKind
from replication.errors import CompactedError, UnavailableError
from replication.messages import (
    Append, AppendResp, Heartbeat, HeartbeatResp, InstallSnapshot, ReadIndex,
    ReadIndexResp, SnapshotResp, TimeoutNow,
)
from replication.progress import Progress, ProgressState, quorum, quorum_index
from replication.ready import ReadState, Role

_NOOP = int(EntryKind.NOOP)
_PROBE, _REPLICATE, _SNAPSHOT = ProgressState.PROBE, ProgressState.REPLICATE, ProgressState.SNAPSHOT


class LeaderMixin:
    # ---------------------------------------------------------------- becoming leader
    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        self.lease_disabled = False
        log = self.log
        self.prs = {self.id: self._new_progress(log.last_index() + 1)}
        self._update_progress_set()
        me = self.prs[self.id]
        me.match = log.offset - 1 if log.pending_snapshot is None else 0
        me.become_replicate()
        me.next = log.last_index() + 1
        index = log.last_index() + 1
        self.term_start = index
        self.lead_ticks = 0
        self._append_leader([Entry(index, self.term, _NOOP, b"")])

    def _new_progress(self, next_index: int) -> Progress:
        return Progress(next_index, self.cfg.max_inflight_msgs, max_inflight_bytes=self.cfg.max_inflight_bytes)

    def _update_progress_set(self) -> None:
        """Make ``prs``/``peers`` follow the current membership (leader only)."""
        m = self.membership
        members = m.members()
        nxt = self.log.last_index() + 1
        for node in members:
            pr = self.prs.get(node)
            if pr is None:
                pr = self.prs[node] = self._new_progress(nxt)
            pr.is_learner = node in m.learners
        for node in [n for n in self.prs if n != self.id and n not in members]:
            del self.prs[node]
        self.peers = tuple(n for n in members if n != self.id)
        if self.lead_transferee is not None and self.lead_transferee not in m.voters:
            self.lead_transferee = None
        self._maybe_commit()  # the quorum may have changed

    def _append_leader(self, ents: list) -> None:
        self.log.append(ents)
        if self.configs.observe(ents):
            self._membership_changed()
        self._bcast = True

    # ---------------------------------------------------------------- ticking
    def _tick_leader(self) -> None:
        self.lead_ticks += 1
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_tick:
            self.election_elapsed = 0
            active = self._quorum_active()  # also without CheckQuorum: heard_lately reads its windows
            if self.cfg.check_quorum and not active:
                self._become_follower(self.term, None)  # CheckQuorum: we may be cut off
                return
        if self.lead_transferee is not None and self.clock >= self.transfer_until:
            self.lead_transferee = None  # a transfer not done within a timeout (and the disk's slack) is aborted
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat(self.readonly.last_ctx() or b"")
        else:
            self._send_commit()

    def commit_unsent(self) -> bool:
        """Does a follower not know the commit index yet? (The host then ticks soon.)"""
        if self.role != Role.LEADER:
            return False
        committed, prs = self.log.committed, self.prs
        return any(prs[p].commit_behind(committed) for p in self.peers)

    def _send_commit(self) -> None:
        """A commit index that no Append carried since: tell it now (an empty Append).

        A commit does not go out at once on its own: under load the next Append carries
        it anyway, and the leader, which answers clients, already knows it.
        """
        committed = self.log.committed
        for p in self.peers:
            if self.prs[p].commit_behind(committed):
                self._send_append(p, True)

    def _quorum_active(self) -> bool:
        voters = self.membership.voters
        active = 0
        for v in voters:
            if v == self.id:
                active += 1
            else:
                pr = self.prs.get(v)
                if pr is not None and pr.recent_active:
                    active += 1
        for node, pr in self.prs.items():
            if node != self.id:
                pr.was_active, pr.recent_active = pr.recent_active, False
        return active >= quorum(len(voters))

    def _bcast_heartbeat(self, ctx: bytes) -> None:
        committed = self.log.committed
        for p in self.peers:
            pr = self.prs[p]
            commit = min(pr.match, committed)
            pr.sent_commit = max(pr.sent_commit, commit)
            self.msgs.append(Heartbeat(self.id, p, self.term, commit, ctx, self.clock))

    # ---------------------------------------------------------------- replication
    def _flush(self) -> None:
        """Send what proposals/commits since the last Ready call for: batching."""
        if self.role != Role.LEADER or not (self._bcast or self._bcast_commit):
            return
        commit = self._bcast_commit
        self._bcast = self._bcast_commit = False
        for p in self.peers:
            pr = self.prs[p]
            sent = self._send_append(p, commit)
            while sent and pr.state == _REPLICATE:
                sent = self._send_append(p, False)

    def _send_append(self, to: str, send_if_empty: bool) -> bool:
        pr = self.prs[to]
        if pr.is_paused():
            return False
        log = self.log
        prev = pr.next - 1
        try:
            prev_term = log.term(prev)
            ents = log.entries_from(pr.next, self.cfg.max_size_per_msg) if pr.next <= log.last_index() else []
        except CompactedError:
            return self._send_snapshot(to, pr)
        except UnavailableError:
            pr.next = log.last_index() + 1  # confused progress: probe again from our end
            pr.become_probe()
            return False
        if not ents and not send_if_empty and pr.state != _PROBE:
            return False  # (a probe goes out even empty: its answer tells where the logs match)
        self.msgs.append(Append(self.id, to, self.term, prev, prev_term, ents, log.committed))
        pr.sent_commit = log.committed
        pr.sent_entries(len(ents), ents[-1].index if ents else prev, sum(len(e.data) for e in ents), self.clock)
        return True

    def _send_snapshot(self, to: str, pr: Progress) -> bool:
        snap = self.log.pending_snapshot
        if snap is None:
            try:
                snap = self.storage.snapshot()
            except UnavailableError:
                return False  # the host cannot give one now; retried on the next heartbeat
        pr.become_snapshot(snap)
        self._send_chunk(to, pr)
        return True

    def _send_chunk(self, to: str, pr: Progress) -> None:
        snap = pr.snapshot
        off = pr.snap_offset
        chunk = snap.data[off:off + self.cfg.snapshot_chunk_size]
        done = off + len(chunk) >= len(snap.data)
        self.msgs.append(InstallSnapshot(self.id, to, self.term, snap.meta, off, chunk, done))
        pr.snap_moved_at = self.clock

    def _send_timeout_now(self, to: str) -> None:
        self.lease_disabled = True  # the target may win without waiting for our lease
        self.msgs.append(TimeoutNow(self.id, to, self.term))

    def _maybe_commit(self) -> bool:
        voters = self.membership.voters
        if not voters:
            return False
        prs = self.prs
        if not self.log.maybe_commit(quorum_index([prs[v].match if v in prs else 0 for v in voters]), self.term):
            return False
        if self.pending_reads and self.log.committed >= self.term_start:
            pending, self.pending_reads = self.pending_reads, []
            for ctx, requester in pending:
                self._leader_read(ctx, requester)
        if self.id not in voters and self.configs.latest_index <= self.log.committed:
            self._step_down_removed()
        return True

    def _step_down_removed(self) -> None:
        """Our removal is committed: tell everyone the commit, hand over, step down."""
        self._bcast_commit = True
        self._flush()
        last = self.log.last_index()
        for v in self.membership.voters:
            pr = self.prs.get(v)
            if pr is not None and pr.match == last:
                self._send_timeout_now(v)
                break
        self._become_follower(self.term, None)

    # ---------------------------------------------------------------- responses
    def _step_leader(self, m, t) -> None:
        pr = self.prs.get(m.src)
        if pr is None:
            if t is ReadIndex and self.membership.is_member(m.src):
                self._leader_read(m.ctx, m.src)
            return
        pr.recent_active = pr.heard = True
        if t is AppendResp:
            self._handle_append_resp(m, pr)
        elif t is HeartbeatResp:
            pr.heartbeat_answered(m.seq)
            if m.seq > pr.lease_seq:
                pr.lease_seq = m.seq
            if pr.state == _SNAPSHOT:
                # Retransmit the unacked chunk only if the transfer stood still for two
                # heartbeat intervals (a chunk lost); a moving transfer needs no duplicate.
                if self.clock - pr.snap_moved_at >= 2 * self.cfg.heartbeat_tick:
                    self._send_chunk(m.src, pr)
            elif pr.stalled():
                pr.become_probe()
                self._send_append(m.src, False)
            elif pr.match < self.log.last_index():
                self._send_append(m.src, False)
            if m.ctx:
                self._handle_read_ack(m.src, m.ctx)
        elif t is SnapshotResp:
            if pr.state == _SNAPSHOT and m.index == pr.pending_snapshot:
                pr.snap_moved_at = self.clock  # the last chunk's ack too: it is being installed
                if m.next_offset < len(pr.snapshot.data):
                    pr.snap_offset = m.next_offset
                    self._send_chunk(m.src, pr)
        elif t is ReadIndex:
            self._leader_read(m.ctx, m.src)

    def _handle_append_resp(self, m, pr: Progress) -> None:
        log = self.log
        if m.reject and m.index == 0:  # its log ends before what it acknowledged (FollowerMixin)
            if m.hint_index < pr.match:
                pr.match = m.hint_index
                pr.sent_commit = min(pr.sent_commit, pr.match)
                pr.become_probe()
                self._send_append(m.src, False)
            return
        if m.reject:
            hint = m.hint_index
            if m.hint_term > 0:
                hint = log.find_conflict_by_term(m.hint_index, m.hint_term)[0]
            if pr.maybe_decr_to(m.index, hint):
                if pr.state == _REPLICATE:
                    pr.become_probe()
                self._send_append(m.src, False)
            return
        if (
            pr.maybe_update(m.index)
            or (pr.state == _PROBE and pr.match == m.index)
            or (pr.state == _SNAPSHOT and pr.match >= pr.pending_snapshot)
        ):
            if pr.state == _PROBE:
                pr.become_replicate()
            elif pr.state == _SNAPSHOT:
                if pr.match + 1 >= log.first_index():
                    pr.become_probe()
                    pr.become_replicate()
                elif pr.match >= pr.pending_snapshot:
                    pr.become_probe()  # it has that snapshot, but we compacted past it since
            else:
                pr.inflights.free_le(m.index)
            self._maybe_commit()
            while self.role == Role.LEADER and self._send_append(m.src, False):
                pass
            if m.src == self.lead_transferee and pr.match == log.last_index():
                self._send_timeout_now(m.src)

    # ---------------------------------------------------------------- reads
    def _leader_read(self, ctx: bytes, requester: str) -> None:
        log = self.log
        if log.committed < self.term_start:
            self.pending_reads.append((ctx, requester))  # first commit our no-op
            return
        voters = self.membership.voters
        if voters == (self.id,) or self._lease_valid():
            self._respond_read(ctx, log.committed, requester)
            return
        if self.readonly.add(log.committed, ctx, requester):
            if self.id in voters:
                self.readonly.ack(self.id, ctx)
            self._bcast_heartbeat(ctx)

    def _handle_read_ack(self, node: str, ctx: bytes) -> None:
        acks = self.readonly.ack(node, ctx)
        if acks is None:
            return
        voters = self.membership.voters
        if sum(1 for v in voters if v in acks) >= quorum(len(voters)):
            for req in self.readonly.release(ctx):
                self._respond_read(req.ctx, req.index, req.requester)

    def _respond_read(self, ctx: bytes, index: int, requester: str) -> None:
        if requester == self.id:
            self.read_states.append(ReadState(ctx, index))
        else:
            self.msgs.append(ReadIndexResp(self.id, requester, self.term, ctx, index))
            pr = self.prs.get(requester)
            if pr is not None and pr.commit_behind(index):
                self._send_append(requester, True)  # it serves the read once it knows index

    def _lease_valid(self) -> bool:
        """Lease read: a quorum answered heartbeats sent at tick >= s, so no other
        leader can exist before s + election_tick (they ignore votes until then)."""
        cfg = self.cfg
        if not cfg.lease_read or not cfg.check_quorum or self.lease_disabled or self.lead_transferee is not None:
            return False
        voters = self.membership.voters
        s = quorum_index([self.clock if v == self.id else (self.prs[v].lease_seq if v in self.prs else -1) for v in voters])
        return s >= 0 and self.clock < s + cfg.election_tick - cfg.lease_margin

"""NodeMachine: the node's decisions around the Raft core, as a pure state machine.

A shell (threads in production, a seeded scheduler in a simulation) hands it events
with the time, ``handle(events, now, wall_us)``, and carries out the effects it returns
(:mod:`replication.runtime.events`) in order. It never reads a clock, a file or a
socket, starts no thread and holds no Future: time, randomness and I/O results are
arguments, callers are integer tokens.

What it decides: which proposals go into one batch and the journal time they carry;
which peer messages are admitted (peers are bound to the membership); how each Ready
splits into messages, one numbered disk item and apply-lane items; that durability
reports arrive in sequence; which reads are safe to serve; what a role change means
for waiting callers and leader hooks; when the next tick is due; a leader's periodic
checks (voters' clocks, its own disk lagging the commit).
"""
from __future__ import annotations

import logging
import random
from collections import deque
from typing import Any, Iterable

from prevalence.errors import CodecError
from prevalence.state import encode_command, newest_stamp
from prevalence.text import error_text
from replication.clock import JournalClock
from replication.core import RaftNode
from replication.errors import NoDiskSpace, NotLeader, RaftError
from replication.messages import MAX_TERM, AppendResp, HeartbeatResp, InstallSnapshot, encode
from replication.ready import Ready, Role
from replication.runtime.admission import Admission
from replication.runtime.disk_pace import DiskPace
from replication.runtime.events import (
    ApplyBlocked, ApplyWork, Call, Complete, DiskState, DiskWork, Effect, MembershipChanged, PeerMsg, Persisted,
    Propose, Read, Send, SnapshotWritten,
)
from replication.runtime.unreadable import ApplyGuard

log = logging.getLogger("replication.node")

_CLOCKED = (AppendResp, HeartbeatResp)  # follower replies that carry the sender's wall clock
INBOX_BATCH = 4096  # events one handle() takes at most before it handles the Readies


class NodeMachine:
    """One node's runtime decisions; see the module docstring. Not thread-safe: one
    owner at a time (the threaded shell's combining lock)."""

    def __init__(self, node_id: str, core: RaftNode, *, tick_interval: float, max_batch: int,
                 max_entry_bytes: int, slow_disk_handover: float | None, clock: JournalClock,
                 rng: random.Random, now: float, snapshot_every: int = 0) -> None:
        self.id = node_id
        self.core = core
        self.storage = core.storage
        self.tick_interval = tick_interval
        self.max_batch = max_batch
        self.max_entry_bytes = max_entry_bytes
        self.slow_disk_handover = slow_disk_handover
        self.clock = clock
        self.rng = rng
        self.role = Role.FOLLOWER
        self.membership = core.membership
        hs, _ms = self.storage.initial_state()
        self.written_tv = (hs.term, hs.vote)  # term and vote as last handed to the disk lane
        self.waiting: dict[int, tuple[int, int]] = {}  # index -> (term, token)
        self.reads: list[tuple[bytes, int, Any]] = []  # (ctx, token, query) awaiting a ReadState
        self.disk_seq = 0  # sequence number of the last DiskWork emitted
        self.disk_inflight: deque[DiskWork] = deque()  # emitted, not yet reported
        self.snapshot_sent: dict[str, int] = {}  # peer -> index last announced in the log
        self.disk_lag: tuple[int, float, float] | None = None  # see _watch_own_disk
        self.disk_full = False  # the disk lane reported ENOSPC and retries: commands are refused
        self.pace = DiskPace(node_id, tick_interval, core.cfg.election_tick)  # a slow disk delays campaigns
        self.snapshot_every = snapshot_every  # entries applied between automatic snapshots (0: never)
        self.last_snapshot_index = self.storage.first_index() - 1
        self.snapshotting: list[int] | None = None  # a snapshot under way: the tokens waiting for it
        self.snapshot_retry_at = 0.0  # after a failed automatic snapshot, not before this
        self.snapshot_backoff = 0.0
        self.snapshot_error: str | None = None  # why the last snapshot failed, until one succeeds
        self.checks_due = 0.0  # a leader's periodic checks
        # which peer messages reach the core; a read answer only for a read still waiting
        self.admission = Admission(node_id, lambda ctx: any(r[0] == ctx for r in self.reads))
        self.term_said = -120.0  # when the term bound was last said (see _run_ticks)
        self.clock_warned: dict[str, float] = {}  # node -> when its clock was last reported
        self.lost_log_said: dict[str, float] = {}  # node whose log lost entries -> when last said
        self.apply_guard = ApplyGuard(node_id, core, tick_interval)  # an entry this program cannot read
        cfg = core.cfg
        # An idle node need not wake for every tick: a leader wakes when a heartbeat is
        # due, others a few times per election timeout; each wake runs the ticks due.
        self._follower_ticks = max(1, cfg.election_tick // 3)
        self.next_tick = now + tick_interval
        self._out: list[Effect] = []

    # -- the one entry point ----------------------------------------------------------------
    def handle(self, events: Iterable[Any], now: float, wall_us: int, tick: bool = False) -> list[Effect]:
        """Step ``events`` (and the ticks due at ``now`` if ``tick``), then every Ready;
        returns the effects, in the order to carry them out."""
        proposals: list[Propose] = []
        for ev in events:
            if type(ev) is Propose:
                proposals.append(ev)
                if len(proposals) >= self.max_batch:
                    self._propose(proposals, now, wall_us)
                    proposals = []
            else:
                self._input(ev, now)
        if proposals:
            self._propose(proposals, now, wall_us)
        if tick:
            self._run_ticks(now)
        self._process_ready(now, wall_us)
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> float:
        """When the shell must next hand the machine a tick (monotonic seconds)."""
        per_wake = self.core.cfg.heartbeat_tick if self.role == Role.LEADER else self._follower_ticks
        if per_wake > 1 and self.core.commit_unsent():
            per_wake = 1  # followers learn a new commit within a tick
        return self.next_tick + (per_wake - 1) * self.tick_interval

    def halt(self, exc: BaseException) -> list[Effect]:
        """The node stops: every caller waiting on an index hears ``exc``."""
        self._fail_all(exc)
        out, self._out = self._out, []
        return out

    # -- inputs ------------------------------------------------------------------------------
    def _input(self, ev: Any, now: float) -> None:
        t = type(ev)
        if t is PeerMsg:
            m = self.admission.admit(ev.sender, ev.payload, self.core, now)
            if m is None:
                return
            if type(m) in _CLOCKED:
                self.clock.observe(m.src, m.wall_us, now)
                if type(m) is AppendResp and m.reject and m.index == 0:
                    self._lost_log(m.src, m.hint_index, now)
            self.core.step(m)
        elif t is Persisted:
            self._persisted(ev.seqs)
            if ev.seconds:
                self.core.election_slack = self.pace.observe(ev.seconds, now)
        elif t is Read:
            ctx = self.rng.randbytes(16)
            try:
                if self.apply_guard.blocked:  # it would wait for an index this node never applies
                    raise self.apply_guard.refusal()
                self.core.read_index(ctx)
                self.reads.append((ctx, ev.token, ev.query))
            except RaftError as exc:
                self._out.append(Complete(ev.token, exc=exc))
        elif t is DiskState:
            self._disk_state(ev.full)
        elif t is SnapshotWritten:
            self._snapshot_written(ev, now)
        elif t is ApplyBlocked:
            self.apply_guard.update(ev, now)
            if (hook := self.apply_guard.hooks(self.role)) is not None:
                self._out.append(ApplyWork(("hook", hook)))
        elif t is Call:
            try:
                value = ev.fn()
            except BaseException as exc:  # noqa: BLE001 - delivered to the caller
                self._out.append(Complete(ev.token, exc=exc))
            else:
                self._out.append(Complete(ev.token, value))
        else:
            raise RaftError(f"{self.id}: unknown event {t.__name__}")

    def _disk_state(self, full: bool) -> None:
        """A full disk loses nothing (the lane cut the write back and retries it), but
        this node can journal nothing meanwhile: it refuses commands, still serves
        reads, and a leader hands over at once to a voter that can write."""
        if full == self.disk_full:
            return
        self.disk_full = full
        if not full:
            log.warning("%s: the disk has space again: writing and accepting commands", self.id)
            return
        log.error("%s: the disk is full: refusing commands and retrying the write until space is freed", self.id)
        if self.role == Role.LEADER and self.core.lead_transferee is None:
            try:
                self.transfer_to_best()
                log.warning("%s: handing leadership to %s (this node's disk is full)", self.id,
                            self.core.lead_transferee)
            except RaftError as exc:
                log.warning("%s: this node's disk is full, and leadership cannot be handed over: %s", self.id, exc)

    def wait_for(self, index: int, token: int) -> None:
        """Complete ``token`` when the entry at ``index`` (this term's) is applied here."""
        self.waiting[index] = (self.core.term, token)

    def _lost_log(self, node: str, end: int, now: float, leader: str | None = None) -> None:
        """A follower's log ends before entries it had acknowledged (its data was put back
        from an old copy, or its disk lost writes that fsync had confirmed): the core
        sends them again, and this is said at ERROR, once a minute, by both sides."""
        if leader is None:  # we lead: is it news, or a repeat of what we already acted on?
            pr = self.core.prs.get(node) if self.role == Role.LEADER else None
            if pr is None or end >= pr.match:
                return
            what = f"{node}'s log ends at {end}, before the {pr.match} entries it acknowledged"
        else:
            what = f"this node's log ends at {end}, before entries it acknowledged to {leader}"
        if now - self.lost_log_said.get(node, -120.0) < 60.0:
            return
        self.lost_log_said[node] = now
        log.error("%s: %s: its data was put back from an old copy, or its disk lost writes; they are sent again. "
                  "Until then a majority counted on a copy that was gone: check that disk, and never put back a "
                  "node's old data (docs/operations.md, \"Rebuilding a node\")", self.id, what)

    def _propose(self, batch: list[Propose], now: float, wall_us: int) -> None:
        out = self._out
        if self.disk_full or self.apply_guard.blocked:  # blocked: committed, never applied (and answered) here
            hint = self.core.lead_transferee or (self.core.leader if self.core.leader != self.id else None)
            refusal = (NoDiskSpace(f"node {self.id!r} cannot journal commands: its disk is full", hint)
                       if self.disk_full else self.apply_guard.refusal())
            out.extend(Complete(p.token, exc=refusal) for p in batch)
            return
        ts = self.clock.stamp(self.membership.voters, wall_us, now)
        datas, tokens = [], []
        limit = self.max_entry_bytes
        for p in batch:
            try:  # one caller's unjournalable command (a session id past 64 bits) is its own error
                data = encode_command(ts, p.plain, p.session)
            except (TypeError, ValueError, OverflowError) as exc:
                out.append(Complete(p.token, exc=CodecError(f"cannot journal this command: {exc}")))
                continue
            if len(data) > limit:
                out.append(Complete(p.token, exc=CodecError(
                    f"cannot journal this command: {len(data)} bytes, over the limit of {limit} bytes for one entry")))
                continue
            datas.append(data)
            tokens.append(p.token)
        try:
            first = self.core.propose_batch(datas)
        except RaftError as exc:
            out.extend(Complete(token, exc=exc) for token in tokens)
            return
        term = self.core.term
        for k, token in enumerate(tokens):
            self.waiting[first + k] = (term, token)
        if tokens:
            self.pace.appended(first + len(tokens) - 1, now)

    def _run_ticks(self, now: float) -> None:
        interval = self.tick_interval
        if now - self.next_tick > 4 * self.core.cfg.election_tick * interval:
            self.next_tick = now  # we were paused (SIGSTOP, a frozen VM): no burst of ticks
        if self.core.election_slack:  # a disk that writes no more, or fast again, gives it back in time
            self.core.election_slack = self.pace.observe(0.0, now)
        while now >= self.next_tick:
            self.core.tick()
            self.next_tick += interval
        if (self.core.term >= MAX_TERM and self.role != Role.LEADER and self.id in self.membership.voters
                and now - self.term_said >= 60.0):
            self.term_said = now  # the core refuses to campaign past the bound (RaftNode.promotable)
            log.error("%s: this node will not campaign: its term %d is at the largest a node takes (2**62), which "
                      "only a member sending a forged or corrupt term can have brought it to (docs/security.md, "
                      "\"Peer message bounds\")", self.id, self.core.term)

    # -- Readies -----------------------------------------------------------------------------
    def _process_ready(self, now: float, wall_us: int) -> None:
        core = self.core
        while core.has_ready():
            rd = core.ready()
            self._handle_ready(rd, now, wall_us)
            core.advance(rd)
        every = self.snapshot_every
        if (every and self.snapshotting is None and now >= self.snapshot_retry_at and not self.apply_guard.blocked
                and core.log.applied - self.last_snapshot_index >= every and self._in_log(core.log.applied)):
            self._snapshot(core.log.applied)
        if now >= self.checks_due:
            self.checks_due = now + 0.1
            self.apply_guard.check(now, self.role)
            if self.role == Role.LEADER:
                self._report_clocks(now, wall_us)
                self._watch_own_disk(now)
        if core.membership is not self.membership:
            self.membership = core.membership
            log.info("%s: membership now voters=%s learners=%s", self.id,
                     ",".join(self.membership.voters), ",".join(self.membership.learners))
            self._out.append(MembershipChanged(self.membership))

    def _handle_ready(self, rd: Ready, now: float, wall_us: int) -> None:
        out = self._out
        if rd.soft_state is not None:
            self._role_changed(rd.soft_state.role, rd.soft_state.leader)
        apply = None
        if rd.snapshot is not None or rd.committed_entries:
            waiting = {}
            for e in rd.committed_entries:
                w = self.waiting.pop(e.index, None)
                if w is not None:
                    waiting[e.index] = w
            apply = ApplyWork(("apply", (rd.snapshot, rd.committed_entries, waiting)))
        hs = rd.hard_state
        tv_changed = hs is not None and (hs.term, hs.vote) != self.written_tv
        # What writes, or promises a write (acks, votes), is one disk lane item: its
        # messages leave, and the core hears of it, only in Ready order (etcd's rule).
        to_disk = (rd.entries or rd.snapshot is not None or rd.truncate_from is not None or tv_changed
                   or rd.persisted_messages)
        # A leader writes on the lane thread, in parallel with replicating; a follower,
        # whose ack must wait for the fsync anyway, may write on the thread at hand; its
        # entries are applied after that write (the applier would compete for the
        # interpreter meanwhile). A snapshot is a large write: always on the lane.
        inline = bool(to_disk) and self.role != Role.LEADER and rd.snapshot is None
        if apply is not None and rd.snapshot is None and not inline:
            out.append(apply)  # durable here already: apply while the rest goes on
        if rd.entries and self.role != Role.LEADER:
            self.clock.saw_stamp(newest_stamp(rd.entries))  # a leader's stamps: ours never go below
        for m in rd.persisted_messages:  # no wall clock: they leave after the disk, seconds late on a slow one
            if type(m) is AppendResp:
                if m.reject and m.index == 0:
                    self._lost_log(self.id, m.hint_index, now, m.dst)
        for m in rd.messages:
            if type(m) is HeartbeatResp:
                m.wall_us = wall_us
            elif type(m) is InstallSnapshot and m.offset == 0 and self.snapshot_sent.get(m.dst) != m.meta.index:
                self.snapshot_sent[m.dst] = m.meta.index
                log.info("%s: sending snapshot %d to %s", self.id, m.meta.index, m.dst)
            out.append(Send(m.dst, encode(m)))
        if to_disk:
            if tv_changed:
                self.written_tv = (hs.term, hs.vote)
            self.disk_seq += 1
            # a received snapshot is installed in the state machine once it is on disk
            work = DiskWork(self.disk_seq, rd, apply if rd.snapshot is not None else None, inline)
            self.disk_inflight.append(work)
            out.append(work)
        elif hs is not None:  # a commit only: kept in memory, nothing to wait for
            self.storage.note_commit(hs)
        if inline and apply is not None:
            out.append(apply)
        for rs in rd.read_states:
            for k, (ctx, token, q) in enumerate(self.reads):
                if ctx == rs.ctx:
                    del self.reads[k]
                    out.append(ApplyWork(("read", (rs.index, token, q))))
                    break

    def _persisted(self, seqs: list[int]) -> None:
        """The disk lane's report: the one place the core learns that writes are durable.

        Reports must come in submission order; anything else means two paths or a lost
        write, and the core would count the wrong entries as stored: stop instead.
        """
        inflight = self.disk_inflight
        for seq in seqs:
            expected = inflight[0].seq if inflight else None
            if seq != expected:
                raise RaftError(f"{self.id}: the disk lane reported write {seq} while {expected} was next: "
                                "durability reports out of order, stopping")
            work = inflight.popleft()
            if work.rd is None:
                self._snapshot_published(work.publish[0])
                continue
            if work.after is not None:
                self._out.append(work.after)
            if work.rd.snapshot is not None:
                self.last_snapshot_index = work.rd.snapshot.meta.index
            self.core.persisted(work.rd)

    def _role_changed(self, role: Role, leader: str | None) -> None:
        was, self.role = self.role, role
        self.checks_due = 0.0  # a new leader checks at once
        log.info("%s: %s in term %d (leader %s)", self.id, role, self.core.term, leader)
        if (hook := self.apply_guard.hooks(role)) is not None:
            self._out.append(ApplyWork(("hook", hook)))
        if was == Role.LEADER and role != Role.LEADER:
            for _ctx, token, _q in self.reads:  # a deposed leader cannot confirm them
                self._out.append(Complete(token, exc=NotLeader(self.id, leader)))
            self.reads.clear()

    def _fail_all(self, exc: BaseException) -> None:
        self._out.extend(Complete(token, exc=exc) for _t, token in self.waiting.values())
        self.waiting.clear()
        self._out.extend(Complete(token, exc=exc) for _c, token, _q in self.reads)
        self.reads.clear()

    # -- snapshots of this node's state ------------------------------------------------------
    def request_snapshot(self, token: int) -> None:
        """A snapshot now (``Node.snapshot``): ``token`` completes with its index."""
        if self.apply_guard.blocked:
            self._out.append(Complete(token, exc=self.apply_guard.refusal()))
        elif self.snapshotting is not None:
            self.snapshotting.append(token)  # the one under way answers it too
        elif self.core.log.applied <= self.last_snapshot_index or not self._in_log(self.core.log.applied):
            # nothing new, or the leader's snapshot being installed covers it
            self._out.append(Complete(token, max(self.last_snapshot_index, self.core.log.first_index() - 1)))
        else:
            self._snapshot(self.core.log.applied, token)

    def _in_log(self, index: int) -> bool:
        """Still in the log: not covered by a snapshot from the leader on its way to disk."""
        return index >= self.core.log.first_index() - 1

    def _snapshot(self, index: int, token: int | None = None) -> None:
        """The apply lane reaches ``index`` right before this item (the core handed it the
        entries up to there), captures the state there and writes the file off every lane
        that steps the core; its publication then takes the disk lane, in order with the
        writes, so nothing has to wait for the lane to drain."""
        self.snapshotting = [] if token is None else [token]
        meta = self.core.snapshot_meta(index)
        self._out.append(ApplyWork(("snapshot", (index, meta.term, meta.membership))))

    def _snapshot_written(self, ev: SnapshotWritten, now: float) -> None:
        tokens = self.snapshotting or []
        if ev.exc is not None:
            # not fatal (the journal still holds everything), but retrying after every
            # apply would spin: back off, up to 5 min
            self.snapshotting = None
            self.snapshot_backoff = min(max(2 * self.snapshot_backoff, 5.0), 300.0)
            self.snapshot_retry_at = now + self.snapshot_backoff
            log.error("%s: snapshot failed (next try in %.0f s): %s", self.id, self.snapshot_backoff, ev.exc)
            self.snapshot_error = error_text(ev.exc)  # status says it: the journal grows meanwhile
            self._out.extend(Complete(token, exc=ev.exc) for token in tokens)
            return
        if ev.index <= self.last_snapshot_index:  # a newer one came from the leader meanwhile
            self.snapshotting = None
            self._out.extend(Complete(token, self.last_snapshot_index) for token in tokens)
            return
        self.disk_seq += 1
        work = DiskWork(self.disk_seq, None, publish=(ev.meta, ev.membership))
        self.disk_inflight.append(work)
        self._out.append(work)

    def _snapshot_published(self, meta: Any) -> None:
        if meta.index > self.last_snapshot_index:  # else the leader's, installed first, covers it
            self.core.compact(meta.index)
            self.last_snapshot_index = meta.index
        self.snapshot_backoff, self.snapshot_error = 0.0, None
        tokens, self.snapshotting = self.snapshotting or [], None
        log.info("%s: snapshot at %d", self.id, self.last_snapshot_index)
        self._out.append(ApplyWork(("forget", self.storage.first_index())))
        self._out.extend(Complete(token, self.last_snapshot_index) for token in tokens)

    # -- a leader's periodic checks -------------------------------------------------------
    def transfer_to_best(self) -> None:
        """Hand leadership to the most up-to-date other voter."""
        st = self.core.status()
        voters = [p for p in st.voters if p != self.id]
        if not voters:
            raise RaftError("no other voter to hand leadership to")
        best = max(voters, key=lambda p: (st.progress[p].match if p in st.progress else -1, p))
        self.core.transfer_leadership(best)

    def _watch_own_disk(self, now: float) -> None:
        """A leader whose own disk is ``slow_disk_handover`` seconds behind the commit (the
        followers commit without it) hands leadership to the most up-to-date voter: it
        applies, and so answers, only what its own disk holds, so every client would wait
        for its slowest fsync. Measured on one index at a time: an index committed at t
        and still not durable here at t + limit, so a disk a few ms behind never counts;
        nor a disk as slow as the followers' (every PC on the same SD card): handing over
        to them gains nothing and costs an election each time, so the lag must also be
        twice what the followers took to commit that index."""
        limit = self.slow_disk_handover
        if limit is None:
            limit = self.core.cfg.election_tick * self.tick_interval
        core = self.core
        me = core.prs.get(self.id)
        lag = self.disk_lag  # (committed index, when seen committed and not durable here, its commit time)
        if not limit or me is None or core.lead_transferee is not None or (lag is not None and me.match >= lag[0]):
            self.disk_lag = lag = None
        if me is None or me.match >= core.log.committed:
            return
        if lag is None:
            proposed = self.pace.proposed_at(core.log.committed)
            self.disk_lag = (core.log.committed, now, 0.0 if proposed is None else now - proposed)
        elif now - lag[1] >= max(limit, 2 * lag[2]):
            self.disk_lag = None
            try:
                self.transfer_to_best()
            except RaftError as exc:
                log.warning("%s: this node's disk lags the commit, and leadership cannot be handed over: %s",
                            self.id, exc)
                return
            log.warning("%s: this node's disk is %.1f s behind the commit (durable %d, committed %d, which the "
                        "followers committed %.2f s after its proposal): handing leadership to %s", self.id,
                        now - lag[1], me.match, core.log.committed, lag[2], core.lead_transferee)

    def _report_clocks(self, now: float, wall_us: int) -> None:
        """A voter whose wall clock is far from the others' is named in the log (once a
        minute): the journal does not follow it, but its operator should fix it."""
        for node, offset in self.clock.outliers(self.membership.voters, wall_us, now).items():
            if now - self.clock_warned.get(node, -1e9) >= 60.0:
                self.clock_warned[node] = now
                who = "this node's" if node == self.id else f"node {node!r}'s"
                log.error("%s: %s wall clock is %+.3f s off the voters' median (more than %.3f s): the journal "
                          "time follows the median; fix the clock (NTP / Windows Time)", self.id, who,
                          offset / 1e6, self.clock.max_offset_us / 1e6)

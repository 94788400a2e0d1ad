"""The Raft state machine: pure, deterministic, driven by its host.

``RaftNode`` never touches a clock, a socket, a file or a thread. Time is ``tick()``;
network input is ``step(message)``; client input is ``propose`` / ``read_index`` /
``propose_config_change`` / ``transfer_leadership``. Everything the host must do in
response comes out as a :class:`~replication.ready.Ready` (see that module for the
durability contract). Randomness (election timeouts) comes from the ``random.Random``
handed in, so a seeded host replays exactly.

Design choices, each documented in docs/raft.md:
- a configuration takes effect on a node when its CONFIG entry is *appended* to its
  log (dissertation 4.1) and reverts if that entry is truncated;
- the leader counts its own log only once the host reports it durable (``advance``, or
  ``persisted`` with async storage writes), so a commit always means "on disk on a
  majority";
- a new commit index reaches followers on the next Append or heartbeat, or at the next
  tick at the latest; it is not worth a message of its own at once (the leader, which
  answers the client, already knows it);
- leader-only operations raise NotLeader on other nodes (no proposal forwarding).
"""
from __future__ import annotations

import random
from typing import Sequence

from prevalence.entry import Entry, EntryKind
from replication.errors import ConfigChangeRefused, NotLeader, RaftError, TransferInProgress
from replication.membership import (
    ChangeType, ConfigChange, ConfigHistory, Membership, apply_change, encode_membership,
)
from replication.messages import (
    MAX_TERM, Append, AppendResp, HardState, Heartbeat, InstallSnapshot, PreVote, PreVoteResp,
    ReadIndex, SnapshotMeta, Vote, VoteResp,
)
from replication.config import RaftConfig
from replication.follower import FollowerMixin
from replication.leader import LeaderMixin
from replication.progress import quorum, vote_result
from replication.raft_log import RaftLog
from replication.readonly import ReadOnly
from replication.ready import ReadState, Ready, Role, SoftState
from replication.status import PeerStatus, Status
from replication.storage import Storage

_CONFIG = int(EntryKind.CONFIG)
_COMMAND = int(EntryKind.COMMAND)
FOLLOWER, PRE_CANDIDATE, CANDIDATE, LEADER = Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE, Role.LEADER
# Messages that promise something about this node's disk: sent only once durable.
_AFTER_PERSIST = (Vote, VoteResp, AppendResp)


class RaftNode(FollowerMixin, LeaderMixin):
    """One Raft participant. Construct, then loop: input -> has_ready/ready -> advance."""

    def __init__(self, node_id: str, storage: Storage, config: RaftConfig, rng: random.Random) -> None:
        config.validate()
        self.id = node_id
        self.storage = storage
        self.cfg = config
        self.rng = rng
        hs, membership = storage.initial_state()
        self.log = log = RaftLog(storage)
        first, last = storage.first_index(), storage.last_index()
        # What the host applied was committed, even if the commit on disk lags behind it
        # (with async writes a node applies before the hard state carrying that commit
        # is written; a snapshot of the state machine can then be newer than it).
        log.committed = max(hs.commit, first - 1, config.applied)
        if log.committed > last:
            raise RaftError(f"persisted commit {hs.commit} or applied index {config.applied} "
                            f"is past the last stored index {last}")
        log.applied = max(config.applied, first - 1)
        self.configs = ConfigHistory(first - 1, membership)
        lo = first
        while lo <= last:
            ents = storage.entries(lo, last + 1, 1 << 22)
            self.configs.observe(ents)
            lo = ents[-1].index + 1
        self.membership: Membership = self.configs.current
        self.term, self.vote = hs.term, hs.vote
        self.role = FOLLOWER
        self.leader: str | None = None
        self.msgs: list = []
        self.msgs_after: list = []
        self.prs: dict = {}
        self.peers: tuple[str, ...] = ()
        self.votes: dict[str, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = config.election_tick
        self.election_slack = 0  # ticks more before campaigning: the host's disk is slow (DiskPace)
        self.transfer_until = 0  # self.clock at which a leadership transfer under way is aborted
        self.lead_transferee: str | None = None
        self.term_start = 0  # index of this leader's no-op
        self.lead_ticks = 0  # ticks since this node last became leader
        self.readonly = ReadOnly()
        self.pending_reads: list[tuple[bytes, str]] = []  # before the first commit in term
        self.read_states: list[ReadState] = []  # waiting for applied >= index
        self.clock = 0  # ticks since start (lease bookkeeping)
        self.lease_disabled = False
        # The tick at which a leader last reached us (Append, Heartbeat, snapshot), kept
        # apart from self.leader, which a higher term clears: answering a heartbeat is a
        # promise not to vote for an election timeout, whatever happens meanwhile.
        # After a restart we do not know what we promised: count it as just heard (only
        # lease reads depend on the promise, so only then).
        self.heard_at: int | None = 0 if config.lease_read else None
        self._bcast = False
        self._bcast_commit = False
        self._snap_rx: tuple[str, int, SnapshotMeta, bytearray] | None = None  # see follower.py
        self._prev_hs = hs
        self._prev_soft = SoftState(None, FOLLOWER)
        self._outstanding = False
        self._written_upto = storage.last_index()  # async writes: last index handed out
        # A crash between a Ready's entries and its term leaves the log's last term past the
        # stored one; our messages must not name it before our term (no vote in it was sent)
        self._become_follower(max(self.term, log.last_term()), None)

    # ================================================================ host inputs
    def tick(self) -> None:
        """Advance logical time by one tick (the host calls it at a fixed period)."""
        self.clock += 1
        if self.role == LEADER:
            self._tick_leader()
            return
        self.election_elapsed += 1
        if self.election_elapsed >= self.randomized_timeout + self.election_slack and self.may_campaign():
            self.election_elapsed = 0
            self._campaign(transfer=False)

    def propose(self, data: bytes) -> int:
        """Append a command; returns the index it will have if it commits."""
        self._check_can_propose()
        index = self.log.last_index() + 1
        self.log.append([Entry(index, self.term, _COMMAND, bytes(data))])
        self._bcast = True
        return index

    def propose_batch(self, datas: Sequence[bytes]) -> int:
        """Append several commands at once (one log write, one message per follower);
        returns the index of the first."""
        self._check_can_propose()
        first = self.log.last_index() + 1
        term = self.term
        if datas:
            self.log.append([Entry(first + i, term, _COMMAND, bytes(d)) for i, d in enumerate(datas)])
            self._bcast = True
        return first

    def propose_config_change(self, change: ConfigChange) -> int:
        """Append a single-server membership change; returns its index.

        Refused unless this leader has committed an entry of its term (a no-op), and
        while another change is still uncommitted (one pending at a time).
        """
        self._check_can_propose()
        if self.log.committed < self.term_start:
            raise ConfigChangeRefused("the leader has not yet committed an entry of its term")
        if self.configs.latest_index > self.log.committed:
            raise ConfigChangeRefused(f"the configuration change at {self.configs.latest_index} is still pending")
        new = apply_change(self.membership, change)
        index = self.log.last_index() + 1
        self._append_leader([Entry(index, self.term, _CONFIG, encode_membership(new))])
        return index

    def change_problem(self, change: ConfigChange) -> str | None:
        """Why making ``change`` now would cost availability, or None: a policy for an
        operator's changes (the node runtime asks it; the core itself accepts any change
        that makes sense, so the simulator's random ones keep their coverage).

        A promoted learner must hold 90 % of the log (etcd's rule) and answer: a voter
        that lags counts toward the quorum without helping to reach it. And after a
        change, the voters that answer the leader must still be a quorum (etcd's strict
        reconfiguration check): removing a live voter while another is down, or adding
        one while it is not up, would stop the cluster."""
        if self.role != LEADER:
            return None  # propose_config_change refuses it
        node, op = change.node_id, change.op
        pr = self.prs.get(node)
        if op == ChangeType.PROMOTE_LEARNER:
            if pr is None or not pr.is_learner:
                return None  # not a learner: apply_change says so
            last = self.log.last_index()
            if 10 * pr.match < 9 * last:
                return (f"{node!r} has not caught up: it holds {pr.match} of the leader's {last} entries; promote "
                        "it once it holds 90 % of them (its applied index in `prevalence status`)")
            if not pr.heard_lately():
                return f"{node!r} has not answered the leader within an election timeout: start it first"
        voters = set(self.membership.voters)
        after = voters | {node} if op in (ChangeType.PROMOTE_LEARNER, ChangeType.ADD_VOTER) else \
            voters - {node} if op == ChangeType.REMOVE_VOTER else voters
        if after == voters or not after:
            return None
        up = sorted(v for v in after if v == self.id or (v in self.prs and self.prs[v].heard_lately()))
        need = quorum(len(after))
        if len(up) < need:
            fix = ("add it as a learner, start it, and promote it once it has caught up" if op == ChangeType.ADD_VOTER
                   else "bring the others back first")
            return (f"the cluster would stop: its {len(after)} voters after the change ({', '.join(sorted(after))}) "
                    f"need {need} for a quorum, and {len(up)} answer the leader ({', '.join(up) or 'none'}); {fix}")
        return None

    def change_settling(self) -> bool:
        """Could a refused change pass if asked again in a moment? True while a new leader
        has not committed its no-op, or is in its first election timeout: in it the
        leader hears each live voter (several heartbeats), and before that the policy
        counts a voter not heard yet as down."""
        return self.role == LEADER and (self.log.committed < self.term_start
                                        or self.lead_ticks < self.cfg.election_tick)

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read; a ReadState(ctx, index) comes out in a later
        Ready once the state machine has applied up to index. ``ctx`` must be unique."""
        ctx = bytes(ctx)
        if self.role == LEADER:
            self._leader_read(ctx, self.id)
        elif self.leader is None:
            raise NotLeader(self.id, None)
        else:
            self._send(ReadIndex(self.id, self.leader, self.term, ctx))

    def transfer_leadership(self, to: str) -> None:
        """Hand leadership to voter ``to``: catch it up, then tell it to campaign now.
        Aborted after an election timeout; proposals are refused meanwhile."""
        if self.role != LEADER:
            raise NotLeader(self.id, self.leader)
        if to == self.id:
            self.lead_transferee = None
            return
        if to not in self.membership.voters:
            raise RaftError(f"cannot transfer leadership to {to!r}: not a voter")
        if self.lead_transferee == to:
            return
        self.lead_transferee = to
        self.election_elapsed = 0
        # the target's campaign waits for its disk and its voters': on slow disks, longer
        self.transfer_until = self.clock + self.cfg.election_tick + self.election_slack
        if self.prs[to].match == self.log.last_index():
            self._send_timeout_now(to)
        else:
            self._send_append(to, False)

    def snapshot_meta(self, index: int) -> SnapshotMeta:
        """Metadata for a snapshot the host takes of its state machine at ``index``."""
        if index > self.log.applied:
            raise RaftError(f"cannot snapshot at {index}: only {self.log.applied} is applied")
        return SnapshotMeta(index, self.log.term(index), self.configs.at(index))

    def compact(self, index: int) -> None:
        """The host stored a snapshot at ``index`` and compacted storage up to it."""
        if index > self.log.applied:
            raise RaftError(f"cannot compact past the applied index {self.log.applied}")
        self.configs.compact(min(index, self.storage.first_index() - 1))

    def promotable(self) -> bool:
        """May this node start elections?

        Voters may. So may a node whose removal is appended but not yet committed
        (dissertation 4.2.2): it may hold the only up-to-date log that the remaining
        voters need, so it must be able to lead long enough to commit its removal.
        It does not count its own vote then (only voters of the latest config count).
        """
        if self.term >= MAX_TERM:
            return False  # a campaign would step past it (the host says so)
        if self.id in self.membership.voters:
            return True
        latest = self.configs.latest_index
        return latest > self.log.committed and self.id in self.configs.at(latest - 1).voters

    def status(self) -> Status:
        prs = {
            p: PeerStatus(pr.match, pr.next, pr.state.name.lower(), pr.recent_active, pr.is_learner, pr.inflights.count())
            for p, pr in sorted(self.prs.items())
        }
        log = self.log
        return Status(
            self.id, str(self.role), self.term, self.vote, self.leader, log.committed, log.applied,
            log.first_index(), log.last_index(), self.membership.voters, self.membership.learners,
            self.lead_transferee, prs,
        )

    # ================================================================ ready / advance
    def has_ready(self) -> bool:
        if self._outstanding:
            return False
        self._flush()
        log = self.log
        if self.msgs or self.msgs_after:
            return True
        sync = not self.cfg.async_storage_writes
        if log.has_unhanded() if not sync else (log.unstable or log.pending_snapshot is not None):
            return True
        if HardState(self.term, self.vote, log.committed) != self._prev_hs:
            return True
        if self._prev_soft.leader != self.leader or self._prev_soft.role != self.role:
            return True
        if log.has_next_committed(sync):
            return True
        applied = log.applied
        return any(rs.index <= applied for rs in self.read_states)

    def ready(self) -> Ready:
        """Collect everything the host must do now (see replication.ready)."""
        if self._outstanding:
            raise RaftError("advance() the previous Ready before asking for another")
        self._flush()
        log = self.log
        rd = Ready()
        hs = HardState(self.term, self.vote, log.committed)
        if hs != self._prev_hs:
            rd.hard_state = self._prev_hs = hs
        if self._prev_soft.leader != self.leader or self._prev_soft.role != self.role:
            rd.soft_state = self._prev_soft = SoftState(self.leader, self.role)
        sync = not self.cfg.async_storage_writes
        if sync:
            rd.snapshot = log.pending_snapshot
            if log.unstable:
                rd.entries = list(log.unstable)
                if rd.snapshot is None and log.offset <= self.storage.last_index():
                    rd.truncate_from = log.offset
        else:  # only what no earlier Ready handed out; those writes may still be under way
            rd.snapshot = log.pending_snapshot if not log.snap_in_progress else None
            rd.entries = log.take_unhanded()
            if rd.snapshot is not None:
                self._written_upto = rd.snapshot.meta.index
            if rd.entries:
                if rd.snapshot is None and rd.entries[0].index <= self._written_upto:
                    rd.truncate_from = rd.entries[0].index
                self._written_upto = rd.entries[-1].index
        if log.has_next_committed(sync):
            rd.committed_entries = log.next_committed(self.cfg.max_committed_size_per_ready, sync)
        if self.read_states:
            applied = log.applied
            rd.read_states = [rs for rs in self.read_states if rs.index <= applied]
            if rd.read_states:
                self.read_states = [rs for rs in self.read_states if rs.index > applied]
        rd.messages, rd.persisted_messages = self.msgs, self.msgs_after
        self.msgs, self.msgs_after = [], []
        self._outstanding = True
        return rd

    def advance(self, rd: Ready) -> None:
        """The host persisted, sent and applied ``rd`` (with async storage writes: sent
        its messages, queued its writes in order, and took its entries to apply)."""
        if not self._outstanding:
            raise RaftError("advance() called without an outstanding Ready")
        self._outstanding = False
        if not self.cfg.async_storage_writes:
            self._stable(rd)
        if rd.committed_entries:
            self.log.applied = max(self.log.applied, rd.committed_entries[-1].index)

    def persisted(self, rd: Ready) -> None:
        """Async storage writes: ``rd``'s writes are durable (reported in Ready order).

        The host has sent ``rd.persisted_messages`` and installed ``rd.snapshot`` in its
        state machine. A leader now counts these entries of its own toward the commit.
        """
        if not self.cfg.async_storage_writes:
            raise RaftError("persisted() is for async_storage_writes; advance() covers it otherwise")
        self._stable(rd)

    def _stable(self, rd: Ready) -> None:
        log = self.log
        if rd.snapshot is not None:
            log.stable_snapshot_to(rd.snapshot.meta.index)
            log.applied = max(log.applied, rd.snapshot.meta.index)
        if rd.entries:
            last = rd.entries[-1]
            log.stable_to(last.index, last.term)
            if self.role == LEADER and log.offset > last.index and log.match_term(last.index, last.term):
                pr = self.prs.get(self.id)
                if pr is not None and pr.maybe_update(last.index):
                    self._maybe_commit()

    # ================================================================ elections
    def _randomize(self) -> None:
        et = self.cfg.election_tick
        self.randomized_timeout = et + self.rng.randrange(et)

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
        self.leader = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._randomize()
        self.lead_transferee = None
        self.votes = {}
        self.prs = {}
        self.peers = ()
        self.readonly.clear()
        self.pending_reads = []
        self._bcast = self._bcast_commit = False

    def _become_follower(self, term: int, leader: str | None) -> None:
        self._reset(term)
        self.role = FOLLOWER
        self.leader = leader

    def _campaign(self, transfer: bool) -> None:
        """Start a pre-vote (if enabled), or an election right away for a transfer."""
        if self.cfg.pre_vote and not transfer:
            self.role = PRE_CANDIDATE
            self.leader = None
            self.votes = {self.id: True}
            self._randomize()
            if self._tally() == 0:
                self._request_votes(PreVote, self.term + 1, False)
        else:
            self._elect(transfer)

    def _elect(self, transfer: bool) -> None:
        self._reset(self.term + 1)
        self.role = CANDIDATE
        self.vote = self.id
        self.votes = {self.id: True}
        if self._tally() == 0:
            self._request_votes(Vote, self.term, transfer)

    def _request_votes(self, kind: type, term: int, transfer: bool) -> None:
        li = self.log.last_index()
        lt = self.log.term(li)
        for v in self.membership.voters:
            if v != self.id:
                if kind is Vote:
                    self._send(Vote(self.id, v, term, li, lt, transfer))
                else:
                    self._send(PreVote(self.id, v, term, li, lt))

    def _tally(self) -> int:
        """Act on the vote count: win (-> next phase), lose (-> follower) or wait."""
        result = vote_result(self.membership.voters, self.votes)
        if result == 1:
            if self.role == PRE_CANDIDATE:
                self._elect(transfer=False)
            else:
                self._become_leader()
        elif result == -1:
            self._become_follower(self.term, None)
        return result

    def _handle_vote_request(self, m) -> None:
        pre = type(m) is PreVote
        can_vote = (
            self.vote == m.src
            or (self.vote is None and self.leader is None)
            or (pre and m.term > self.term)
        ) and (not self._in_lease() or (not pre and m.transfer))  # step() drops higher terms; same term here
        if can_vote and self.log.is_up_to_date(m.last_index, m.last_term):
            if pre:
                self._send(PreVoteResp(self.id, m.src, m.term, False))
            else:
                self.election_elapsed = 0
                self.vote = m.src
                self._send(VoteResp(self.id, m.src, m.term, False))
        elif pre:
            self._send(PreVoteResp(self.id, m.src, self.term, True))
        else:
            self._send(VoteResp(self.id, m.src, self.term, True))

    # ================================================================ step
    def step(self, m) -> None:
        """Feed one message from a peer."""
        t = type(m)
        if m.dst != self.id or m.src == self.id:
            return
        if m.term > self.term:
            if t is Vote or t is PreVote:
                if self._in_lease() and not (t is Vote and m.transfer):
                    return  # a leader we heard from recently is alive: ignore disruptors
            if t is PreVote or (t is PreVoteResp and not m.reject):
                pass  # pre-votes never change our term
            elif t is Append or t is Heartbeat or t is InstallSnapshot:
                self._become_follower(m.term, m.src)
            else:
                self._become_follower(m.term, None)
        elif m.term < self.term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and (t is Append or t is Heartbeat):
                # tell a stale leader about the newer term so it steps down
                self._send(AppendResp(self.id, m.src, self.term))
            elif t is PreVote:
                self._send(PreVoteResp(self.id, m.src, self.term, True))
            return
        if t is Vote or t is PreVote:
            self._handle_vote_request(m)
            return
        role = self.role
        if role == LEADER:
            self._step_leader(m, t)
            return
        if role != FOLLOWER and (t is Append or t is Heartbeat or t is InstallSnapshot):
            self._become_follower(self.term, m.src)  # a leader exists in our term
        if self.role == FOLLOWER:
            self._step_follower(m, t)
        elif (t is VoteResp and role == CANDIDATE) or (t is PreVoteResp and role == PRE_CANDIDATE):
            self.votes.setdefault(m.src, not m.reject)
            self._tally()

    def _in_lease(self) -> bool:
        """Has a leader (or this node, leading) reached us within an election timeout?
        Then (pre)votes are refused: CheckQuorum's protection against disruption, and
        the promise a leader's lease reads rely on."""
        if not self.cfg.check_quorum:
            return False
        if self.role == LEADER:
            return True
        return self.heard_at is not None and self.clock - self.heard_at < self.cfg.election_tick

    def _membership_changed(self) -> None:
        self.membership = self.configs.current
        if self.role == LEADER:
            self._update_progress_set()

    # ================================================================ output
    def _send(self, m) -> None:
        if type(m) in _AFTER_PERSIST:
            self.msgs_after.append(m)
        else:
            self.msgs.append(m)

    def _check_can_propose(self) -> None:
        if self.role != LEADER:
            raise NotLeader(self.id, self.leader)
        if self.lead_transferee is not None:
            raise TransferInProgress(
                f"node {self.id!r} is transferring leadership to {self.lead_transferee!r}", self.lead_transferee
            )


__all__ = ["RaftConfig", "RaftNode", "Status", "PeerStatus"]

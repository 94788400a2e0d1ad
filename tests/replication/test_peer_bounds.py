"""Numbers a peer sends into the Raft core: what is in the decoder's range, yet would
stop the cluster for good or mislead the leader, is dropped where messages enter, and
the node goes on serving.

Each test plays the shell around a NodeMachine (see test_node_machine.py) and hands it
the message a buggy or hostile member could send.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from prevalence.codec import CODEC
from prevalence.entry import Entry, EntryKind
from replication.clock import JournalClock
from replication.config import RaftConfig
from replication.core import RaftNode
from replication.errors import DecodeError
from replication.membership import Membership
from replication.messages import (
    MAX_INDEX, MAX_TERM, Append, AppendResp, HardState, Heartbeat, HeartbeatResp, InstallSnapshot, PreVote,
    PreVoteResp, ReadIndex, ReadIndexResp, SnapshotMeta, SnapshotResp, TimeoutNow, Vote, VoteResp, decode, encode,
)
from replication.ready import Role
from replication.runtime.events import PeerMsg, Propose, Read, Send
from replication.runtime.machine import NodeMachine
from replication.storage import MemoryStorage
from tests.prevalence.domain import Add
from tests.replication.test_node_machine import TICK, Shell

TOP = (1 << 63) - 1  # the largest integer the decoder takes
TRIO = ("n1", "n2", "n3")


def machine(node_id: str = "n1", voters: tuple[str, ...] = TRIO, term: int = 0, **cfg_kw) -> NodeMachine:
    storage = MemoryStorage(Membership(voters))
    if term:
        storage.set_hard_state(HardState(term, None, 0))
    cfg = RaftConfig(election_tick=10, heartbeat_tick=5, **cfg_kw)
    cfg.async_storage_writes = True
    core = RaftNode(node_id, storage, cfg, random.Random(1))
    return NodeMachine(node_id, core, tick_interval=TICK, max_batch=512, max_entry_bytes=1 << 20,
                       slow_disk_handover=None, clock=JournalClock(node_id, 500_000), rng=random.Random(2), now=0.0)


def leader(**cfg_kw) -> Shell:
    sh = Shell(machine(**cfg_kw))
    sh.elect_with("n2")
    sh.sent.clear()
    return sh


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def with_term(kind: type, term: int, src: str = "n2", dst: str = "n1"):
    """A message of ``kind`` in ``term``, its other fields plain."""
    meta = SnapshotMeta(1, 1, Membership(TRIO))
    return {
        PreVote: lambda: PreVote(src, dst, term, 0, 0),
        PreVoteResp: lambda: PreVoteResp(src, dst, term, True),
        Vote: lambda: Vote(src, dst, term, 0, 0),
        VoteResp: lambda: VoteResp(src, dst, term, True),
        Append: lambda: Append(src, dst, term, 0, 0, [], 0),
        AppendResp: lambda: AppendResp(src, dst, term, 0, True),
        Heartbeat: lambda: Heartbeat(src, dst, term),
        HeartbeatResp: lambda: HeartbeatResp(src, dst, term),
        InstallSnapshot: lambda: InstallSnapshot(src, dst, term, meta, 0, b"x", True),
        SnapshotResp: lambda: SnapshotResp(src, dst, term, 1, 0),
        TimeoutNow: lambda: TimeoutNow(src, dst, term),
        ReadIndex: lambda: ReadIndex(src, dst, term, b"c"),
        ReadIndexResp: lambda: ReadIndexResp(src, dst, term, b"c", 0),
    }[kind]()


KINDS = [PreVote, PreVoteResp, Vote, VoteResp, Append, AppendResp, Heartbeat, HeartbeatResp, InstallSnapshot,
         SnapshotResp, TimeoutNow, ReadIndex, ReadIndexResp]


# ------------------------------------------------------------------------------- terms
def _past_bound_fields():
    """(message, field) for every term and index a message carries, that field one past
    its bound; entries and snapshot metadata too."""
    for kind in KINDS:
        base = with_term(kind, 1)
        for f in dataclasses.fields(kind):
            if f.type == "int" and (f.name.endswith("term") or f.name in ("index", "last_index", "prev_index",
                                                                              "hint_index", "commit")):
                yield dataclasses.replace(base, **{f.name: MAX_TERM + 1}), f"{kind.__name__}.{f.name} "
    noop = int(EntryKind.NOOP)
    yield Append("n2", "n1", 1, MAX_INDEX, 1, [Entry(MAX_INDEX + 1, 1, noop, b"")], 0), "Append.entries index"
    yield Append("n2", "n1", 1, 0, 0, [Entry(1, MAX_TERM + 1, noop, b"")], 0), "Append.entries term"
    for meta in (SnapshotMeta(MAX_INDEX + 1, 1, Membership(TRIO)), SnapshotMeta(1, MAX_TERM + 1, Membership(TRIO))):
        which = "index" if meta.index > MAX_INDEX else "term"
        yield InstallSnapshot("n2", "n1", 1, meta, 0, b"", True), f"InstallSnapshot.meta.{which}"


@pytest.mark.parametrize("msg, field", list(_past_bound_fields()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_term_and_index_past_its_bound_is_a_decode_error_naming_the_field(msg, field):
    with pytest.raises(DecodeError, match=f"^{re.escape(field)}"):
        decode(encode(msg))


def test_a_heartbeat_answer_in_the_largest_term_is_dropped_and_the_leader_keeps_leading(caplog):
    """The known defect: the leader took term 2**63-1 from one answer, and every later
    election needed term 2**63, which every decoder refuses: no leader ever again."""
    sh = leader()
    term = sh.m.core.term
    with caplog.at_level(logging.WARNING, logger="replication.node"):
        sh.step([PeerMsg("n2", encode(HeartbeatResp("n2", "n1", TOP)))])
        sh.step([PeerMsg("n2", encode(HeartbeatResp("n2", "n1", TOP)))])
    assert sh.m.core.term == term and sh.m.role == Role.LEADER
    said = [w for w in warnings(caplog) if "HeartbeatResp.term" in w]
    assert len(said) == 1, warnings(caplog)  # once, not per message
    assert "'n2'" in said[0] and "\n" not in said[0]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
@pytest.mark.parametrize("term", [MAX_TERM + 1, TOP])
def test_no_message_moves_a_node_past_the_term_bound(kind, term):
    for sh in (leader(), Shell(machine("n3"))):
        before = sh.m.core.term
        sh.step([PeerMsg("n2", encode(with_term(kind, term, dst=sh.m.id)))])
        assert sh.m.core.term == before
        for _ in range(60):  # and it still elects: every message it sends decodes
            sh.now += TICK
            sh.step(tick=True)
        assert sh.m.core.term <= MAX_TERM


def test_a_node_at_the_term_bound_refuses_to_campaign_with_an_error(caplog):
    sh = Shell(machine("n1", ("n1",), term=MAX_TERM))
    with caplog.at_level(logging.ERROR, logger="replication.node"):
        for _ in range(200):
            sh.now += TICK
            sh.step(tick=True)
    assert sh.m.core.term == MAX_TERM and sh.m.role != Role.LEADER
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "campaign" in errors[0], errors  # once a minute, not per tick


def test_a_message_at_the_term_bound_is_taken_but_the_node_goes_no_further():
    """Even with a voter granting every (pre)vote it asks."""
    sh = Shell(machine("n3"))
    sh.step([PeerMsg("n2", encode(Vote("n2", "n3", MAX_TERM, 0, 0)))])
    assert sh.m.core.term == MAX_TERM
    for _ in range(200):
        sh.now += TICK
        sh.step(tick=True)
        for m in [x for x in sh.sent if type(x) in (Vote, PreVote) and x.dst == "n2"]:
            resp = VoteResp if type(m) is Vote else PreVoteResp
            sh.step([PeerMsg("n2", encode(resp("n2", "n3", m.term, False)))])
        sh.sent.clear()
    assert sh.m.core.term == MAX_TERM


# ------------------------------------------------------------- a leader's answers
def test_an_ack_past_the_leaders_log_is_dropped_and_the_follower_still_gets_entries(caplog):
    """Taken, it counted toward the commit and pinned n2's progress past the log: every
    append to n2 then failed to read its prev entry, and n2 got nothing for the term."""
    sh = leader()
    core = sh.m.core
    last = core.log.last_index()
    with caplog.at_level(logging.WARNING, logger="replication.node"):
        sh.step([PeerMsg("n2", encode(AppendResp("n2", "n1", core.term, 1 << 40)))])
    assert core.log.committed < last  # n3 and n2 acknowledged nothing: nothing committed
    said = [w for w in warnings(caplog) if "AppendResp.index" in w]
    assert len(said) == 1 and "'n2'" in said[0], warnings(caplog)
    sh.step([PeerMsg("n2", encode(AppendResp("n2", "n1", core.term, last)))])
    assert core.log.committed == last
    sh.sent.clear()
    sh.step([Propose(CODEC.to_plain(Add("x", 1)), None, 1)])
    assert any(type(x) is Append and x.dst == "n2" and x.entries and x.entries[-1].index == last + 1
               for x in sh.sent), sh.sent


def _lease_leader() -> Shell:
    sh = leader(lease_read=True)
    core = sh.m.core
    sh.step([PeerMsg("n2", encode(AppendResp("n2", "n1", core.term, core.log.last_index())))])
    assert core.log.committed == core.log.last_index()  # its no-op: reads may be served
    return sh


def _served_at_once(sh: Shell, token: int) -> bool:
    before = len(sh.applied)
    sh.step([Read("q", token)])
    return any(it[0] == "read" and it[1][1] == token for it in sh.applied[before:])


def test_a_heartbeat_answer_from_past_the_leaders_clock_earns_no_lease(caplog):
    """Taken, n2's lease tick stayed ahead of the leader's clock for the whole term: the
    leader served reads from a lease nobody had granted, until CheckQuorum deposed it,
    while the others could already elect a new leader and commit."""
    sh = _lease_leader()
    core = sh.m.core
    with caplog.at_level(logging.WARNING, logger="replication.node"):
        sh.step([PeerMsg("n2", encode(HeartbeatResp("n2", "n1", core.term, b"", 1 << 40)))])
    assert not _served_at_once(sh, 7)  # nobody answered a heartbeat: it asks a quorum first
    assert any("HeartbeatResp.seq" in w and "'n2'" in w for w in warnings(caplog)), warnings(caplog)


def test_an_answered_heartbeat_still_earns_the_lease():
    sh = _lease_leader()
    core = sh.m.core
    while not any(type(x) is Heartbeat and x.dst == "n2" for x in sh.sent):
        sh.now += TICK
        sh.step(tick=True)
    hb = next(x for x in sh.sent if type(x) is Heartbeat and x.dst == "n2")
    sh.step([PeerMsg("n2", encode(HeartbeatResp("n2", "n1", core.term, hb.ctx, hb.seq)))])
    assert _served_at_once(sh, 8)


# ------------------------------------------------------------- terms from the future
def _noop(index: int, term: int) -> Entry:
    return Entry(index, term, int(EntryKind.NOOP), b"")


@pytest.mark.parametrize("msg, field", [
    (Append("n1", "n3", 1, 0, 0, [_noop(1, 5)], 0), "Append.entries term"),
    (Append("n1", "n3", 3, 0, 0, [_noop(1, 3), _noop(2, 2)], 0), "Append.entries term"),
    (Append("n1", "n3", 3, 1, 3, [_noop(2, 2)], 0), "Append.entries term"),
    (Append("n1", "n3", 1, 1, 2, [], 0), "Append.prev_term"),
    (Vote("n1", "n3", 1, 1, 2), "Vote.last_term"),
    (PreVote("n1", "n3", 1, 1, 2), "PreVote.last_term"),
    (AppendResp("n1", "n3", 1, 1, True, 1, 2), "AppendResp.hint_term"),
    (InstallSnapshot("n1", "n3", 1, SnapshotMeta(1, 2, Membership(TRIO)), 0, b"", True), "InstallSnapshot.meta.term"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_message_naming_a_term_past_its_own_or_a_log_whose_terms_go_back_is_refused(msg, field):
    """A log's terms never decrease, and nothing a member sends in term t can name an
    entry of a later term. A follower that appended an entry of a term nobody reached
    held the most up-to-date log there is: it won the next election with it, and
    replicated an entry of that term after entries of later ones."""
    with pytest.raises(DecodeError, match=f"^{re.escape(field)}"):
        decode(encode(msg))


def test_a_follower_keeps_its_log_when_its_leader_sends_an_entry_from_a_later_term(caplog):
    sh = Shell(machine("n3"))
    with caplog.at_level(logging.WARNING, logger="replication.node"):
        sh.step([PeerMsg("n1", encode(Append("n1", "n3", 1, 0, 0, [_noop(1, MAX_TERM)], 0)))])
    assert sh.m.core.log.last_index() == 0
    assert any("'n1'" in w and "Append.entries term" in w for w in warnings(caplog)), warnings(caplog)


# ---------------------------------------------------------------- a follower's reads
def test_read_answers_are_taken_only_from_the_leader_the_follower_asked(caplog):
    """A follower asks only its leader. Answers from another member for far indexes were
    each kept until the node applied that far: memory, and a scan of them all at every
    step, that grew with every message."""
    sh = Shell(machine("n3"))
    sh.step([PeerMsg("n1", encode(Heartbeat("n1", "n3", 1)))])
    assert sh.m.core.leader == "n1"
    with caplog.at_level(logging.WARNING, logger="replication.node"):
        sh.step([PeerMsg("n2", encode(ReadIndexResp("n2", "n3", 1, i.to_bytes(4, "big"), MAX_INDEX)))
                 for i in range(500)])
    assert sh.m.core.read_states == []
    assert sum("ReadIndexResp" in w and "'n2'" in w for w in warnings(caplog)) == 1, warnings(caplog)
    # nor in a term it has not reached: the core took the term, then the answer
    sh.step([PeerMsg("n2", encode(ReadIndexResp("n2", "n3", 1 + i, b"c", MAX_INDEX))) for i in range(1, 50)])
    sh.step([PeerMsg("n1", encode(ReadIndexResp("n1", "n3", 1 + i, b"c", MAX_INDEX))) for i in range(1, 50)])
    assert sh.m.core.read_states == [] and sh.m.core.term == 1


def test_a_stale_read_answer_is_dropped_quietly(caplog):
    sh = Shell(machine("n3"))
    sh.step([PeerMsg("n1", encode(Heartbeat("n1", "n3", 2)))])
    with caplog.at_level(logging.WARNING, logger="replication.node"):
        sh.step([PeerMsg("n2", encode(ReadIndexResp("n2", "n3", 1, b"c", 1)))])
    assert sh.m.core.read_states == [] and not warnings(caplog)


# ------------------------------------------------------------------------ property
_ints = st.sampled_from([0, 1, 2, 3, 5, 1 << 20, MAX_TERM - 1, MAX_TERM, MAX_TERM + 1, TOP])
_src = st.sampled_from(["n1", "n2", "n3"])


@st.composite
def _entries(draw):
    start = draw(_ints) + 1
    return [_noop(start + k, draw(_ints)) for k in range(draw(st.integers(0, 3)))]


_meta = st.builds(SnapshotMeta, _ints, _ints, st.just(Membership(TRIO)))
_any = st.one_of(
    st.builds(PreVote, _src, st.just(""), _ints, _ints, _ints),
    st.builds(PreVoteResp, _src, st.just(""), _ints, st.booleans()),
    st.builds(Vote, _src, st.just(""), _ints, _ints, _ints, st.booleans()),
    st.builds(VoteResp, _src, st.just(""), _ints, st.booleans()),
    st.builds(Append, _src, st.just(""), _ints, _ints, _ints, _entries(), _ints),
    st.builds(AppendResp, _src, st.just(""), _ints, _ints, st.booleans(), _ints, _ints, _ints),
    st.builds(Heartbeat, _src, st.just(""), _ints, _ints, st.binary(max_size=2), _ints),
    st.builds(HeartbeatResp, _src, st.just(""), _ints, st.binary(max_size=2), _ints, _ints),
    st.builds(InstallSnapshot, _src, st.just(""), _ints, _meta, _ints, st.binary(max_size=4), st.booleans()),
    st.builds(SnapshotResp, _src, st.just(""), _ints, _ints, _ints),
    st.builds(TimeoutNow, _src, st.just(""), _ints),
    st.builds(ReadIndex, _src, st.just(""), _ints, st.binary(max_size=2)),
    st.builds(ReadIndexResp, _src, st.just(""), _ints, st.binary(max_size=2), _ints),
)


def _as_role(role: str) -> Shell:
    if role == "leader":
        return leader()
    sh = Shell(machine("n3" if role == "follower" else "n2"))
    if role == "follower":
        sh.step([PeerMsg("n1", encode(Heartbeat("n1", "n3", 1)))])
    return sh


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["leader", "follower", "fresh"]), st.lists(_any, min_size=1, max_size=6))
def test_no_message_in_the_decoders_range_stops_a_node_or_leaves_it_no_term_to_elect_in(role, msgs):
    """Whatever a member sends, the node serves on: it never raises, its term stays
    below the bound unless a message carried the bound itself, a leader's view of its
    followers stays within its log, and everything it sends decodes."""
    sh = _as_role(role)
    me = sh.m.id
    for m in msgs:
        m.dst = me
        try:
            payload = encode(m)
        except (OverflowError, ValueError):
            continue
        sh.step([PeerMsg(m.src, payload)])  # sh decodes what it sends: a DecodeError fails here
        core = sh.m.core
        assert core.term <= MAX_TERM
        assert core.log.committed <= core.log.last_index()
        if core.role == Role.LEADER:
            assert all(pr.match <= core.log.last_index() for pr in core.prs.values())
            assert all(pr.lease_seq <= core.clock for pr in core.prs.values())
    for _ in range(30):
        sh.now += TICK
        sh.step(tick=True)
    assert sh.m.core.term <= MAX_TERM


def test_a_read_answer_is_served_after_a_lost_pre_vote_cleared_the_leader(caplog):
    """A follower that stops hearing its leader for an election timeout pre-votes (same
    term, no leader), loses (the others still hear the leader) and is a follower with no
    leader in the term it asked its read in. The leader's answer to that read, the first
    thing the link brings back, is the answer it asked for: served, not said to be one it
    never asked."""
    sh = Shell(machine("n3"))
    sh.step([PeerMsg("n1", encode(Heartbeat("n1", "n3", 1)))])
    sh.step([Read("q", 7)])
    (ask,) = [m for m in sh.sent if type(m) is ReadIndex]
    assert ask.dst == "n1" and ask.term == 1
    sh.sent.clear()
    while not any(type(m) is PreVote for m in sh.sent):  # n1 silent: the election timeout fires
        sh.now += TICK
        sh.step(tick=True)
        assert sh.now < 5.0, "no pre-vote"
    assert sh.m.core.role == Role.PRE_CANDIDATE and sh.m.core.term == 1
    sh.step([PeerMsg(v, encode(PreVoteResp(v, "n3", 1, True))) for v in ("n1", "n2")])
    assert sh.m.core.role == Role.FOLLOWER and sh.m.core.term == 1 and sh.m.core.leader is None
    with caplog.at_level(logging.WARNING, logger="replication.node"):
        sh.step([PeerMsg("n1", encode(ReadIndexResp("n1", "n3", 1, ask.ctx, 0)))])
    assert [it for it in sh.applied if it[0] == "read"] == [("read", (0, 7, "q"))]
    assert not warnings(caplog), warnings(caplog)
    # with no leader known, still no answer to a read it is not waiting for, from anyone
    with caplog.at_level(logging.WARNING, logger="replication.node"):
        sh.step([PeerMsg("n2", encode(ReadIndexResp("n2", "n3", 1, c, MAX_INDEX)))
                 for c in [ask.ctx] + [i.to_bytes(4, "big") for i in range(200)]])
    assert sh.m.core.read_states == [] and sh.m.core.leader is None
    assert sum("ReadIndexResp" in w for w in warnings(caplog)) == 1, warnings(caplog)


# ------------------------------------------------- a log ahead of the term after a crash
class _Wire(Shell):
    """A Shell whose sent messages stay bytes, (destination, payload): what a peer's
    decoder refuses is the receiver's to drop, not an error of the sender's shell."""

    def _take(self, effects: list) -> None:
        self.sent.extend((e.dst, e.payload) for e in effects if type(e) is Send)
        super()._take([e for e in effects if type(e) is not Send])

    def write(self) -> None:
        rd = self.disk[0].rd
        super().write()
        if rd.persisted_messages:  # the base class keeps them as messages
            del self.sent[-len(rd.persisted_messages):]
            self.sent.extend((m.dst, encode(m)) for m in rd.persisted_messages)


def test_a_node_restarted_with_its_log_ahead_of_its_term_can_still_be_elected():
    """The disk lane syncs a Ready's entries, then stores its term: a crash between the two
    (or a kill once the entries are written) leaves a log whose last term is past the
    stored one. n3 took term-3 entries from the leader n2 while at term 1 and came back at
    term 1; n2 is gone and n1 never got those entries, so only n3 can be elected. Its
    pre-vote named last_term 3 in term 2, which n1's decoder refused as a term past the
    message's own: no answer, n3 never learned term 3, n1 could not win, and the two live
    voters of three never elected a leader again."""
    a = machine("n1", term=3)
    a.storage.append([_noop(1, 1), _noop(2, 2)])
    c = machine("n3", term=1)
    c.storage.append([_noop(1, 1), _noop(2, 2), _noop(3, 3), _noop(4, 3)])
    c = NodeMachine("n3", RaftNode("n3", c.storage, c.core.cfg, random.Random(3)), tick_interval=TICK, max_batch=512,
                    max_entry_bytes=1 << 20, slow_disk_handover=None, clock=JournalClock("n3", 500_000),
                    rng=random.Random(4), now=0.0)
    a = NodeMachine("n1", RaftNode("n1", a.storage, a.core.cfg, random.Random(5)), tick_interval=TICK, max_batch=512,
                    max_entry_bytes=1 << 20, slow_disk_handover=None, clock=JournalClock("n1", 500_000),
                    rng=random.Random(6), now=0.0)
    shells = {"n1": _Wire(a), "n3": _Wire(c)}
    now = 0.0
    while not any(sh.m.role == Role.LEADER for sh in shells.values()):
        now += TICK
        assert now < 10.0, (f"no leader in 10 s: n1 term {a.core.term}, n3 term {c.core.term} "
                            f"(its log's last term {c.core.log.last_term()})")
        for sh in shells.values():
            sh.now = now
            sh.step(tick=True)
        for _ in range(4):  # deliver what each sent (n2 is down: its messages are lost)
            for sh in shells.values():
                out, sh.sent = sh.sent, []
                for dst, payload in out:
                    if dst in shells:
                        shells[dst].step([PeerMsg(sh.m.id, payload)])
    assert c.role == Role.LEADER and c.core.log.last_term() == c.core.term

"""Direct tests of the Raft rules, in the spirit of etcd's raft_paper_test.

Each test stages one interleaving with the synchronous harness of conftest.py and
checks the rule; several also run the counterfactual (feature off) to show the test
can fail.
"""
from __future__ import annotations

import pytest

from replication.config import RaftConfig
from replication.errors import ConfigChangeRefused, NotLeader, TransferInProgress
from replication.membership import ConfigChange
from replication.messages import (
    Append, AppendResp, Heartbeat, InstallSnapshot, PreVote, PreVoteResp, TimeoutNow, Vote, VoteResp,
)
from replication.ready import ReadState, Role
from prevalence.entry import Entry

PLAIN = RaftConfig(pre_vote=False, check_quorum=False)


def test_figure8_leader_does_not_commit_entries_of_older_terms(make_cluster):
    # one entry per Append so that we can stop replication between two entries
    c = make_cluster(["s1", "s2", "s3", "s4", "s5"], config=RaftConfig(pre_vote=False, check_quorum=False, max_size_per_msg=1))
    c.elect("s1")  # term 1, no-op at index 1 committed everywhere
    # (a) s1 replicates index 2 (term 1) to s2 only
    c.isolate("s1", "s2")
    c.propose("s1", b"AA")
    c.settle()
    assert c.log_terms("s2")[-1] == (2, 1)
    # (b) s1 crashes; s5 wins term 2 with s3 and s4, appends index 2 (term 2) locally only
    c.restart("s1")
    c.drop = lambda m: "s1" in (m.src, m.dst) or (m.src == "s5" and type(m) is Append)
    c.elect("s5")
    assert c.nodes["s5"].term == 2 and c.log_terms("s5")[-1] == (2, 2)
    # (c) s5 crashes; s1 wins term 3 and replicates index 2 (term 1) to s3 but not its
    # own no-op (index 3): index 2 is now stored on a majority (s1, s2, s3)
    c.restart("s5")
    def drop(m):
        if "s5" in (m.src, m.dst):
            return True
        # the no-op (index 3) is stored nowhere else; s3 and s4, which lack index 2,
        # may still see (and reject) the first probe, then receive index 2 alone
        return type(m) is Append and any(e.index >= 3 for e in m.entries) and not (
            m.dst in ("s3", "s4") and c.nodes[m.dst].log.last_index() < 2
        )

    c.drop = drop
    assert c.campaign("s1") != Role.LEADER  # term 2: s3 and s4 already voted for s5
    c.elect("s1")
    assert c.nodes["s1"].term == 3
    c.tick("s1", 3)
    c.settle()
    assert c.log_terms("s3")[1] == (2, 1)
    s1 = c.nodes["s1"]
    assert sum(1 for pr in s1.prs.values() if pr.match >= 2) >= 3  # on a majority...
    assert s1.log.committed == 1  # ...but of an older term: no commit (Figure 8 rule)
    # (d) s1 crashes; s5 can still win (its last term 2 > 1) and overwrites index 2,
    # which is why s1 must not have committed it
    c.restart("s1")
    c.drop = lambda m: "s1" in (m.src, m.dst)
    assert c.campaign("s5") != Role.LEADER  # term 3: the others voted for s1
    c.elect("s5")  # term 4
    c.tick("s5", 3)
    c.settle()
    for i in ("s2", "s3", "s4", "s5"):
        assert c.log_terms(i)[1] == (2, 2)
        assert b"AA" not in c.commands(i)
    assert c.nodes["s5"].log.committed >= 3


def test_stale_leader_in_minority_cannot_commit(make_cluster):
    c = make_cluster(["a", "b", "c", "d", "e"], config=PLAIN)
    c.elect("a")
    c.isolate("a", "d")  # a keeps d (still at term 1), loses the majority
    c.elect("b")
    assert c.nodes["a"].role == Role.LEADER and c.nodes["a"].term == 1
    idx = c.propose("a", b"stale")
    c.settle()
    assert c.nodes["d"].log.last_index() >= idx  # d accepted it...
    assert c.nodes["a"].log.committed < idx  # ...but 2 of 5 is no quorum
    c.heal()
    c.propose("b", b"fresh")
    c.tick_all(5)
    assert c.nodes["a"].role == Role.FOLLOWER and c.nodes["a"].leader == "b"
    for i in c.nodes:
        assert b"stale" not in c.commands(i)
        assert b"fresh" in c.commands(i)


@pytest.mark.parametrize("pre_vote", [True, False])
def test_prevote_keeps_rejoining_node_from_disrupting(make_cluster, pre_vote):
    c = make_cluster(["a", "b", "c"], config=RaftConfig(pre_vote=pre_vote, check_quorum=False))
    c.elect("a")
    c.isolate("c")
    c.tick("c", 100)  # times out over and over while cut off
    c.heal()
    c.tick_all(30)
    if pre_vote:
        assert c.nodes["c"].term == 1, "pre-votes must not inflate the term"
        assert c.nodes["a"].role == Role.LEADER and c.nodes["a"].term == 1
    else:  # the counterfactual: without PreVote the rejoining node deposes the leader
        assert c.nodes["a"].term > 1


@pytest.mark.parametrize("check_quorum", [True, False])
def test_check_quorum_leader_steps_down_when_cut_off(make_cluster, check_quorum):
    c = make_cluster(["a", "b", "c"], config=RaftConfig(check_quorum=check_quorum))
    c.elect("a")
    c.isolate("a")
    c.tick("a", c.config.election_tick * 2 + 1)
    if check_quorum:
        assert c.nodes["a"].role == Role.FOLLOWER
        with pytest.raises(NotLeader):
            c.nodes["a"].propose(b"x")
    else:
        assert c.nodes["a"].role == Role.LEADER


def test_check_quorum_keeps_leader_that_hears_from_quorum(make_cluster):
    c = make_cluster(["a", "b", "c"])
    c.elect("a")
    c.isolate("c")
    c.tick_all(60)
    assert c.nodes["a"].role == Role.LEADER and c.nodes["a"].term == 1


def test_learner_never_counts_for_commit_or_votes(make_cluster):
    c = make_cluster(["a", "b", "c"], voters=["a", "b"], learners=["c"], config=PLAIN)
    c.elect("a")
    c.drop = lambda m: "b" in (m.src, m.dst)
    idx = c.propose("a", b"x")
    c.settle()
    assert c.nodes["c"].log.last_index() >= idx  # the learner replicates...
    assert c.nodes["a"].log.committed < idx  # ...but a + learner is not a quorum of {a, b}
    # a learner never campaigns, however long it waits
    c.heal()
    c.tick("c", 200)
    assert c.nodes["c"].role == Role.FOLLOWER
    # and its vote is not counted: b unreachable, a's candidacy with c's vote fails
    c.drop = lambda m: "b" in (m.src, m.dst)
    node = c.nodes["a"]
    node.election_elapsed = 10**6
    node.role = Role.FOLLOWER
    c.nodes["c"].election_elapsed = 10**6
    node.tick()
    c.settle()
    assert node.role == Role.CANDIDATE


def test_only_one_pending_config_change(make_cluster):
    c = make_cluster(["a", "b", "c"])
    a = c.nodes["a"]
    c.elect("a")
    c.add_node("d")
    c.add_node("e")
    c.drop = lambda m: True  # nothing commits
    a.propose_config_change(ConfigChange.add_learner("d"))
    with pytest.raises(ConfigChangeRefused, match="pending"):
        a.propose_config_change(ConfigChange.add_learner("e"))
    c.process_all()
    c.heal()
    c.tick_all(3)
    assert "d" in a.membership.learners
    a.propose_config_change(ConfigChange.add_learner("e"))
    c.tick_all(3)
    assert a.membership.learners == ("d", "e")
    assert c.nodes["e"].membership.learners == ("d", "e")


def test_new_leader_refuses_config_change_before_committing_in_its_term(make_cluster):
    c = make_cluster(["a", "b", "c"])
    c.drop = lambda m: type(m) is Append  # the no-op cannot commit
    c.elect("a")
    with pytest.raises(ConfigChangeRefused, match="its term"):
        c.nodes["a"].propose_config_change(ConfigChange.add_learner("d"))
    c.heal()
    c.tick_all(2)
    c.nodes["a"].propose_config_change(ConfigChange.add_learner("d"))


def test_config_takes_effect_when_appended_and_reverts_on_truncation(make_cluster):
    c = make_cluster(["a", "b", "c"], config=PLAIN)
    c.elect("a")
    c.drop = lambda m: type(m) is AppendResp  # replicate, but never commit
    c.nodes["a"].propose_config_change(ConfigChange.add_learner("z"))
    c.settle()
    b = c.nodes["b"]
    assert "z" in b.membership.learners  # in force on b as soon as appended...
    assert b.log.committed < b.log.last_index()  # ...although uncommitted
    # a newer leader whose log lacks the entry overwrites it: the config reverts
    b.step(Append("c", "b", 5, 1, 1, [Entry(2, 5, 0, b"")], 1))
    c.process("b")
    assert "z" not in b.membership.learners
    assert c.readies["b"][-1].truncate_from == 2
    assert c.log_terms("b") == [(1, 1), (2, 5)]


def test_follower_rejects_append_that_does_not_match(make_cluster):
    c = make_cluster(["a", "b", "c"])
    c.elect("a")
    c.propose("a", b"x")
    c.settle()
    b = c.nodes["b"]
    before = c.log_terms("b")
    b.step(Append("a", "b", 1, 7, 1, [Entry(8, 1, 1, b"y")], 2))  # prev index past b's log
    rd = b.ready()
    resp = [m for m in rd.persisted_messages if type(m) is AppendResp]
    assert resp and resp[0].reject and resp[0].index == 7 and resp[0].hint_index == 2
    assert not rd.entries
    b.advance(rd)
    b.step(Append("a", "b", 1, 2, 9, [Entry(3, 9, 1, b"y")], 2))  # prev term mismatch
    rd = b.ready()
    assert [m.reject for m in rd.persisted_messages] == [True]
    assert c.log_terms("b") == before


def test_fast_backtracking_skips_a_term_per_round_trip(make_cluster):
    # Raft paper Figure 7: leader for term 8 vs follower (f)
    c = make_cluster(["a", "b"], config=PLAIN)
    from replication.messages import HardState
    leader_terms = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
    follower_terms = [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]
    for node, terms in (("a", leader_terms), ("b", follower_terms)):
        c.storage[node].append([Entry(i + 1, t, 1, b"%d" % t) for i, t in enumerate(terms)])
        c.storage[node].set_hard_state(HardState(7, None, 3))
        c.restart(node)
    rejections = []
    c.drop = lambda m: bool(rejections.append(m)) if type(m) is AppendResp and m.reject else False
    c.elect("a")
    c.tick("a", 2)
    c.settle()
    assert c.nodes["a"].term == 8
    assert c.log_terms("b") == c.log_terms("a")
    assert len(rejections) == 1  # one hint skips all mismatching terms at once
    assert (rejections[0].hint_index, rejections[0].hint_term) == (10, 3)


def test_votes_are_durable_before_they_are_granted(make_cluster):
    c = make_cluster(["a", "b", "c"], config=PLAIN)
    a, b = c.nodes["a"], c.nodes["b"]
    a.election_elapsed = 10**6
    a.tick()
    rd = a.ready()
    # the candidate's own vote: persisted in this Ready, requests wait for it
    assert rd.hard_state.vote == "a" and rd.hard_state.term == 1
    assert {type(m) for m in rd.persisted_messages} == {Vote} and not rd.messages
    req = rd.persisted_messages[0]
    a.advance(rd)
    b.step(Vote("a", "b", 1, req.last_index, req.last_term))
    rd = b.ready()
    assert rd.hard_state.vote == "a"
    assert [type(m) for m in rd.persisted_messages] == [VoteResp] and not rd.messages
    # crash before the Ready is durable: the grant never left, and the restarted node
    # may vote for someone else in that term
    from replication.core import RaftNode
    import random
    b2 = RaftNode("b", c.storage["b"], RaftConfig(pre_vote=False, check_quorum=False), random.Random(1))
    assert b2.vote is None
    b2.step(Vote("c", "b", 1, 0, 0))
    rd = b2.ready()
    assert rd.hard_state.vote == "c" and not rd.persisted_messages[0].reject


def test_leader_counts_its_own_entries_only_once_durable(make_cluster):
    c = make_cluster(["a"])
    c.elect("a")
    a = c.nodes["a"]
    idx = a.propose(b"x")
    assert a.log.committed < idx
    rd = a.ready()
    assert rd.entries[-1].index == idx and not rd.committed_entries
    c.storage["a"].append(rd.entries)
    a.advance(rd)
    assert a.log.committed == idx


def test_leadership_transfer_catches_up_target_then_hands_over(make_cluster):
    c = make_cluster(["a", "b", "c"])
    a = c.nodes["a"]
    c.elect("a")
    c.isolate("b")
    for i in range(5):
        c.propose("a", b"%d" % i)
    c.settle()
    c.heal()
    timeout_now = []
    c.drop = lambda m: bool(timeout_now.append(m)) if type(m) is TimeoutNow else False
    a.transfer_leadership("b")
    with pytest.raises(TransferInProgress):
        a.propose(b"during")
    for _ in range(3):  # heartbeats reveal that b lost its appends; a resends
        c.tick("a")
        c.settle()
    assert timeout_now and timeout_now[0].dst == "b"
    assert c.nodes["b"].role == Role.LEADER and c.nodes["b"].term == 2
    assert a.role == Role.FOLLOWER and a.leader == "b"
    assert c.nodes["b"].log.last_index() >= 7


def test_leadership_transfer_aborts_after_election_timeout(make_cluster):
    c = make_cluster(["a", "b", "c"])
    a = c.nodes["a"]
    c.elect("a")
    c.drop = lambda m: "b" in (m.src, m.dst) and type(m) is TimeoutNow
    c.isolate("b")
    a.transfer_leadership("b")
    with pytest.raises(TransferInProgress):
        a.propose(b"x")
    c.tick("a", c.config.election_tick)
    assert a.lead_transferee is None and a.role == Role.LEADER
    a.propose(b"x")


def test_on_a_slow_disk_a_transfer_waits_the_slack_before_it_is_aborted(make_cluster):
    """The target's campaign waits for its own disk and its voters' (two fsyncs): with
    slow disks, a transfer aborted after the bare election timeout let the old leader
    take commands again, lengthen its log and refuse its target's vote: no leader at all
    for seconds (measured: 8 s with 0.5 s fsyncs)."""
    c = make_cluster(["a", "b", "c"])
    a = c.nodes["a"]
    c.elect("a")
    c.drop = lambda m: "b" in (m.src, m.dst) and type(m) is TimeoutNow
    c.isolate("b")
    a.election_slack = 20
    a.transfer_leadership("b")
    for _ in range(c.config.election_tick):  # c answers the heartbeats: a keeps its quorum
        c.tick("a")
        c.settle()
    assert a.lead_transferee == "b"
    for _ in range(20):
        c.tick("a")
        c.settle()
    assert a.lead_transferee is None and a.role == Role.LEADER


def test_a_node_on_a_slow_disk_campaigns_only_after_its_slack(make_cluster):
    c = make_cluster(["a", "b", "c"])
    b = c.nodes["b"]
    b.election_slack = 50
    c.isolate("b")
    c.tick("b", 2 * c.config.election_tick)
    assert b.role == Role.FOLLOWER and b.term == 0
    c.tick("b", 50)
    assert b.role != Role.FOLLOWER or b.term > 0


def test_read_index_confirms_leadership_with_a_heartbeat_round(make_cluster):
    c = make_cluster(["a", "b", "c"])
    a = c.nodes["a"]
    c.elect("a")
    c.propose("a", b"x")
    c.settle()
    a.read_index(b"r1")
    c.process("a")
    assert c.read_states["a"] == []  # not before a quorum answered
    c.settle()
    assert c.read_states["a"] == [ReadState(b"r1", a.log.committed)]
    # a follower's read goes through the leader and is served once applied
    c.nodes["b"].read_index(b"r2")
    c.settle()
    assert c.read_states["b"] == [ReadState(b"r2", a.log.committed)]
    # a leader cut off from the quorum never confirms
    c.isolate("a")
    a.read_index(b"r3")
    c.settle()
    c.tick("a", 3)
    c.settle()
    assert [r.ctx for r in c.read_states["a"]] == [b"r1"]


def test_read_index_waits_for_new_leader_to_commit_in_its_term(make_cluster):
    c = make_cluster(["a", "b", "c"])
    c.drop = lambda m: type(m) is Append
    c.elect("a")
    a = c.nodes["a"]
    a.read_index(b"r")
    c.tick_all(2)
    assert c.read_states["a"] == []
    c.heal()
    c.tick_all(2)
    assert c.read_states["a"] and c.read_states["a"][0].index >= a.term_start


def test_lease_read_needs_a_recent_quorum(make_cluster):
    c = make_cluster(["a", "b", "c"], config=RaftConfig(lease_read=True))
    a = c.nodes["a"]
    c.elect("a")  # (the followers' restart quiet period is expired by the harness)
    c.tick_all(2)
    a.read_index(b"lease")
    c.process("a")
    assert [r.ctx for r in c.read_states["a"]] == [b"lease"]  # no round trip needed
    c.isolate("a")
    c.tick("a", c.config.election_tick - 1)
    a.read_index(b"late")
    c.process("a")
    assert [r.ctx for r in c.read_states["a"]] == [b"lease"]  # lease expired: falls back


def test_lease_read_is_not_stale_after_a_follower_is_moved_to_a_higher_term(make_cluster):
    """Issue 13, item 3, staged: three nodes ticking in lockstep, no clock skew.

    c, cut off from leader a, wins b's pre-vote and becomes candidate of term 2; its
    Vote to b is lost. b times out too and pre-votes; c's rejection (term 2) is held
    back. a reaches b again, b renews a's lease and is then cut from a. The held
    rejection moves b to term 2. c campaigns again: b must refuse, as it promised a
    by answering its heartbeat, or c commits x=2 while a still serves x=1 from its
    lease."""
    c = make_cluster(["a", "b", "c"], config=RaftConfig(lease_read=True))
    a, b, cn = c.nodes["a"], c.nodes["b"], c.nodes["c"]
    c.fix_timeouts(a=0, b=9, c=9)
    c.tick_all(10)
    assert a.role == Role.LEADER and a.term == 1
    x1 = c.propose("a", b"x=1")
    c.tick_all(3)
    c.fix_timeouts(b=5, c=0)
    while a.election_elapsed != 0:  # start right after a's CheckQuorum: a stays leader
        c.tick_all(1)
    cuts = {("a", "c"), ("c", "a"), ("a", "b")}
    lost, held = [], []

    def drop(m) -> bool:
        if (m.src, m.dst) in cuts:
            return True
        if (m.src, m.dst) == ("c", "b") and type(m) is Vote and not lost:
            lost.append(m)
            return True
        if (m.src, m.dst) == ("c", "b") and type(m) is PreVoteResp and not held:
            held.append(m)
            return True
        return False

    c.drop = drop
    served: dict[bytes, tuple[int, int]] = {}  # read ctx -> (tick served, index)
    x2 = x2_committed_at = None
    for t in range(1, 41):
        c.tick_all(1)
        if t == 10:
            assert cn.role == Role.CANDIDATE and cn.term == 2 and lost  # b granted the pre-vote
        if t == 15:
            assert b.role == Role.PRE_CANDIDATE and held and held[0].term == 2
            cuts.discard(("a", "b"))
        if t == 16:
            assert b.role == Role.FOLLOWER and b.leader == "a" and b.term == 1  # a's lease renewed
            cuts.add(("b", "a"))
            c.inflight.extend(held)  # delivered on the next tick
        if cn.role == Role.LEADER and x2 is None:
            x2 = c.propose("c", b"x=2")
            c.settle()
        if x2 is not None and x2_committed_at is None and cn.log.committed >= x2:
            x2_committed_at = t
        if a.role == Role.LEADER:
            a.read_index(b"r%d" % t)
            c.process("a")
        for rs in c.read_states["a"]:
            served.setdefault(rs.ctx, (t, rs.index))
    assert any(t >= 16 and index == x1 for t, index in served.values()), "the renewed lease was used"
    assert x2_committed_at is not None, "c wins once b's promise has run out"
    stale = sorted((t, index) for t, index in served.values() if t >= x2_committed_at and index < x2)
    assert not stale, f"a served index {stale[0][1]} (x=1) at tick {stale[0][0]}; x=2 committed at tick {x2_committed_at}"


@pytest.mark.parametrize("knock", ["PreVoteResp", "AppendResp", "VoteResp"])
def test_a_higher_term_message_does_not_release_a_follower_from_its_lease_promise(make_cluster, knock):
    """A follower that heard from a leader refuses votes and pre-votes for an election
    timeout, even after a message of a higher term (not a vote request) made it
    forget who the leader is. A transfer's Vote still goes through."""
    c = make_cluster(["a", "b", "c"])
    c.elect("a")
    c.tick_all(1)
    b = c.nodes["b"]
    c.isolate("b")
    heard = b.clock
    li, lt = b.log.last_index(), b.log.last_term()
    msg = {"PreVoteResp": PreVoteResp("c", "b", 2, True), "AppendResp": AppendResp("c", "b", 2),
           "VoteResp": VoteResp("c", "b", 2, True)}[knock]
    b.step(msg)
    assert b.term == 2 and b.leader is None and b.vote is None

    def answers(m) -> list:
        c.inflight.clear()
        b.step(m)
        c.process("b")
        return [(type(r).__name__, r.term, r.reject) for r in c.inflight if r.src == "b"]

    for _ in range(c.config.election_tick - 1):
        assert answers(PreVote("c", "b", 3, li, lt)) == []  # ignored: a leader is alive
        assert answers(Vote("c", "b", 3, li, lt)) == []
        assert answers(Vote("c", "b", 2, li, lt)) == [("VoteResp", 2, True)]
        assert b.term == 2 and b.vote is None
        c.tick("b")
    assert b.clock == heard + c.config.election_tick - 1
    assert answers(Vote("c", "b", 3, li, lt, transfer=True)) == [("VoteResp", 3, False)]
    assert b.vote == "c"
    c.tick("b")  # one election timeout after hearing from a: free to vote again
    assert answers(PreVote("a", "b", 4, li, lt)) == [("PreVoteResp", 4, False)]
    assert answers(Vote("a", "b", 4, li, lt)) == [("VoteResp", 4, False)]


@pytest.mark.parametrize("lease_read", [True, False])
def test_a_restarted_node_stays_out_of_elections_for_a_timeout_only_with_lease_reads(make_cluster, lease_read):
    """It may have answered a heartbeat just before the crash: with lease reads it keeps
    that unknown promise, without them it votes at once."""
    c = make_cluster(["a", "b", "c"], config=RaftConfig(lease_read=lease_read))
    b = c.nodes["b"]
    grants = []
    for _ in range(c.config.election_tick + 1):
        c.inflight.clear()
        b.step(Vote("c", "b", b.term + 1, 0, 0))
        c.process("b")
        grants.append(any(type(m) is VoteResp and not m.reject for m in c.inflight))
        c.tick("b")
    assert grants == ([False] * c.config.election_tick + [True] if lease_read else [True] * (c.config.election_tick + 1))


def test_lease_read_requires_check_quorum():
    from replication.errors import RaftError
    with pytest.raises(RaftError, match="check_quorum"):
        RaftConfig(lease_read=True, check_quorum=False).validate()


def test_snapshot_catch_up_of_lagging_follower_in_chunks(make_cluster):
    c = make_cluster(["a", "b", "c"], config=RaftConfig(snapshot_chunk_size=7))
    a = c.nodes["a"]
    c.elect("a")
    c.isolate("c")
    for i in range(20):
        c.propose("a", b"e%d" % i)
    c.settle()
    snap_index = c.snapshot("a", data=b"0123456789" * 3)
    assert c.storage["a"].first_index() == snap_index + 1
    c.propose("a", b"after")
    c.settle()
    c.heal()
    chunks = []
    c.drop = lambda m: bool(chunks.append(m)) if type(m) is InstallSnapshot else False
    c.tick_all(10)
    assert len(chunks) >= 5 and chunks[-1].done
    installed = [rd.snapshot for rd in c.readies["c"] if rd.snapshot is not None]
    assert len(installed) == 1 and installed[0].data == b"0123456789" * 3
    assert installed[0].meta.index == snap_index
    assert c.storage["c"].last_index() == a.log.last_index()
    assert c.commands("c")[-1] == b"after"


def test_a_moving_snapshot_transfer_is_not_duplicated_by_heartbeats_but_a_lost_chunk_is_resent(make_cluster):
    c = make_cluster(["a", "b", "c"], config=RaftConfig(snapshot_chunk_size=7, heartbeat_tick=1))
    c.elect("a")
    c.isolate("c")
    for i in range(20):
        c.propose("a", b"e%d" % i)
    c.settle()
    c.snapshot("a", data=b"0123456789" * 3)  # 30 bytes: chunks at 0, 7, 14, 21, 28
    c.heal()
    sent = []
    lost = set()

    def watch(m):
        if type(m) is InstallSnapshot:
            sent.append(m.offset)
            if m.offset == 14 and 14 not in lost:  # the first copy of one chunk is lost
                lost.add(14)
                return True
        return False

    c.drop = watch
    for _ in range(12):  # one message round per heartbeat: acks and heartbeats interleave
        c.tick("a")
        c.deliver()
        c.deliver()
    assert sent.count(14) == 2  # lost once, resent once the transfer stood still
    assert all(sent.count(off) == 1 for off in (0, 7, 21, 28)), repr(sent)
    installed = [rd.snapshot for rd in c.readies["c"] if rd.snapshot is not None]
    assert len(installed) == 1 and installed[0].data == b"0123456789" * 3


def test_removed_leader_steps_down(make_cluster):
    c = make_cluster(["a", "b", "c"])
    a = c.nodes["a"]
    c.elect("a")
    a.propose_config_change(ConfigChange.remove_voter("a"))
    assert a.role == Role.LEADER  # still leads until the removal commits
    c.settle()
    c.tick_all(5)
    assert a.role == Role.FOLLOWER
    assert "a" not in c.nodes["b"].membership.voters
    new = c.leader()
    assert new in ("b", "c")
    c.propose(new, b"after-removal")
    c.tick_all(3)
    assert b"after-removal" in c.commands("b") and b"after-removal" in c.commands("c")
    c.tick("a", 200)  # a removed node never campaigns
    assert a.role == Role.FOLLOWER


def test_add_learner_then_promote(make_cluster):
    c = make_cluster(["a", "b", "c"])
    a = c.nodes["a"]
    c.elect("a")
    for i in range(5):
        c.propose("a", b"%d" % i)
    c.settle()
    c.add_node("d")
    a.propose_config_change(ConfigChange.add_learner("d"))
    c.tick_all(3)
    assert c.commands("d") == c.commands("a")
    a.propose_config_change(ConfigChange.promote_learner("d"))
    c.tick_all(3)
    assert c.nodes["d"].membership.voters == ("a", "b", "c", "d")
    assert c.nodes["d"].promotable()


def test_the_leader_says_why_promoting_a_learner_now_would_cost_availability(make_cluster):
    """A policy the node runtime applies to operators' changes; the core accepts any."""
    c = make_cluster(["a", "b", "c"])
    a = c.nodes["a"]
    c.elect("a")
    for i in range(10):
        c.propose("a", b"%d" % i)
    c.settle()
    c.add_node("d")
    c.isolate("d")  # added, never reached: it holds nothing
    a.propose_config_change(ConfigChange.add_learner("d"))
    c.tick_all(3)
    promote = ConfigChange.promote_learner("d")
    assert "'d' has not caught up: it holds 0 of the leader's" in a.change_problem(promote)
    c.heal()
    c.tick_all(3)
    assert c.commands("d") == c.commands("a") and a.change_problem(promote) is None
    for _ in range(4):  # a healthy learner is "heard lately" through every quorum check
        c.tick_all(a.cfg.election_tick // 2)
        assert a.change_problem(promote) is None
    c.isolate("d")
    c.tick_all(2 * a.cfg.election_tick)  # two quorum checks without an answer
    assert "'d' has not answered the leader within an election timeout" in a.change_problem(promote)
    assert c.nodes["b"].change_problem(promote) is None  # not the leader's to say
    a.propose_config_change(promote)  # the core itself still takes it


def test_the_leader_refuses_by_policy_a_change_after_which_the_voters_that_answer_are_no_quorum(make_cluster):
    c = make_cluster(["a", "b", "c"])
    a = c.nodes["a"]
    c.elect("a")
    c.propose("a", b"x")
    c.settle()
    assert a.change_problem(ConfigChange.remove_voter("b")) is None  # all up: 2 of 2 answer
    c.isolate("c")
    c.tick_all(2 * a.cfg.election_tick)
    problem = a.change_problem(ConfigChange.remove_voter("b"))
    assert problem == ("the cluster would stop: its 2 voters after the change (a, c) need 2 for a quorum, and 1 "
                       "answer the leader (a); bring the others back first")
    assert a.change_problem(ConfigChange.remove_voter("c")) is None  # removing the dead one is the repair
    added = a.change_problem(ConfigChange.add_voter("d"))
    assert "its 4 voters after the change (a, b, c, d) need 3" in added and "add it as a learner" in added
    assert "need 2" in a.change_problem(ConfigChange.remove_voter("a"))  # the leader itself: b and c remain


def test_propose_on_follower_names_the_leader(make_cluster):
    c = make_cluster(["a", "b", "c"])
    c.elect("a")
    with pytest.raises(NotLeader) as exc:
        c.nodes["b"].propose(b"x")
    assert exc.value.leader == "a" and "'a'" in str(exc.value)


def test_stale_term_append_makes_old_leader_step_down(make_cluster):
    c = make_cluster(["a", "b", "c"])
    c.elect("a")
    b = c.nodes["b"]
    b.step(Heartbeat("x", "b", 0, 0))  # lower term: answered with our term
    rd = b.ready()
    assert [type(m) for m in rd.persisted_messages] == [AppendResp]
    b.advance(rd)


def test_election_timeouts_are_randomized(make_cluster):
    c = make_cluster(["a", "b", "c", "d", "e"])
    timeouts = {n.randomized_timeout for n in c.nodes.values()}
    assert len(timeouts) > 1
    assert all(10 <= t < 20 for t in timeouts)


def test_snapshot_overtaken_by_newer_compaction_is_followed_by_a_fresh_one(make_cluster):
    c = make_cluster(["a", "b", "c"])
    a = c.nodes["a"]
    c.elect("a")
    c.isolate("c")
    for i in range(20):
        c.propose("a", b"e%d" % i)
    c.settle()
    first_snap = c.snapshot("a")
    c.heal()
    held = []
    c.drop = lambda m: bool(held.append(m)) or True if type(m) is AppendResp and m.src == "c" else False
    c.tick_all(3)
    assert any(rd.snapshot is not None and rd.snapshot.meta.index == first_snap for rd in c.readies["c"])
    for i in range(20):  # meanwhile the leader moves on and compacts past that snapshot
        c.propose("a", b"f%d" % i)
    c.settle()
    second_snap = c.snapshot("a")
    c.heal()
    for m in held:
        a.step(m)
    c.process("a")
    c.tick_all(5)
    assert c.nodes["c"].log.last_index() == a.log.last_index()
    installed = [rd.snapshot.meta.index for rd in c.readies["c"] if rd.snapshot is not None]
    assert installed == [first_snap, second_snap]
    c.propose("a", b"after")
    c.tick_all(2)
    assert c.commands("c") == [b"after"]


def test_status_reports_what_the_cli_needs(make_cluster):
    c = make_cluster(["a", "b", "c"])
    c.elect("a")
    st = c.nodes["a"].status()
    d = st.to_dict()
    assert d["id"] == "a" and d["role"] == "leader" and d["term"] == 1 and d["leader"] == "a"
    assert d["commit"] == 1 and d["applied"] == 1
    assert set(d["progress"]) == {"a", "b", "c"} and d["progress"]["b"]["state"] == "replicate"
    assert c.nodes["b"].status().role == "follower"


@pytest.mark.parametrize("vote_sent_before_durable", [False, True])
def test_a_vote_lost_in_a_crash_elects_two_leaders_unless_sent_only_once_durable(
        make_cluster, monkeypatch, vote_sent_before_durable):
    """The staged interleaving the simulator reaches only rarely: c grants a, crashes
    before its vote is on disk, restarts and grants b in the same term. Only a host that
    sent the grant before the write (the mutated core) lets both become leader."""
    from replication import core

    if vote_sent_before_durable:
        monkeypatch.setattr(core, "_AFTER_PERSIST", (AppendResp,))
    c = make_cluster(["a", "b", "c"], config=RaftConfig(election_tick=10, heartbeat_tick=1, pre_vote=False))
    for i in ("a", "b"):  # both time out into term 1 and vote for themselves
        c.nodes[i].election_elapsed = c.nodes[i].randomized_timeout - 1
        c.tick(i)
    a_vote = next(m for m in c.inflight if isinstance(m, Vote) and m.src == "a" and m.dst == "c")
    b_vote = next(m for m in c.inflight if isinstance(m, Vote) and m.src == "b" and m.dst == "c")
    c.inflight.clear()
    voter = c.nodes["c"]
    voter.step(a_vote)
    rd = voter.ready()
    assert rd.hard_state is not None and rd.hard_state.vote == "a"
    sent = list(rd.messages)  # what may go before the write: then c loses power
    c.restart("c")
    c.drop = lambda m: {m.src, m.dst} == {"a", "b"}  # a's news does not reach b first
    for m in sent:
        c.nodes[m.dst].step(m)
    c.process_all()
    c.nodes["c"].step(b_vote)  # c's disk says it never voted in term 1
    c.process("c")
    c.settle()
    leaders = sorted(i for i, n in c.nodes.items() if n.role == Role.LEADER and n.term == 1)
    assert leaders == (["a", "b"] if vote_sent_before_durable else ["b"])


@pytest.mark.parametrize("knows", ["b", "c"])
def test_leader_lost_right_after_a_promotion_commits_survivors_still_elect(make_cluster, knows):
    """The promotion of learner c commits on a with one ack; a dies before anyone learns
    of the commit. Whichever of b and c holds the entry, the two must elect a leader:
    in a's configuration they are a majority (the case `prevalence cluster promote`
    followed at once by losing the old leader)."""
    c = make_cluster(["a", "b", "c"], voters=["a", "b"], learners=["c"])
    a = c.nodes["a"]
    c.elect("a")
    c.propose("a", b"x")
    c.tick_all(3)
    idx = a.propose_config_change(ConfigChange.promote_learner("c"))
    c.process("a")
    other = "c" if knows == "b" else "b"
    c.drop = lambda m: m.dst == other or m.src == other  # the promotion reaches `knows` only
    c.settle()
    assert a.log.committed >= idx
    assert c.nodes[other].log.last_index() < idx
    c.isolate("a")  # a is gone
    for _ in range(40):
        c.tick_all(1)
        if c.nodes["b"].role == Role.LEADER or c.nodes["c"].role == Role.LEADER:
            break
    assert {c.nodes["b"].role, c.nodes["c"].role} == {Role.LEADER, Role.FOLLOWER}, (
        c.nodes["b"].status(), c.nodes["c"].status())


@pytest.mark.parametrize("forged", ["snapshot", "heartbeat", "append"])
def test_a_follower_takes_leader_messages_only_from_the_leader_of_its_term(make_cluster, forged):
    """One leader per term: a member that is not it (confused, or forging) cannot install
    a snapshot, move the commit index or take over the follower in the same term."""
    from replication.messages import SnapshotMeta

    c = make_cluster(["a", "b", "c"])
    c.elect("a")
    c.propose("a", b"x")
    c.settle()
    b = c.nodes["b"]
    term, leader, commit = b.term, b.leader, b.log.committed
    assert leader == "a"
    meta = SnapshotMeta(commit + 100, term, b.membership)
    msg = {"snapshot": InstallSnapshot("c", "b", term, meta, 0, b"forged state", True),
           "heartbeat": Heartbeat("c", "b", term, commit + 5),
           "append": Append("c", "b", term, b.log.last_index(), b.log.term(b.log.last_index()),
                            [Entry(b.log.last_index() + 1, term, 1, b"forged")], commit + 1)}[forged]
    b.step(msg)
    c.process("b")
    assert (b.term, b.leader, b.log.committed) == (term, "a", commit)
    assert not any(rd.snapshot is not None for rd in c.readies["b"])
    assert b"forged" not in c.commands("b") and all(m.dst != "c" or m.src != "b" for m in c.inflight)
    c.propose("a", b"y")  # the real leader carries on
    c.tick_all(3)
    assert c.commands("b")[-1] == b"y"


def test_a_new_leader_does_not_count_a_voter_it_never_heard_as_answering(make_cluster):
    """Every Progress starts recent_active (so that CheckQuorum does not depose a new
    leader): a voter down since before the election counted as answering for the first
    election timeout, and removing a live voter then stopped the cluster."""
    c = make_cluster(["a", "b", "c"])
    a = c.nodes["a"]
    c.isolate("c")
    c.elect("a")
    c.settle()
    assert "need 2 for a quorum, and 1 answer the leader (a)" in a.change_problem(ConfigChange.remove_voter("b"))
    assert a.change_problem(ConfigChange.remove_voter("c")) is None


def test_without_check_quorum_a_voter_that_went_silent_stops_counting(make_cluster):
    """With check_quorum off nothing ever cleared recent_active: a voter heard once
    counted as answering for good, and the policy allowed any change."""
    c = make_cluster(["a", "b", "c"], config=RaftConfig(election_tick=10, heartbeat_tick=1, check_quorum=False))
    a = c.nodes["a"]
    c.elect("a")
    c.propose("a", b"x")
    c.settle()
    assert a.change_problem(ConfigChange.remove_voter("b")) is None
    c.isolate("c")
    c.tick_all(2 * a.cfg.election_tick + 1)
    assert a.role == Role.LEADER
    assert "need 2 for a quorum, and 1 answer the leader (a)" in a.change_problem(ConfigChange.remove_voter("b"))


def test_a_follower_restarted_on_an_old_copy_of_its_log_is_caught_up_while_the_cluster_is_idle(make_cluster):
    """A follower's data was put back from an old copy (a VM snapshot, a restored backup of
    its directory): its log ends before entries it acknowledged. The leader's progress
    still counts them as there, and as match never goes down, nothing was sent while no
    new command came: the node stayed behind for good, missing entries a majority was
    counted on. Its heartbeat now says what it lacks and the leader sends it again."""
    c = make_cluster(["a", "b", "c"])
    c.elect("a")
    for k in range(5):
        c.nodes["a"].propose(b"early%d" % k)
    c.settle()
    old = c.storage["b"].clone()  # the copy taken here
    for k in range(20):
        c.nodes["a"].propose(b"later%d" % k)
    c.settle()
    last = c.nodes["a"].log.last_index()
    assert c.nodes["b"].log.last_index() == last
    c.storage["b"] = old
    c.restart("b")
    assert c.nodes["b"].log.last_index() < last
    c.tick_all(5)  # idle: heartbeats only
    assert c.nodes["b"].log.last_index() == last
    assert c.nodes["b"].log.committed == c.nodes["a"].log.committed
    assert c.nodes["a"].prs["b"].match == last

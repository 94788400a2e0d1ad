"""The client's retry and session rules (replication.client_policy), shared by
rpc.client and the runtime simulator."""
from __future__ import annotations

import random

from hypothesis import given, strategies as st

from replication.client_policy import (
    BACKOFF_MAX, ELECTION_PAUSE, SUSPECT_FOR, TRIED_KEPT, Attempts, Route, Session, SessionPool, leader_among,
    well_formed,
)


def calls(route: Route, deadline: float = 10.0, any_node: bool = False, seed: int = 1) -> Attempts:
    return Attempts(route, "execute", deadline, random.Random(seed), any_node=any_node)


def test_the_leader_named_goes_first_and_nodes_that_failed_us_last():
    r = Route(["a", "b", "c"])
    assert r.order(0.0, None) == ["a", "b", "c"]
    r.failed("a", now=0.0)
    assert r.order(0.5, "c") == ["c", "b", "a"]
    assert r.order(SUSPECT_FOR + 0.1, None) == ["a", "b", "c"]  # forgiven after a while
    r.failed("c", now=2.0)
    r.answered("c")  # it answers again
    assert r.order(2.1, "c") == ["c", "a", "b"]


def test_a_redirect_to_a_leader_that_just_failed_us_waits_for_the_election_instead():
    r = Route(["a", "b", "c"])
    a = calls(r)
    step = a.answered("b", ["not_leader", "n3", "c"], now=0.0)
    assert not step.done and step.drop and step.pause == 0 and r.hint == "c"
    r.failed("c", now=0.1)
    step = a.answered("b", ["not_leader", "n3", "c"], now=0.2)
    assert r.hint is None and ELECTION_PAUSE[0] <= step.pause <= ELECTION_PAUSE[1]
    step = a.answered("b", ["not_leader", None, None], now=0.3)
    assert r.hint is None and step.pause > 0
    assert "not the leader" in a.tried[-1]


def test_unavailable_retries_the_same_request_on_the_same_connection_after_a_growing_pause():
    a = calls(Route(["a"]))
    pauses = []
    for _ in range(10):
        step = a.answered("a", ["unavailable", "timed out waiting for the cluster" * 1000], now=0.0)
        assert not step.done and not step.drop
        pauses.append(step.pause)
    assert 0 < pauses[0] <= 0.02 and max(pauses) <= BACKOFF_MAX and pauses[-1] >= BACKOFF_MAX / 2
    # a node that refuses at once is remembered in a bounded way
    assert len(a.tried) == TRIED_KEPT and all(len(t) < 260 for t in a.tried)


def test_a_node_that_names_itself_as_leader_and_refuses_is_no_usable_leader():
    r = Route(["a", "b"])
    step = calls(r).answered("a", ["not_leader", "n1", "a"], now=0.0)
    assert step.drop and step.pause > 0 and r.hint is None


def test_the_main_line_consumes_the_hint_and_other_lines_start_at_the_main_lines_node():
    r = Route(["a", "b", "c"])
    r.hint = "c"
    assert r.connect_order(0.0, main=False, fallback="b") == ["c", "a", "b"] and r.hint == "c"
    assert r.connect_order(0.0, main=True) == ["c", "a", "b"] and r.hint is None
    assert r.connect_order(0.0, main=False, fallback="b") == ["b", "a", "c"]


def test_every_other_reply_is_the_answer():
    a = calls(Route(["a"]))
    for reply in (["ok", 3], ["expired", "x"], ["failed", "T", "m"], ["error", "bad"]):
        assert a.answered("a", reply, now=0.0) == (True, reply, 0.0, False)
    # a node that is not the leader answers a call meant for any node
    any_node = calls(Route(["a"]), any_node=True)
    assert any_node.answered("a", ["not_leader", None, None], now=0.0).done


def test_a_malformed_reply_counts_as_no_answer_and_a_bad_hint_as_none():
    r = Route(["a", "b"])
    a = calls(r)
    deep: list = []
    for _ in range(3000):
        deep = [deep]
    for bad in (None, 7, [], [3], {"ok": 1}, "ok", ["ok"], ["failed", "T"], ["expired", 5], ["what", 1],
                ["unavailable", deep], ["not_leader", deep, deep, deep], deep, ["error", "x" * 10**6, 1]):
        step = a.answered("a", bad, now=0.0)
        assert not step.done and step.drop and r.is_suspect("a", 0.5)
    assert all(len(t) < 260 for t in a.tried)
    step = a.answered("b", ["not_leader", "n1", 7100], now=0.0)
    assert not step.done and r.hint is None and step.pause > 0
    step = a.answered("b", ["not_leader", deep, "c"], now=0.0)
    assert r.hint == "c"


def test_a_lost_call_drops_the_connection_and_suspects_the_node():
    r = Route(["a", "b"])
    a = calls(r)
    step = a.lost("a", "TimeoutError: no answer", now=1.0)
    assert step.drop and r.is_suspect("a", 1.5) and r.order(1.5, None) == ["b", "a"]


def test_backoff_when_nobody_answers_grows_to_a_quarter_second_and_never_passes_the_deadline():
    a = calls(Route(["a"]), deadline=100.0, seed=7)
    pauses = [a.unreachable("refused", now=0.0) for _ in range(12)]
    assert pauses[0] <= 0.02 and max(pauses) <= BACKOFF_MAX and pauses[-1] >= BACKOFF_MAX / 2
    late = calls(Route(["a"]), deadline=1.0)
    for _ in range(10):
        late.unreachable("refused", now=0.0)
    assert late.unreachable("refused", now=0.99) <= 0.01 + 1e-9
    assert late.over(1.0) and "no leader answered within the deadline" in late.why_over(False)
    assert late.why_over(True) == "execute: closed"


def test_the_leader_is_the_one_claiming_the_highest_term():
    answers = [("a", None), ("b", {"role": "leader", "term": 3}), ("c", {"role": "leader", "term": 5}),
               ("d", {"role": "follower", "term": 9})]
    assert leader_among(answers) == "c"
    assert leader_among([("a", None), ("d", {"role": "follower", "term": 9})]) is None
    # whatever a node answers to status, the pick does not raise
    odd = [("a", ["x"]), ("b", {"role": "leader"}), ("c", {"role": "leader", "term": "9"}), ("d", 5),
           ("e", {"role": "leader", "term": 2})]
    assert leader_among(odd) == "e"


def test_a_leader_is_picked_by_epoch_before_term_and_never_one_left_behind():
    """After `cluster recover`, the old epoch's nodes elect among themselves in terms that
    pass the recovered master's: the client's leader watch moved to their master."""
    new = ("a", {"role": "leader", "term": 3, "epoch": 1})
    old = ("b", {"role": "leader", "term": 9, "epoch": 0})
    assert leader_among([old, new]) == "a"
    knows = ("b", {"role": "leader", "term": 9, "epoch": 1, "superseded_by": 2})  # told by a newer peer
    assert leader_among([knows]) is None
    assert leader_among([("c", {"role": "leader", "term": 4, "epoch": "1"})]) == "c"  # odd epoch: as none


def test_well_formed_replies():
    good = [["ok", 1], ["ok", 5, [1]], ["expired", "m"], ["error", "m"], ["unavailable", "m"],
            ["failed", "T", "m"], ["rejected", "T", "m"], ["not_leader", None, None], ["compacted", 3]]
    bad = [[], ["ok"], ["failed", "T"], ["failed", "T", 3], ["expired", 1], ["compacted", "3"], ["nope", 1],
           ("ok", 1), {"ok": 1}, None, [1, 2]]
    assert all(well_formed(r) for r in good) and not any(well_formed(r) for r in bad)


def test_a_leader_found_elsewhere_moves_the_client_and_suspects_the_stuck_node():
    r = Route(["a", "b", "c"])
    r.leader_found("a", "c", now=0.0)
    assert r.hint == "c" and r.order(0.1, r.hint) == ["c", "b", "a"]


@given(st.lists(st.tuples(st.sampled_from(["take", "release"]),
                          st.sampled_from(["ok", "expired", "failed", "error", None])), max_size=60))
def test_no_session_number_is_handed_out_twice_and_an_expired_session_never_comes_back(ops):
    pool, out, used, expired, new_ids = SessionPool(), [], set(), set(), iter(range(1, 10_000))
    for op, kind in ops:
        if op == "take":
            s = pool.take() or Session(next(new_ids))
            assert s.id not in expired
            assert (s.id, s.next_seq) not in used
            used.add((s.id, s.next_seq))
            out.append((s, s.next_seq))
        elif out:
            s, seq = out.pop(0)
            pool.release(s, seq, None if kind is None else [kind, "x"])
            if kind == "expired":
                expired.add(s.id)
    assert not {s.id for s in pool.free} & expired


def test_a_round_of_unreachable_nodes_names_each_with_its_whole_cause():
    """A round of connection attempts fails as one text naming each address; cut at 200
    characters as a whole, its third address lost its cause ("127.0.0.1:7102:, ...")."""
    a = calls(Route(["127.0.0.1:7100", "127.0.0.1:7101", "127.0.0.1:7102"]), deadline=1.0)
    cause = "handshake not answered within 0.5 s (not a node of this cluster, or hung)"
    a.unreachable("; ".join(f"127.0.0.1:710{k}: {cause}" for k in range(3)), now=0.0)
    why = a.why_over(False)
    for k in range(3):
        assert f"127.0.0.1:710{k}: {cause}" in why
    assert ":, " not in why and not why.endswith(":")


def test_a_node_that_knows_no_leader_is_asked_after_the_others_until_one_is_named():
    """A node cut off from its peers answers 'not the leader, none known' for as long as
    the cut lasts: the next connection goes to the others first, not back to it."""
    r = Route(["a", "b", "c"])
    step = calls(r).answered("a", ["not_leader", None, None], now=0.0)
    assert not step.done and step.drop and step.pause <= ELECTION_PAUSE[1]
    assert r.connect_order(0.1) == ["b", "c", "a"]
    assert r.order(SUSPECT_FOR + 0.1, None) == ["a", "b", "c"]  # asked first again after a while
    calls(r).answered("b", ["not_leader", "n1", "a"], now=0.2)  # named by another: asked first
    assert r.connect_order(0.3) == ["a", "b", "c"]
    calls(r).answered("c", ["not_leader", None, None], now=0.4)
    r.failed("b", 0.4)
    assert r.order(0.5, None) == ["a", "c", "b"]  # failing us counts more than knowing no leader


def test_after_the_cluster_expires_an_idle_session_the_next_command_gets_a_new_one():
    """A client that once pipelined holds many idle sessions. Left idle past the expiry,
    its next 20 commands were each refused as "expired, outcome unknown", none applied:
    each took another of the stale sessions. The docs promise a new session for the next."""
    pool = SessionPool()
    held = [Session(sid) for sid in range(1, 21)]
    for s in held:
        pool.release(s, s.next_seq, ["ok", None])
    stale = pool.take()
    pool.release(stale, stale.next_seq, ["expired", "session 20 is unknown or expired"])
    assert pool.take() is None  # so the client registers a new session for the next command

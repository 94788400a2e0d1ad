"""The client's retry and session rules (replication.client_policy), shared by
rpc.client and the runtime simulator."""
from __future__ import annotations

import random

from hypothesis import given, strategies as st

from replication.client_policy import (
    BACKOFF_MAX, ELECTION_PAUSE, SUSPECT_FOR, Attempts, Route, Session, SessionPool, leader_among,
)


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
    a = Attempts(r, "execute", deadline=10.0, rng=random.Random(1))
    step = a.answered("b", ["not_leader", "n3", "c"], now=0.0)
    assert not step.done and step.drop and step.pause == 0 and r.hint == "c"
    r.failed("c", now=0.1)
    step = a.answered("b", ["not_leader", "n3", "c"], now=0.2)
    assert r.hint is None and ELECTION_PAUSE[0] <= step.pause <= ELECTION_PAUSE[1]
    step = a.answered("b", ["not_leader", None, None], now=0.3)
    assert r.hint is None and step.pause > 0
    assert "not the leader" in a.tried[-1]


def test_unavailable_retries_the_same_request_on_the_same_connection():
    a = Attempts(Route(["a"]), "execute", deadline=10.0)
    step = a.answered("a", ["unavailable", "timed out waiting for the cluster"], now=0.0)
    assert not step.done and not step.drop and step.pause == 0


def test_every_other_reply_is_the_answer():
    a = Attempts(Route(["a"]), "execute", deadline=10.0)
    for reply in (["ok", 3], ["expired", "x"], ["failed", "T", "m"], ["error", "bad"]):
        assert a.answered("a", reply, now=0.0) == (True, reply, 0.0, False)
    # a node that is not the leader answers a call meant for any node
    any_node = Attempts(Route(["a"]), "status", deadline=10.0, any_node=True)
    assert any_node.answered("a", ["not_leader", None, None], now=0.0).done


def test_a_malformed_reply_counts_as_no_answer_and_a_bad_hint_as_none():
    r = Route(["a", "b"])
    a = Attempts(r, "execute", deadline=10.0)
    for bad in (None, 7, [], [3], {"ok": 1}, "ok"):
        step = a.answered("a", bad, now=0.0)
        assert not step.done and step.drop and r.is_suspect("a", 0.5)
    step = a.answered("b", ["not_leader"], now=0.0)
    assert not step.done and r.hint is None and step.pause > 0
    step = a.answered("b", ["not_leader", "n1", 7100], now=0.0)
    assert r.hint is None


def test_a_lost_call_drops_the_connection_and_suspects_the_node():
    r = Route(["a", "b"])
    a = Attempts(r, "execute", deadline=10.0)
    step = a.lost("a", "TimeoutError: no answer", now=1.0)
    assert step.drop and r.is_suspect("a", 1.5) and r.order(1.5, None) == ["b", "a"]


def test_backoff_when_nobody_answers_grows_to_a_quarter_second_and_never_passes_the_deadline():
    a = Attempts(Route(["a"]), "execute", deadline=100.0, rng=random.Random(7))
    pauses = [a.unreachable("refused", now=0.0) for _ in range(12)]
    assert pauses[0] <= 0.02 and max(pauses) <= BACKOFF_MAX and pauses[-1] >= BACKOFF_MAX / 2
    late = Attempts(Route(["a"]), "execute", deadline=1.0)
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

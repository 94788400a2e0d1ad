"""replication.proposals.Proposals: a batch of proposals waited for at once (what a
client's execute_batch waits on), and Node.propose_many, which fills one."""
from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prevalence.sessions import RegisterSession
from replication.errors import ProposalRefused
from replication.proposals import Proposals
from tests.prevalence.domain import Add, Get
from tests.replication.test_node import Cluster, cluster  # noqa: F401 - the fixture


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_outcomes_keep_the_order_proposed_whatever_order_they_settle_in(data):
    n = data.draw(st.integers(1, 12))
    order = data.draw(st.permutations(range(n)))
    failing = data.draw(st.sets(st.integers(0, n - 1)))
    again = data.draw(st.lists(st.integers(0, n - 1), max_size=5))  # settled a second time: ignored
    batch = Proposals(n)
    for j, k in enumerate(order):
        assert not batch.wait(0)
        if k in failing:
            batch.settle(k, exc=ValueError(f"no {k}"))
        else:
            batch.settle(k, ("ok", k))
        if j < n - 1:
            with pytest.raises(TimeoutError):
                batch.outcome(order[-1])  # not settled yet
    for k in again:
        batch.settle(k, "late")
        batch.settle(k, exc=RuntimeError("late"))
    assert batch.wait(0) and len(batch) == n
    for k in range(n):
        if k in failing:
            with pytest.raises(ValueError, match=f"no {k}"):
                batch.outcome(k)
        else:
            assert batch.outcome(k) == ("ok", k)


def test_an_empty_batch_is_done_at_once():
    assert Proposals(0).wait(0)


def test_threads_settling_at_once_wake_the_waiter_once_all_are_in():
    n = 400
    batch = Proposals(n)
    gate = threading.Barrier(4)

    def settle(part: int) -> None:
        gate.wait()
        for k in range(part, n, 4):
            batch.settle(k, k)

    threads = [threading.Thread(target=settle, args=(p,)) for p in range(4)]
    for t in threads:
        t.start()
    assert batch.wait(10)
    for t in threads:
        t.join()
    assert [batch.outcome(k) for k in range(n)] == list(range(n))


def test_a_leader_answers_a_batch_in_order_and_a_follower_refuses_each(cluster):
    leader = cluster.leader()
    sid = leader.execute(RegisterSession())
    batch = leader.propose_many([(Add("x", 1), (sid, 1)), (Add("x", 2), (sid, 2)), (Add("x", 3), None)])
    assert batch.wait(5)
    assert [batch.outcome(k) for k in range(3)] == [("ok", 1), ("ok", 3), 6]
    assert leader.query(Get("x")) == 6
    follower = next(n for n in cluster.net.nodes.values() if n is not leader)
    refused = follower.propose_many([(Add("x", 1), None), (Add("x", 1), None)])
    assert refused.wait(5)
    for k in range(2):
        with pytest.raises(ProposalRefused):
            refused.outcome(k)


def test_a_stopping_node_settles_the_batch_it_still_holds(cluster):
    leader = cluster.leader()
    leader.stop()
    batch = leader.propose_many([(Add("x", 1), None)] * 3)
    assert batch.wait(5), "a batch proposed to a stopped node was left waiting"
    for k in range(3):
        with pytest.raises(ProposalRefused, match="stopped"):
            batch.outcome(k)


def test_a_decisive_refusal_wakes_the_waiter_once_all_before_it_are_settled():
    """A refusal answers the whole batch: the old per-Future loop answered as soon as it
    reached it, while Proposals waited for the rest too, up to the batch's 10 s."""
    batch = Proposals(4, ProposalRefused)
    batch.settle(2, exc=ProposalRefused("not the leader"))
    assert not batch.wait(0), "two before it are unsettled"
    batch.settle(0, ("ok", 1))
    assert not batch.wait(0)
    batch.settle(1, exc=ValueError("its own error, not decisive"))
    assert batch.wait(0)  # 3 never settles here
    assert batch.outcome(0) == ("ok", 1)
    with pytest.raises(ValueError):
        batch.outcome(1)
    with pytest.raises(ProposalRefused):
        batch.outcome(2)
    with pytest.raises(TimeoutError):
        batch.outcome(3)
    plain = Proposals(2)  # without decisive types: every one is waited for
    plain.settle(0, exc=ProposalRefused("not the leader"))
    assert not plain.wait(0)


def test_a_batch_whose_first_command_is_refused_is_answered_at_once():
    import time as _time

    import msgpack

    import rpc.service as service
    from prevalence.codec import CODEC

    class _Node:
        def propose_many(self, items, decisive=()):
            batch = Proposals(len(items), decisive)
            batch.settle(0, exc=ProposalRefused("not the leader", leader="n2"))
            return batch  # the second never settles: it was proposed after a step in between

    class _Host:
        node = _Node()

        def address_of(self, node_id):
            return "127.0.0.1:7102" if node_id == "n2" else None

    data = CODEC.dumps(Add("x", 1))
    started = _time.monotonic()
    reply = msgpack.unpackb(service.ClientService(_Host(), "c").exposed_execute_batch(((data, 1 << 62, 1), (data, 1 << 62, 2))),
                            raw=False)
    assert reply[0] == "not_leader" and reply[1] == "n2", reply
    assert _time.monotonic() - started < 1.0

"""One thread pipelining commands with ``execute_async``: hundreds in flight, each
applied exactly once through a leader failover, each future with its own outcome."""
from __future__ import annotations

import sys
import time
from concurrent.futures import wait

import pytest

from prevalence.errors import PrevalenceError
from tests.prevalence.domain import Add, Boom, Get, HalfThenFail, Rejected, Snapshot, Stamp

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")]


@pytest.mark.parametrize("calls", [1, 2])
def test_a_thousand_commands_in_flight_from_one_thread_through_a_leader_sigkill(cluster, calls):
    """With one call in flight they also apply in the order sent; with two, in some order."""
    with cluster.client(timeout=20, calls_in_flight=calls) as client:
        victim = cluster.leader()  # asked first: on a slow machine hundreds more complete while it answers
        tags = [f"c{i}" for i in range(1000)]
        futures = [client.execute_async(Stamp(tag)) for tag in tags]  # returns at once
        wait_for = time.monotonic() + 10
        while sum(f.done() for f in futures) < 100 and time.monotonic() < wait_for:
            time.sleep(0.001)
        cluster.kill(victim)  # SIGKILL with most of the thousand still in flight or queued
        in_flight = sum(not f.done() for f in futures)
        cluster.leader(exclude={victim})
        cluster.start(victim)
        done, not_done = wait(futures, timeout=40)
        assert in_flight > 300 and not not_done
        for tag, f in zip(tags, futures):
            assert f.result()[0] == tag  # each future has its own command's result
        log = [item[0] for item in client.query(Snapshot())[1]]
        assert len(log) == len(set(log)), "a command was applied twice"
        assert sorted(log) == sorted(tags), "a command was lost"
        if calls == 1:
            assert log == tags, "applied out of the order sent"
        stats = client.batching
        assert stats["commands"] == 1000 and stats["largest"] > 1  # they travelled together
        assert stats["calls"] < 500


def test_a_failing_transaction_fails_only_its_own_future(cluster):
    with cluster.client() as client:
        client.execute(Add("x", 1))
        txs = [{0: Add("x", -1000), 1: HalfThenFail(f"h{k}"), 2: Stamp("y" * (2 << 20))}.get(k % 8, Add("x", 1))
               for k in range(200)]
        futures = [client.execute_async(tx) for tx in txs]
        wait(futures, timeout=30)
        ok = []
        for k, f in enumerate(futures):
            exc = f.exception()
            if k % 8 == 0:
                assert isinstance(exc, Rejected) and exc.rejected is True
            elif k % 8 == 1:
                assert isinstance(exc, Boom) and exc.rejected is False
            elif k % 8 == 2:  # 2 MiB: over the node's request limit, refused alone
                assert isinstance(exc, PrevalenceError) and "over the limit" in str(exc)
            else:
                assert exc is None
                ok.append(f.result())
        assert sorted(ok) == list(range(2, 2 + len(ok)))  # each applied once, in submission order
        assert client.query(Get("x")) == 1 + len(ok)
        assert client.batching["largest"] > 1


def test_query_async_sees_the_commands_whose_futures_completed(cluster):
    with cluster.client() as client:
        futures = [client.execute_async(Add("q", 1)) for _ in range(50)]
        assert [f.result(10) for f in futures] == list(range(1, 51))
        queries = [client.query_async(Get("q")) for _ in range(20)]
        assert [q.result(10) for q in queries] == [50] * 20
        assert client.query_async(Get("q"), consistency="leader").result(10) == 50
        with pytest.raises(PrevalenceError, match="consistency"):
            client.query_async(Get("q"), consistency="eventual")

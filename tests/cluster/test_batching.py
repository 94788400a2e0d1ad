"""Threads sharing one client: their concurrent commands travel together in one call,
and each still applies exactly once and gets its own result or exception."""
from __future__ import annotations

import sys
import threading

import pytest

from prevalence.errors import PrevalenceError
from tests.prevalence.domain import Add, Boom, Get, HalfThenFail, Rejected, Snapshot, Stamp

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")]


def run_threads(n: int, target) -> list[BaseException]:
    errors: list[BaseException] = []

    def guarded(k: int) -> None:
        try:
            target(k)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors


def test_many_threads_on_one_client_get_distinct_results_each_applied_once(cluster):
    with cluster.client() as client:
        for _ in range(5):  # a lone caller sends each command at once, on its own
            client.execute(Add("lone", 1))
        assert client.batching == {"calls": 5, "commands": 5, "largest": 1}
        results: list[int] = []
        tags: list[str] = []
        per_thread = 40

        def hammer(k: int) -> None:
            for i in range(per_thread):
                results.append(client.execute(Add("counter", 1)))
                tags.append(client.execute(Stamp(f"t{k}-{i}"))[0])

        assert run_threads(16, hammer) == []
        total = 16 * per_thread
        # every increment saw a distinct counter value: none lost, none applied twice
        assert sorted(results) == list(range(1, total + 1))
        assert client.query(Get("counter")) == total
        log = [item[0] for item in client.query(Snapshot())[1]]
        assert sorted(log) == sorted(tags) and len(set(log)) == total
        stats = client.batching
        assert stats["commands"] == 5 + 2 * total
        assert stats["calls"] < stats["commands"] - 5  # commands did travel together
        assert 1 < stats["largest"] <= 16


def test_a_failing_command_fails_only_its_own_caller(cluster):
    with cluster.client() as client:
        client.execute(Add("x", 1))
        outcomes: dict[int, object] = {}
        gate = threading.Barrier(24)

        def caller(k: int) -> None:
            tx = {0: Add("x", -1000), 1: HalfThenFail(f"h{k}"), 2: Stamp("y" * (2 << 20))}.get(k % 8, Add("x", 1))
            gate.wait()
            try:
                outcomes[k] = client.execute(tx)
            except Exception as exc:  # noqa: BLE001 - compared below
                outcomes[k] = exc

        for _round in range(3):  # three rounds of 24 callers released at once
            outcomes.clear()
            assert run_threads(24, caller) == []
            for k, out in outcomes.items():
                if k % 8 == 0:
                    assert isinstance(out, Rejected) and out.rejected is True
                elif k % 8 == 1:
                    assert isinstance(out, Boom) and out.rejected is False
                elif k % 8 == 2:  # 2 MiB: over the node's request limit, refused alone
                    assert isinstance(out, PrevalenceError) and "over the limit" in str(out)
                else:
                    assert isinstance(out, int), out
            ok = sorted(v for v in outcomes.values() if isinstance(v, int))
            assert len(ok) == len(set(ok)) == 15
        assert client.batching["largest"] > 1  # failing commands shared calls with good ones
        assert client.query(Get("x")) == 1 + 3 * 15  # the rejected ones changed nothing
        assert all(client.query(Get(f"h{k}")) == 3 for k in range(1, 24, 8))  # applied, then raised


def test_a_batch_over_the_byte_bound_is_split(cluster):
    with cluster.client(max_batch_bytes=512 * 1024) as client:
        blob = 200 * 1024
        sent: list[str] = []

        def caller(k: int) -> None:
            for i in range(3):
                tag = f"{k}-{i}-".ljust(blob, "z")
                assert client.execute(Stamp(tag))[0] == tag
                sent.append(tag)

        # 12 concurrent 200 KiB commands, 2.4 MiB at once: more than one call may carry
        # (the node refuses requests over 1 MiB), so they go in calls of two at most
        assert run_threads(12, caller) == []
        log = [item[0] for item in client.query(Snapshot())[1]]
        assert sorted(log) == sorted(sent) and len(log) == 36
        assert client.batching["largest"] == 2
        assert client.batching["calls"] >= 18


def test_batches_across_leader_sigkills_apply_each_command_exactly_once(cluster):
    c = cluster
    done: list[str] = []
    stop = threading.Event()
    with c.client() as client:
        def writer(k: int) -> None:
            n = 0
            while not stop.is_set():
                tag = f"w{k}-{n}"
                assert client.execute(Stamp(tag), timeout=15)[0] == tag
                done.append(tag)
                n += 1

        def chaos() -> None:
            try:
                c.kill_leaders(3)  # batches are in flight to it: 16 writers never pause
            finally:
                stop.set()

        killer = threading.Thread(target=chaos)
        killer.start()
        errors = run_threads(16, writer)
        killer.join()
        assert errors == []  # no caller saw the failovers
        tags = [item[0] for item in client.query(Snapshot())[1]]
        assert client.batching["largest"] > 1
    assert len(tags) == len(set(tags)), "a command was applied twice"
    assert set(tags) == set(done), "a command was lost, or applied without its caller being told"
    assert len(done) > 100


def test_many_threads_starting_at_a_follower_all_reach_the_leader(cluster):
    """16 threads' first calls (session registrations, not coalesced) all land on a
    follower and move to the leader together without undoing each other's connection."""
    import rpc
    from rpc.config import format_address

    leader = cluster.leader()
    order = sorted(cluster.configs, key=lambda n: n == leader)  # followers first
    for _round in range(3):
        with rpc.connect([format_address(cluster.configs[n].listen) for n in order], secret=cluster.secret,
                         timeout=10) as client:
            results: list[int] = []
            assert run_threads(16, lambda k: results.append(client.execute(Add("c", 1)))) == []
            assert len(set(results)) == 16

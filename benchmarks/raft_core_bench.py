"""Throughput ceiling of the Raft core alone (no disk, no network, no codec).

A 3-node cluster over MemoryStorage with zero-delay delivery: the leader proposes
``--batch`` commands at a time (as the runtime will when several clients write at
once), then the hosts pump Readies and messages until the cluster is quiet. Reports
committed entries/s (commit index on the leader over wall time) and core steps/s (a
step is one input: a tick, a message stepped or a proposal call, together with the
Ready handling it causes). Also reports events/s of the fault simulator.

    python benchmarks/raft_core_bench.py [--entries 200000] [--batch 64] [--runs 5]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections import deque

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from replication import MemoryStorage, Membership, RaftConfig, RaftNode, Role  # noqa: E402


def cluster_run(entries: int, batch: int, size: int, seed: int = 1) -> tuple[float, float]:
    ids = ["n1", "n2", "n3"]
    membership = Membership(tuple(ids))
    disks = {i: MemoryStorage(membership) for i in ids}
    rng = random.Random(seed)
    nodes = {i: RaftNode(i, disks[i], RaftConfig(), random.Random(rng.random())) for i in ids}
    queue: deque = deque()
    steps = 0

    def pump(i: str) -> None:
        node, disk = nodes[i], disks[i]
        while node.has_ready():
            rd = node.ready()
            queue.extend(rd.messages)
            if rd.snapshot is not None:
                disk.apply_snapshot(rd.snapshot)
            if rd.truncate_from is not None:
                disk.truncate(rd.truncate_from)
            if rd.entries:
                disk.append(rd.entries)
            if rd.hard_state is not None:
                disk.set_hard_state(rd.hard_state)
            queue.extend(rd.persisted_messages)
            node.advance(rd)  # applying is the state machine's cost, not the core's

    def settle() -> None:
        nonlocal steps
        for i in ids:
            pump(i)
        while queue:
            m = queue.popleft()
            nodes[m.dst].step(m)
            steps += 1
            pump(m.dst)

    leader = nodes["n1"]
    while leader.role != Role.LEADER:
        leader.tick()
        for i in ids:
            if i != "n1":
                nodes[i].election_elapsed = 100  # let them vote: no lease to respect
        settle()
    payload = b"x" * size
    datas = [payload] * batch
    target = leader.log.last_index() + entries
    start = time.perf_counter()
    ticks = 0
    while leader.log.committed < target:
        leader.propose_batch(datas)
        steps += 1
        settle()
        ticks += 1
        if ticks % 50 == 0:  # time passes: heartbeats flow as well
            for i in ids:
                nodes[i].tick()
                steps += 1
            settle()
    elapsed = time.perf_counter() - start
    committed = leader.log.committed - (target - entries)
    return committed / elapsed, steps / elapsed


def sim_rate(seeds: int) -> float:
    from replication.sim import SimConfig, run_seed

    steps = 0
    start = time.perf_counter()
    for s in range(seeds):
        steps += run_seed(s, SimConfig()).stats["steps"]
    return steps / (time.perf_counter() - start)


def runtime_sim_rate(seeds: int) -> float:
    """Events per second of the runtime simulator (replication.sim_runtime): the node
    runtime that ships, its journal on a simulated disk and its state machine."""
    import logging

    from replication.sim_runtime import RuntimeSim, check

    logging.disable(logging.CRITICAL)
    steps, start = 0, time.perf_counter()
    for s in range(seeds):
        sim = RuntimeSim(s)
        ok, why = check(sim)
        assert ok, why
        steps += sim.steps
    logging.disable(logging.NOTSET)
    return steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entries", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=100, help="bytes per command")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--sim-seeds", type=int, default=40)
    args = p.parse_args()
    print(f"python {sys.version.split()[0]}, 3 nodes, zero delay, {args.size}-byte commands, medians of {args.runs} runs")
    for batch in sorted({1, args.batch}):
        n = args.entries if batch > 1 else max(args.entries // 10, 1000)
        runs = [cluster_run(n, batch, args.size, seed=r) for r in range(args.runs)]
        ent = statistics.median(r[0] for r in runs)
        stp = statistics.median(r[1] for r in runs)
        print(f"batch {batch:>4}: {ent:>10,.0f} committed entries/s   {stp:>10,.0f} core steps/s")
    rates = [sim_rate(args.sim_seeds) for _ in range(max(1, args.runs // 2))]
    print(f"fault simulator: {statistics.median(rates):>10,.0f} simulated steps/s (events incl. codec and checks)")
    rates = [runtime_sim_rate(max(1, args.sim_seeds // 4)) for _ in range(max(1, args.runs // 2))]
    print(f"runtime simulator: {statistics.median(rates):>8,.0f} simulated events/s (the shipped runtime, its "
          "journal on a simulated disk, its state machine)")


if __name__ == "__main__":
    main()

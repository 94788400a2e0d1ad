"""Writer gap when the leader goes silent: isolated, or cut one way, with no reset.

    python3 benchmarks/silent_leader_bench.py [--rounds 6]

3 node processes on 127.0.0.1; every node reaches every other, and the client reaches
each node, through a proxy in this process (tests/cluster/proxy.py) that can make bytes
vanish instead of resetting the connection: a pulled cable or a one-way cut. One client
thread writes ``Stamp`` commands in a loop; each round silences the leader (rounds
alternate: isolated, one-way), waits 2 s, heals it and waits for the cluster to catch
up. The gap is the longest time between two consecutive acknowledged writes around the
fault. What bounds it: the election (0.25-0.5 s election timeout, then a vote round)
plus the client's first status probe (0.25 s after its call stopped answering, then
every 0.1 s). Linux or macOS.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE)]

import rpc  # noqa: E402
from rpc.config import format_address  # noqa: E402
from tests.cluster.proxy import LinkProxy  # noqa: E402
from tests.cluster.test_partition import ProxiedCluster  # noqa: E402
from tests.cluster.test_silent_leader import silence  # noqa: E402
from tests.prevalence.domain import Stamp  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="silent-bench-") as d:
        c = ProxiedCluster(d)
        front = {nid: LinkProxy(cfg.listen) for nid, cfg in c.configs.items()}
        stop = threading.Event()
        done: list[float] = []
        gaps: dict[str, list[float]] = {"isolated": [], "one-way": []}
        try:
            c.leader()
            with rpc.connect([format_address(p.address) for p in front.values()], secret=c.secret,
                             timeout=15) as client:
                def writer() -> None:
                    n = 0
                    while not stop.is_set():
                        client.execute(Stamp(f"w{n}"))
                        done.append(time.monotonic())
                        n += 1

                t = threading.Thread(target=writer, daemon=True)
                t.start()
                for r in range(args.rounds):
                    how = ("isolated", "one-way")[r % 2]
                    time.sleep(0.8)
                    old = c.leader()
                    silence(c, front, old, how)
                    cut_at = time.monotonic()
                    time.sleep(2.0)
                    around = [t0 for t0 in done if cut_at - 0.5 <= t0 <= cut_at + 2.0]
                    gap = max(b - a for a, b in zip(around, around[1:]))
                    gaps[how].append(gap)
                    print(f"round {r + 1}: {how}: writer gap {gap * 1000:.0f} ms", file=sys.stderr, flush=True)
                    silence(c, front, old, how, on=False)
                    c.wait_converged()
                stop.set()
                t.join(20)
        finally:
            stop.set()
            c.stop()
            for p in front.values():
                p.close()
    every = gaps["isolated"] + gaps["one-way"]
    for how, g in list(gaps.items()) + [("all", every)]:
        if g:
            print(f"{how:9} {len(g)} rounds: median {statistics.median(g) * 1000:.0f} ms, max {max(g) * 1000:.0f} ms"
                  f"  ({', '.join(f'{x * 1000:.0f}' for x in g)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

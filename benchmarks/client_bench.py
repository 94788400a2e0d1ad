"""Client figures (issue 5): sequential commit latency and client-observed failover,
from an external client process against 3 node processes on loopback, fsync on.

    python3 benchmarks/client_bench.py [--commands 2000] [--failovers 10]

With the latency it prints each process's CPU time per sequential command (user and
system, from ``/proc``; Linux only): where the latency beyond the floor is spent.

Throughput with client threads, next to PySyncObj: benchmarks/throughput_bench.py.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT]

from cluster_bench import proc_times  # noqa: E402
from rpc.localcluster import LocalCluster  # noqa: E402
from tests.prevalence.domain import Add  # noqa: E402

DOMAIN_ROOT = "tests.prevalence.domain:Store"


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def client_failover(cluster: LocalCluster, client, rounds: int) -> list[float]:
    """Seconds from SIGKILL of the leader until ``client``'s next command returns; the
    killed node is restarted and caught up before the next round."""
    out = []
    for _ in range(rounds):
        leader = cluster.leader()
        cluster.kill(leader)
        t = time.perf_counter()
        client.execute(Add("x", 1))
        out.append(time.perf_counter() - t)
        cluster.start(leader)
        cluster.wait_converged(timeout=15)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commands", type=int, default=2000)
    ap.add_argument("--failovers", type=int, default=10)
    args = ap.parse_args()
    with LocalCluster(tempfile.mkdtemp(prefix="client-bench-"), 3, DOMAIN_ROOT, cwd=ROOT) as c:
        c.leader()
        with c.client() as client:
            for _ in range(50):
                client.execute(Add("warm", 1))
            lat = []
            leader = c.leader()
            pids = {(f"{nid} (leader)" if nid == leader else nid): p.pid for nid, p in c.procs.items()}
            pids["client"] = os.getpid()
            before = {k: proc_times(pid) for k, pid in pids.items()}
            for _ in range(args.commands):
                t = time.perf_counter()
                client.execute(Add("x", 1))
                lat.append((time.perf_counter() - t) * 1000)
            after = {k: proc_times(pid) for k, pid in pids.items()}
            print(f"sequential commit latency, {args.commands} commands: p50 {statistics.median(lat):.2f} ms, "
                  f"p99 {pct(lat, 99):.2f} ms, max {max(lat):.2f} ms")
            print("CPU per command, user + system: " + ", ".join(
                f"{k} {(after[k][0] - before[k][0]) / args.commands * 1e6:.0f} + "
                f"{(after[k][1] - before[k][1]) / args.commands * 1e6:.0f} us" for k in pids))
            if args.failovers <= 0:
                return 0
            fo = [s * 1000 for s in client_failover(c, client, args.failovers)]
            print(f"client-observed failover (SIGKILL the leader -> next command done), {args.failovers} rounds: "
                  f"median {statistics.median(fo):.0f} ms, max {max(fo):.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Client figures (issue 5): sequential commit latency and client-observed failover,
from an external client process against 3 node processes on loopback, fsync on.

    python3 benchmarks/client_bench.py [--commands 2000] [--failovers 10]

(The side-by-side comparison with PySyncObj that issue 5 asks for is not here yet.)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE)]

import rpc  # noqa: E402
from rpc.config import format_address  # noqa: E402
from tests.cluster.harness import LocalCluster  # noqa: E402
from tests.prevalence.domain import Add  # noqa: E402


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commands", type=int, default=2000)
    ap.add_argument("--failovers", type=int, default=10)
    args = ap.parse_args()
    c = LocalCluster(tempfile.mkdtemp(prefix="client-bench-"), 3)
    try:
        c.leader()
        with rpc.connect([format_address(cfg.listen) for cfg in c.configs.values()],
                         secret_file=f"{c.dir}/cluster.secret") as client:
            for _ in range(50):
                client.execute(Add("warm", 1))
            lat = []
            for _ in range(args.commands):
                t = time.perf_counter()
                client.execute(Add("x", 1))
                lat.append((time.perf_counter() - t) * 1000)
            print(f"sequential commit latency, {args.commands} commands: p50 {statistics.median(lat):.2f} ms, "
                  f"p99 {pct(lat, 99):.2f} ms, max {max(lat):.2f} ms")
            fo = []
            for _ in range(args.failovers):
                leader = c.leader()
                c.kill(leader)
                t = time.perf_counter()
                client.execute(Add("x", 1))
                fo.append((time.perf_counter() - t) * 1000)
                c.start(leader)
                deadline = time.monotonic() + 15
                while True:  # caught up before the next kill
                    st = c.status()
                    if st[leader]["reachable"] and len({r["applied_index"] for r in st.values()}) == 1:
                        break
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{leader} did not catch up")
                    time.sleep(0.1)
            print(f"client-observed failover (SIGKILL the leader -> next command done), {args.failovers} rounds: "
                  f"median {statistics.median(fo):.0f} ms, max {max(fo):.0f} ms")
    finally:
        c.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

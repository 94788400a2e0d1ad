"""Before/after: the same client load on two checkouts, alternated ABBA, side by side.

    python3 benchmarks/compare_bench.py BEFORE_DIR AFTER_DIR [--rounds 3] [--threads 16,1] [--seconds 5]

Each checkout (a `git worktree add --detach DIR COMMIT`) runs 3 node processes on
127.0.0.1 with its own code (fsync on, default timeouts) and an external client process
whose N threads share one client and call ``execute(Add(...))``; a run reports committed
tx/s, commands per call, the first thread's p50 latency and each process's CPU. Runs
alternate A B B A per round so that the machine's drift falls on both sides alike. The
summary gives each side's median and range, the ratio of medians, and the Mann-Whitney
U of the two samples (for 6 and 6 runs, a difference is significant at 5% two-sided
when U <= 5). Linux only (/proc for CPU).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.abspath(__file__)


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def inner(threads: int, seconds: float) -> dict:
    """One run against the checkout on sys.path (the caller's PYTHONPATH)."""
    from rpc.localcluster import LocalCluster
    from tests.prevalence.domain import Add

    with LocalCluster(tempfile.mkdtemp(prefix="compare-"), 3, "tests.prevalence.domain:Store", cwd=os.getcwd()) as c:
        c.leader()
        with c.client() as client:
            for _ in range(100):
                client.execute(Add("warm", 1))
            stop = time.monotonic() + seconds + 2
            counts, lat = [0] * threads, []

            def run(k: int) -> None:
                while time.monotonic() < stop:
                    t = time.perf_counter()
                    client.execute(Add(f"k{k}", 1))
                    counts[k] += 1
                    if k == 0:
                        lat.append(time.perf_counter() - t)

            workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
            for w in workers:
                w.start()
            time.sleep(1)  # sessions registered, batches flowing
            pids = [os.getpid()] + [p.pid for p in c.procs.values()]
            cpu0, b0, n0, t0 = [proc_cpu(p) for p in pids], dict(client.batching), sum(counts), time.monotonic()
            time.sleep(seconds)
            elapsed = time.monotonic() - t0
            done, b = sum(counts) - n0, client.batching
            cpu = sum(proc_cpu(p) - c0 for p, c0 in zip(pids, cpu0)) / elapsed * 100
            for w in workers:
                w.join()
    lat.sort()
    return {"tx_s": done / elapsed, "per_call": (b["commands"] - b0["commands"]) / max(1, b["calls"] - b0["calls"]),
            "p50_ms": lat[len(lat) // 2] * 1000, "cpu_pct": cpu}


def mann_whitney_u(a: list[float], b: list[float]) -> float:
    ranked = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    ranks: dict[int, float] = {}
    i = 0
    while i < len(ranked):  # ties share their mean rank
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    ra = sum(ranks[k] for k, (_v, side) in enumerate(ranked) if side == 0)
    u_a = ra - len(a) * (len(a) + 1) / 2
    return min(u_a, len(a) * len(b) - u_a)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--rounds", type=int, default=3, help="ABBA rounds: 2 runs per side each (default 3)")
    ap.add_argument("--threads", default="16,1", help="client thread counts (default 16,1)")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds measured per run (default 5)")
    ap.add_argument("--inner", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        print(json.dumps(inner(int(args.inner[0]), float(args.inner[1]))))
        return 0
    if not sys.platform.startswith("linux"):
        print("error: this benchmark reads /proc: Linux only", file=sys.stderr)
        return 2
    sides = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    threads = [int(t) for t in args.threads.split(",") if t]
    runs: dict[tuple[str, int], list[dict]] = {}
    for r in range(args.rounds):
        for side in ("before", "after", "after", "before"):
            for t in threads:
                env = dict(os.environ, PYTHONPATH=sides[side])
                out = subprocess.run([sys.executable, HERE, "x", "x", "--inner", str(t), str(args.seconds)],
                                     cwd=sides[side], env=env, capture_output=True, text=True, timeout=300)
                if out.returncode != 0:
                    print(out.stderr, file=sys.stderr)
                    return 1
                res = json.loads(out.stdout.strip().splitlines()[-1])
                runs.setdefault((side, t), []).append(res)
                print(f"round {r + 1} {side:6} {t:2} thread(s): {res['tx_s']:7,.0f} tx/s, {res['per_call']:.1f} per call, "
                      f"p50 {res['p50_ms']:.2f} ms, CPU {res['cpu_pct']:.0f} %", flush=True)
    print(f"\n{sides['before']} (before) against {sides['after']} (after), {2 * args.rounds} runs each, "
          f"{args.seconds:g} s, medians [ranges]:")
    for t in threads:
        for key, unit in (("tx_s", "tx/s"), ("p50_ms", "ms p50")):
            b = [x[key] for x in runs[("before", t)]]
            a = [x[key] for x in runs[("after", t)]]
            print(f"{t:2} thread(s), {unit:6}: before {statistics.median(b):8,.2f} [{min(b):,.2f}-{max(b):,.2f}]  "
                  f"after {statistics.median(a):8,.2f} [{min(a):,.2f}-{max(a):,.2f}]  "
                  f"ratio {statistics.median(a) / statistics.median(b):.3f}  U = {mann_whitney_u(a, b):g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

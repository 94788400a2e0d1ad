"""The grid (issue 6): what a 3x3 grid costs at rest and how fast it recovers.

    python3 benchmarks/grid_bench.py [--failovers 5] [--idle-seconds 15] [--repeat 3]

Linux only (reads /proc). Nine node processes on 127.0.0.1 with the default timeouts
(tick 25 ms, election 10-20 ticks) and the controller's defaults (a cycle every 0.5 s,
down after 1 s without an answer), fsync="always".

1. Idle: CPU (% of one core, from /proc/<pid>/task/*/schedstat) and RSS of the master
   and of the other eight, over --idle-seconds windows (median of --repeat windows). The
   master runs the controller: every cycle it asks each of the 9 agents for its status.
2. Failover, --failovers times, as `grid demo` measures it: SIGKILL the master; election
   (kill to a node reporting itself leader), client reconnect (kill to the next
   acknowledged command of a client connected before), dead node noticed (kill to the
   new master recording it down), node restore (restart to its agent running its
   desired settings, process start included).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time

from cluster_bench import log, pct, proc_rss_mb, proc_sched_seconds

from app.demo import Demo


def idle(demo: Demo, seconds: float, windows: int) -> dict[str, list[float]]:
    g = demo.grid
    master = g.leader()
    pids = {nid: p.pid for nid, p in g.procs.items()}
    cpu: dict[str, list[float]] = {"master": [], "others": []}
    for _ in range(windows):
        before = {nid: proc_sched_seconds(pid) for nid, pid in pids.items()}
        began = time.monotonic()
        time.sleep(seconds)
        took = time.monotonic() - began
        shares = {nid: 100 * (proc_sched_seconds(pid) - before[nid]) / took for nid, pid in pids.items()}
        cpu["master"].append(shares[master])
        cpu["others"].append(statistics.median(v for k, v in shares.items() if k != master))
    cpu["rss"] = [proc_rss_mb(pid) for pid in pids.values()]
    return cpu


def main() -> int:
    if not sys.platform.startswith("linux"):
        print("error: this benchmark reads /proc: Linux only", file=sys.stderr)
        return 2
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--failovers", type=int, default=5)
    ap.add_argument("--idle-seconds", type=float, default=15.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    demo = Demo(tempfile.mkdtemp(prefix="grid-bench-"), 3, 3)
    rounds: list[dict[str, float]] = []
    quiet = io.StringIO()  # the demo's own progress lines
    try:
        with contextlib.redirect_stdout(quiet):
            demo.start()
            demo.command()
        log(f"idle: {args.repeat} windows of {args.idle_seconds:g} s")
        cpu = idle(demo, args.idle_seconds, args.repeat)
        for k in range(args.failovers):
            with contextlib.redirect_stdout(quiet):
                demo.kill_master()
                demo.check_state()
                demo.restore()
            rounds.append(dict(demo.times))
            log(f"failover {k + 1}: " + ", ".join(f"{name} {1000 * v:.0f} ms" for name, v in demo.times.items()))
            time.sleep(1.0)
    finally:
        demo.close()
    print(f"\nidle, 9 nodes ({args.repeat} windows of {args.idle_seconds:g} s): master "
          f"{statistics.median(cpu['master']):.1f} % of a core, others (median) "
          f"{statistics.median(cpu['others']):.1f} %; RSS {min(cpu['rss']):.0f}-{max(cpu['rss']):.0f} MB")
    print(f"\nfailover, {len(rounds)} rounds: median / p90 / max in ms")
    for name in rounds[0]:
        values = [1000 * r[name] for r in rounds]
        print(f"  {name:<18} {statistics.median(values):6.0f} {pct(values, 0.9):6.0f} {max(values):6.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

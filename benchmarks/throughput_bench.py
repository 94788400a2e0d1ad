"""Committed tx/s from a client process, ours next to PySyncObj, and client-observed failover.

    pip install -e '.[bench]'          # PySyncObj
    python3 benchmarks/throughput_bench.py [--seconds 3] [--repeat 3] [--failovers 5]

Ours: 3 node processes (and once 9, at the largest thread count) on 127.0.0.1 (``rpc.localcluster``), default timeouts and
fsync="always"; this process is an external client (``rpc.connect``) whose 1 or 16
threads share one client and call ``execute(Add(key, 1))``, so concurrent commands
are coalesced into one call (rpc/batching.py). As a reference, the largest thread
count runs again with ``max_batch=1`` (each command its own call).

PySyncObj: 3 voter processes (benchmarks/pso_counter.py, journalFile and fullDumpFile
on the same disk; PySyncObj has no fsync setting, see there) and a read-only node
(``SyncObj(None, voters)``: PySyncObj's non-voting member) in this process with its
in-memory journal, whose 1 or 16 threads call the replicated ``add(key, 1,
sync=True)``: each call waits for its command to be committed and applied. PySyncObj
runs twice: with ``appendEntriesUseBatch=False`` (a new entry goes to the followers at
once: its fastest mode for synchronous callers) and with its defaults (new entries wait
for the next append period). Ours also runs with fsync="unsafe-no-fsync" (the nodes never
fsync their journals: acknowledged entries survive a killed process, not a power failure
or an OS crash), PySyncObj's durability; never a setting for a real cluster.

Election timeouts are 0.25-0.5 s on both sides. Every figure is the median of
--repeat runs of --seconds; the systems alternate (ours, then PySyncObj) within each
repeat, and only one system runs at a time. Failover: SIGKILL the leader, time until
the client's next command returns; the killed node is restarted and caught up before
the next round. Linux only (SIGKILL, /proc for CPU).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]

from tabulate import tabulate  # noqa: E402

from client_bench import DOMAIN_ROOT, client_failover  # noqa: E402
from cluster_bench import proc_cpu_seconds  # noqa: E402
from rpc.batching import MAX_BATCH  # noqa: E402
from rpc.localcluster import LocalCluster, free_port_block, wait_for  # noqa: E402
from tests.prevalence.domain import Add  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_threads(call: Callable[[int], object], threads: int, seconds: float, pids: list[int]) -> tuple[float, float]:
    """(committed calls/s, CPU of ``pids`` in % of one core) with ``threads`` callers."""
    stop = time.perf_counter() + seconds
    counts = [0] * threads
    errors: list[BaseException] = []

    def caller(k: int) -> None:
        n = 0
        try:
            while time.perf_counter() < stop:
                call(k)
                n += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        counts[k] = n

    ts = [threading.Thread(target=caller, args=(k,), daemon=True) for k in range(threads)]
    cpu0 = sum(proc_cpu_seconds(p) for p in pids)
    start = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join(seconds + 60)
    elapsed = time.perf_counter() - start
    cpu = 100.0 * (sum(proc_cpu_seconds(p) for p in pids) - cpu0) / elapsed
    if errors:
        raise RuntimeError(f"{len(errors)} caller(s) failed; first: {type(errors[0]).__name__}: {errors[0]}")
    return sum(counts) / elapsed, cpu


def run_pipelined(submit: Callable[[Callable[[object], None]], None], in_flight: int, seconds: float,
                  pids: list[int]) -> tuple[float, float]:
    """(committed commands/s, CPU %) from one thread keeping ``in_flight`` commands
    outstanding: ``submit(done)`` sends one, and ``done(error_or_None)`` is called when
    it is committed and applied."""
    slots = threading.Semaphore(in_flight)
    finished = [0]
    errors: list[object] = []

    def done(err: object) -> None:
        if err is not None:
            errors.append(err)
        finished[0] += 1
        slots.release()

    cpu0 = sum(proc_cpu_seconds(p) for p in pids)
    start = time.perf_counter()
    stop = start + seconds
    while time.perf_counter() < stop:
        slots.acquire()
        submit(done)
    for _ in range(in_flight):  # the tail: every command sent is counted once it completes
        if not slots.acquire(timeout=60):
            raise RuntimeError("pipelined commands did not complete within 60 s")
    elapsed = time.perf_counter() - start
    cpu = 100.0 * (sum(proc_cpu_seconds(p) for p in pids) - cpu0) / elapsed
    if errors:
        raise RuntimeError(f"{len(errors)} pipelined command(s) failed; first: {errors[0]!r}")
    return finished[0] / elapsed, cpu


# -- ours -------------------------------------------------------------------------------------

def run_ours(directory: str, threads: list[int], seconds: float, failovers: int, *, fsync: str = "always",
             max_batch: int = MAX_BATCH, pipeline: int = 0, voters: int = 3, calls_in_flight: int = 1) -> dict:
    """{threads: (tx/s, CPU %), ("per_call", threads): commands per call, "failover": [s, ...]}"""
    out: dict = {}
    with LocalCluster(directory, voters, DOMAIN_ROOT, cwd=ROOT, fsync=fsync) as c:
        c.stable_leader()
        pids = [os.getpid()] + [p.pid for p in c.procs.values()]
        with c.client(max_batch=max_batch, calls_in_flight=calls_in_flight) as client:
            def call(k: int) -> None:
                client.execute(Add(f"k{k}", 1))
            run_threads(call, max(threads), 0.5, pids)  # warm-up: sessions, connection, journal files
            for t in threads:
                before = client.batching
                out[t] = run_threads(call, t, seconds, pids)
                after = client.batching
                out[("per_call", t)] = (after["commands"] - before["commands"]) / max(1, after["calls"] - before["calls"])
            if pipeline:
                def submit(done: Callable[[object], None]) -> None:
                    client.execute_async(Add("pipelined", 1)).add_done_callback(lambda f: done(f.exception()))
                out["pipelined"] = run_pipelined(submit, pipeline, seconds, pids)
            if failovers:
                out["failover"] = client_failover(c, client, failovers)
    return out


# -- PySyncObj ----------------------------------------------------------------------------------

class PsoCluster:
    """3 PySyncObj voter processes and a read-only node in this process."""

    def __init__(self, directory: str, batch: bool = True):
        from pso_counter import Counter, readonly_conf

        os.makedirs(directory, exist_ok=True)
        self.dir, self.batch = directory, batch
        base = free_port_block(3)
        self.addrs = [f"127.0.0.1:{base + k}" for k in range(3)]
        self.procs: dict[str, subprocess.Popen] = {}
        for a in self.addrs:
            self.start(a)
        self.obj = Counter(None, self.addrs, readonly_conf(batch))
        self.wait_ready()

    def start(self, addr: str) -> None:
        out = open(os.path.join(self.dir, addr.replace(":", "_") + ".log"), "ab")
        try:
            self.procs[addr] = subprocess.Popen(
                [sys.executable, os.path.join(HERE, "pso_counter.py"), addr,
                 *[a for a in self.addrs if a != addr], "--dir", self.dir, *([] if self.batch else ["--no-batch"])],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            out.close()

    def leader(self) -> str:
        return wait_for("a PySyncObj leader", lambda: (lambda n: n.id if n is not None else None)(self.obj._getLeader()),
                        15)

    def voter_status(self, addr: str) -> dict:
        from pysyncobj.utility import TcpUtility

        return TcpUtility(timeout=1.0).executeCommand(addr, ["status"])

    def wait_ready(self, timeout: float = 30.0) -> None:
        """A leader connected to every voter, each voter matching its commit index."""
        def check():
            leader = self.obj._getLeader()
            if leader is None:
                return False
            st = self.voter_status(leader.id)
            others = [a for a in self.addrs if a != leader.id]
            return (st["state"] == 2 and all(st.get(f"partner_node_status_server_{a}") == 2 for a in others)
                    and all(st.get(f"match_idx_server_{a}", -1) >= st["commit_idx"] for a in others))
        wait_for("PySyncObj's leader with every voter caught up", check, timeout, 0.1)
        self.obj.add("ready", 1, sync=True, timeout=10)

    def call_until_ok(self, key: str, deadline: float) -> None:
        from pysyncobj import SyncObjException

        while True:
            try:
                self.obj.add(key, 1, sync=True, timeout=0.5)
                return
            except SyncObjException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def failover(self, rounds: int) -> list[float]:
        out = []
        for _ in range(rounds):
            self.wait_ready()
            time.sleep(0.3)
            leader = self.leader()
            self.procs[leader].kill()
            self.procs[leader].wait(10)
            t = time.perf_counter()
            self.call_until_ok("failover", time.monotonic() + 30)  # no sessions: a retry may apply twice
            out.append(time.perf_counter() - t)
            self.start(leader)
        self.wait_ready()
        return out

    def stop(self) -> None:
        self.obj.destroy()
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def run_pysyncobj(directory: str, threads: list[int], seconds: float, failovers: int, *, batch: bool,
                  pipeline: int = 0) -> dict:
    out: dict = {}
    c = PsoCluster(directory, batch)
    try:
        pids = [os.getpid()] + [p.pid for p in c.procs.values()]

        def call(k: int) -> None:
            c.obj.add(f"k{k}", 1, sync=True, timeout=10)
        run_threads(call, max(threads), 0.5, pids)  # warm-up
        for t in threads:
            out[t] = run_threads(call, t, seconds, pids)
        if pipeline:
            from pysyncobj import FAIL_REASON

            def submit(done: Callable[[object], None]) -> None:  # its callback API: no waiting thread
                c.obj.add("pipelined", 1, callback=lambda _res, err: done(None if err == FAIL_REASON.SUCCESS else err))
            out["pipelined"] = run_pipelined(submit, pipeline, seconds, pids)
        if failovers:
            out["failover"] = c.failover(failovers)
    finally:
        c.stop()
    return out


#: (label, runner, options, thread counts: None = all of --threads, "top" = the largest only, failover?)
SYSTEMS = [
    ("ours, fsync=always", run_ours, {"pipeline": True}, None, True),
    ("ours, fsync=always, calls_in_flight=2 (unordered)", run_ours, {"pipeline": True, "calls_in_flight": 2}, "top",
     False),
    ("ours, fsync=always, max_batch=1 (no coalescing)", run_ours, {"max_batch": 1}, "top", False),
    ("ours, fsync=always, 9 voters", run_ours, {"voters": 9}, "top", False),
    ("ours, fsync=unsafe-no-fsync", run_ours, {"fsync": "unsafe-no-fsync"}, None, False),
    ("PySyncObj, appendEntriesUseBatch=False", run_pysyncobj, {"batch": False, "pipeline": True}, None, True),
    ("PySyncObj, its defaults (appendEntriesUseBatch=True)", run_pysyncobj, {"batch": True, "pipeline": True}, None,
     False),
]


# -- main ---------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per run (default 3)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; medians (default 3)")
    ap.add_argument("--threads", default="1,16", help="client thread counts (default 1,16)")
    ap.add_argument("--failovers", type=int, default=5, help="failover rounds per system (default 5; 0: none)")
    ap.add_argument("--pipeline", type=int, default=1000,
                    help="commands one thread keeps in flight (execute_async / PySyncObj's callbacks; 0: skip)")
    ap.add_argument("--dir", default=None, help="where the data goes (default: a temporary directory)")
    args = ap.parse_args()
    if not sys.platform.startswith("linux"):
        print("error: this benchmark uses SIGKILL and /proc: Linux only", file=sys.stderr)
        return 2
    if importlib.util.find_spec("pysyncobj") is None:
        print("error: PySyncObj is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    from pysyncobj.version import VERSION

    threads = [int(t) for t in args.threads.split(",") if t]
    base = tempfile.mkdtemp(prefix="tput-bench-", dir=args.dir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runs: dict[str, list[dict]] = {label: [] for label, *_ in SYSTEMS}
    counts = {label: ([max(threads)] if which == "top" else threads) for label, _f, _o, which, _fo in SYSTEMS}
    try:
        for r in range(args.repeat):
            for k, (label, fn, options, _which, failover) in enumerate(SYSTEMS):
                fo = args.failovers if failover and r == args.repeat - 1 else 0  # once, after the last runs
                opts = dict(options, pipeline=args.pipeline if options.get("pipeline") else 0)
                res = fn(os.path.join(base, f"{k}-{r}"), counts[label], args.seconds, fo, **opts)
                runs[label].append(res)
                log(f"run {r + 1}/{args.repeat} {label}: " + ", ".join(
                    f"{t} thread(s) {res[t][0]:,.0f} tx/s" for t in counts[label]))
    finally:
        shutil.rmtree(base, ignore_errors=True)

    def med(label: str, key, i: int = 0) -> float:
        return statistics.median(run[key][i] for run in runs[label])

    print(f"\npython {sys.version.split()[0]}, {os.cpu_count()} cpus, PySyncObj {VERSION}, "
          f"{args.seconds:g} s runs, median of {args.repeat}; committed tx/s (CPU % of one core, "
          f"client + 3 nodes)\n")
    rows = []
    for label, *_ in SYSTEMS:
        row = [label]
        for t in threads:
            if t not in counts[label]:
                row.append("-")
                continue
            cell = f"{med(label, t):,.0f} ({med(label, t, 1):.0f} %)"
            if ("per_call", t) in runs[label][0]:
                cell += f", {statistics.median(run[('per_call', t)] for run in runs[label]):.1f} per call"
            row.append(cell)
        rows.append(row)
    print(tabulate(rows, headers=["system"] + [f"{t} client thread{'s' if t > 1 else ''}" for t in threads],
                   tablefmt="github", disable_numparse=True))
    ours = SYSTEMS[0][0]
    nine = "ours, fsync=always, 9 voters"
    print(f"\n9 voters / 3 voters, ours at {max(threads)} threads: {med(nine, max(threads)) / med(ours, max(threads)):.2f}")
    piped = [label for label in runs if "pipelined" in runs[label][0]]
    if piped:
        print(f"\none thread, {args.pipeline:,} commands in flight (ours: execute_async; PySyncObj: callback=)\n")
        print(tabulate([[label, f"{med(label, 'pipelined'):,.0f} ({med(label, 'pipelined', 1):.0f} %)"]
                        for label in piped], headers=["system", "committed tx/s (CPU %)"], tablefmt="github",
                       disable_numparse=True))
        mine = [label for label in piped if label.startswith("ours")]
        for label in piped:
            for m in (mine if label not in mine else ()):
                print(f"{m} / {label}, pipelined: {med(m, 'pipelined') / med(label, 'pipelined'):.2f}x")
    print()
    for label, fn, *_ in SYSTEMS:
        if fn is run_pysyncobj:
            print(f"{ours} / {label}: " + ", ".join(
                f"{med(ours, t) / med(label, t):.2f}x at {t} thread{'s' if t > 1 else ''}" for t in threads))
    for label, *_ in SYSTEMS:
        print(f"runs, {label}: " + "; ".join(
            f"{t}: " + ", ".join(f"{run[t][0]:,.0f}" for run in runs[label]) for t in counts[label]))
    fo_rows = []
    for label, *_ in SYSTEMS:
        secs = runs[label][-1].get("failover")
        if secs:
            fo_rows.append([label, len(secs), f"{statistics.median(secs) * 1000:.0f} ms",
                            f"{max(secs) * 1000:.0f} ms", ", ".join(f"{s * 1000:.0f}" for s in secs)])
    if fo_rows:
        print("\nclient-observed failover: SIGKILL the leader -> the client's next command returns\n")
        print(tabulate(fo_rows, headers=["system", "rounds", "median", "max", "all (ms)"], tablefmt="github",
                       disable_numparse=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

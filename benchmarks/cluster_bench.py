"""Cluster benchmarks (issue 4): failover time, idle cost of a node, and committed
entries/s of 3 nodes with the submitter inside the leader process, next to the Raft
core's own ceiling and the single-process engine on the same disk.

    python3 benchmarks/cluster_bench.py [--quick] [--repeat 3] [--dir DIR]

Everything runs on 127.0.0.1 with the default timeouts (tick 0.025 s, election_ticks 10,
so an election timeout of 0.25-0.5 s) and fsync="always". Linux only: the idle figures
read /proc/<pid>/stat (utime+stime) and /proc/<pid>/status (VmRSS), and node processes
are tied to this one with PR_SET_PDEATHSIG so that none outlives it.

1. Failover: 3 node processes; SIGKILL the leader, time until a client that tries every
   node (following not-leader hints, short timeouts) gets its first transaction
   committed by a new leader; restart the killed node, wait until it has caught up,
   repeat (--failovers, default 15; --quick 5). Median, p90, max.
2. Idle: the same fresh cluster, leader elected, no traffic: CPU (% of one core) and RSS
   of each node process over --idle-seconds windows (median of --repeat windows).
3. Throughput: n1 runs in this process (rpc.server.NodeProcess), n2 and n3 as
   processes; n1 is made leader, then 1, 8 and 32 threads call ``node.execute(Add)``
   for --seconds each (median of --repeat runs). Next to it: the Raft core's ceiling
   (benchmarks/raft_core_bench.py, in-memory, zero delay) at the same batch sizes, and
   the engine alone (benchmarks/engine_bench.py) with the same writers on the same disk.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]

import msgpack  # noqa: E402

from prevalence.codec import CODEC  # noqa: E402
from prevalence.errors import PrevalenceError  # noqa: E402
from rpc.localcluster import LocalCluster, wait_for  # noqa: E402
from rpc.transport import open_connection  # noqa: E402
from tests.prevalence.domain import Add  # noqa: E402

DOMAIN_ROOT = "tests.prevalence.domain:Store"
TIMEOUTS = dict(tick=0.025, election_ticks=10, heartbeat_ticks=5, fsync="always")  # the node defaults
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class BenchError(Exception):
    """A step failed; the message says which and why."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def proc_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process (utime, stime: fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_cpu_seconds(pid: int) -> float:
    return sum(proc_times(pid))


def proc_sched_seconds(pid: int) -> float:
    """CPU time from /proc/<pid>/schedstat (scheduler run time in ns, not tick-sampled)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total / 1e9


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    raise BenchError(f"no VmRSS for pid {pid}")


def new_cluster(directory: str) -> LocalCluster:
    """3 nodes with the benchmark's timeouts, none started yet; they run in the repository."""
    return LocalCluster(directory, 3, DOMAIN_ROOT, cwd=ROOT, start=False, **TIMEOUTS)


class FailoverClient:
    """Keeps one connection per node; sends to whoever it thinks leads, follows hints."""

    def __init__(self, cluster: LocalCluster, request_timeout: float = 1.0):
        self.c = cluster
        self.ids = list(cluster.configs)
        self.conns: dict[str, Any] = {}
        self.request_timeout = request_timeout
        self.target: str | None = None
        self.k = 0

    def _conn(self, nid: str):
        conn = self.conns.get(nid)
        if conn is None:
            conn = open_connection(self.c.configs[nid].listen, self.c.secret, role="client", ident="bench",
                                   connect_timeout=0.2, handshake_timeout=0.5,
                                   request_timeout=self.request_timeout)
            self.conns[nid] = conn
        return conn

    def _drop(self, nid: str) -> None:
        conn = self.conns.pop(nid, None)
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass

    def connect_all(self) -> None:
        for nid in self.ids:
            try:
                self._conn(nid)
            except Exception:  # noqa: BLE001 - tried again when needed
                self._drop(nid)

    def execute(self, tx: Any, deadline: float) -> tuple[Any, str, int]:
        """(result, node that committed it, attempts); TimeoutError past ``deadline``."""
        attempts = 0
        while time.monotonic() < deadline:
            if self.target is None:
                self.target = self.ids[self.k % len(self.ids)]
                self.k += 1
            nid = self.target
            attempts += 1
            try:
                reply = msgpack.unpackb(self._conn(nid).root.execute(CODEC.dumps(tx)), raw=False)
            except Exception:  # noqa: BLE001 - dead node, refused, timed out: try the next one
                self._drop(nid)
                self.target = None
                time.sleep(0.005)
                continue
            if reply[0] == "ok":
                return reply[1], nid, attempts
            if reply[0] == "not_leader":
                hint = reply[1]
                self.target = hint if hint in self.ids and hint != nid else None
                time.sleep(0.01)
                continue
            if reply[0] in ("error", "unavailable"):  # e.g. no quorum in time during an election
                self.target = None
                time.sleep(0.01)
                continue
            raise BenchError(f"unexpected reply from {nid}: {reply}")
        raise TimeoutError("no leader committed the transaction in time")

    def close(self) -> None:
        for nid in list(self.conns):
            self._drop(nid)


def pct(values: list[float], q: float) -> float:
    """The q-quantile by linear interpolation (q=0.9 -> p90)."""
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# -- 2. idle -------------------------------------------------------------------------------

def bench_idle(cluster: LocalCluster, seconds: float, windows: int) -> dict[str, dict]:
    leader, _st = cluster.stable_leader()
    time.sleep(1.0)  # let connection setup and the first heartbeats settle
    per_node: dict[str, dict[str, list]] = {nid: {"cpu": [], "sched": [], "rss": []} for nid in cluster.procs}
    roles: dict[str, str] = {}
    for w in range(windows):
        pids = {nid: p.pid for nid, p in cluster.procs.items()}
        t0 = time.monotonic()
        c0 = {nid: proc_cpu_seconds(pid) for nid, pid in pids.items()}
        s0 = {nid: proc_sched_seconds(pid) for nid, pid in pids.items()}
        time.sleep(seconds)  # nothing from us meanwhile: no status polling, no traffic
        t1 = time.monotonic()
        c1 = {nid: proc_cpu_seconds(pid) for nid, pid in pids.items()}
        s1 = {nid: proc_sched_seconds(pid) for nid, pid in pids.items()}
        cluster.check_alive()
        for nid, pid in pids.items():
            per_node[nid]["cpu"].append(100.0 * (c1[nid] - c0[nid]) / (t1 - t0))
            per_node[nid]["sched"].append(100.0 * (s1[nid] - s0[nid]) / (t1 - t0))
            per_node[nid]["rss"].append(proc_rss_mb(pid))
        st = cluster.status()
        now_leader = [n for n, r in st.items() if r["role"] == "leader"]
        if now_leader != [leader]:
            raise BenchError(f"leadership changed while idle: {leader} -> {now_leader}")
        log(f"idle window {w + 1}/{windows}: " + ", ".join(
            f"{nid}{'*' if nid == leader else ''} {per_node[nid]['cpu'][-1]:.2f}% {per_node[nid]['rss'][-1]:.1f} MB"
            for nid in pids))
    out = {}
    for nid, d in per_node.items():
        roles[nid] = "leader" if nid == leader else "follower"
        out[nid] = dict(role=roles[nid], cpu=statistics.median(d["cpu"]), sched=statistics.median(d["sched"]),
                        rss=max(d["rss"]), cpus=d["cpu"])
    return out


# -- 1. failover ---------------------------------------------------------------------------

def bench_failover(cluster: LocalCluster, rounds: int) -> list[dict]:
    client = FailoverClient(cluster, request_timeout=0.5)
    results = []
    try:
        for r in range(rounds):
            leader, st = cluster.stable_leader(timeout=30)
            client.connect_all()
            client.target = leader
            client.execute(Add("failover", 1), time.monotonic() + 5)  # the leader works, connections warm
            time.sleep(random.uniform(0.3, 0.6))  # kill at a random phase of the heartbeat
            pid = cluster.procs[leader].pid
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            try:
                _res, new, attempts = client.execute(Add("failover", 1), t0 + 15)
            except TimeoutError:
                raise BenchError(f"round {r + 1}: no transaction committed within 15 s of killing {leader}") from None
            elapsed = time.monotonic() - t0
            if new == leader:
                raise BenchError(f"round {r + 1}: the killed leader {leader} answered?")
            cluster.procs[leader].wait(10)
            results.append(dict(killed=leader, new=new, seconds=elapsed, attempts=attempts))
            log(f"failover {r + 1}/{rounds}: killed {leader}, {new} committed after {elapsed * 1000:.0f} ms "
                f"({attempts} attempts)")
            cluster.start(leader)
            cluster.stable_leader(timeout=30)  # restarted node reachable and caught up
    finally:
        client.close()
    return results


# -- 3. throughput -------------------------------------------------------------------------

def run_writers(node, threads: int, seconds: float) -> tuple[float, float]:
    """(committed tx/s, mean seconds per transaction for one writer)."""
    stop = time.perf_counter() + seconds
    counts = [0] * threads
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        tx = Add(f"k{k}", 1)
        n = 0
        try:
            while time.perf_counter() < stop:
                node.execute(tx, timeout=10.0)
                n += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        counts[k] = n

    ts = [threading.Thread(target=writer, args=(k,), daemon=True) for k in range(threads)]
    start = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join(seconds + 30)
        if t.is_alive():
            raise BenchError(f"a writer thread is still running {seconds + 30:g} s after its deadline")
    elapsed = time.perf_counter() - start
    if errors:
        raise BenchError(f"{len(errors)} writer(s) failed; first: {type(errors[0]).__name__}: {errors[0]}")
    total = sum(counts)
    return total / elapsed, (elapsed * threads / total if total else float("inf"))


def transfer_over_rpc(cluster: LocalCluster, leader: str, to: str) -> bool:
    """Ask ``leader`` (a node process) to hand leadership to ``to``; False if it cannot."""
    try:
        conn = open_connection(cluster.configs[leader].listen, cluster.admin_key, role="admin", ident="bench",
                               connect_timeout=0.5, handshake_timeout=1.0, request_timeout=10.0)
        try:
            reply = msgpack.unpackb(conn.root.transfer_leadership(to), raw=False)
        finally:
            conn.close()
    except Exception as exc:  # noqa: BLE001 - e.g. a node version without the maintenance call
        log(f"transfer_leadership over RPC to {leader} failed: {type(exc).__name__}: {exc}")
        return False
    if reply[0] != "ok":
        log(f"transfer_leadership {leader} -> {to}: {reply}")
        return False
    return True


def bench_throughput(directory: str, thread_counts: list[int], seconds: float, repeat: int) -> dict:
    from rpc.server import NodeProcess

    for name in ("rpc", "replication", "prevalence"):
        logging.getLogger(name).setLevel(logging.WARNING)
    cluster = new_cluster(directory)
    process = None
    try:
        process = NodeProcess(cluster.configs["n1"]).start()  # n1 first: it is campaigning when peers come up
        cluster.start("n2")
        cluster.start("n3")
        node = process.node

        def leader_known():
            cluster.check_alive()
            return node.status()["leader"]
        for attempt in range(10):
            leader = wait_for("a leader", leader_known, 20)
            if leader == "n1":
                break
            if transfer_over_rpc(cluster, leader, "n1"):
                try:
                    wait_for("n1 to take over", lambda: node.is_leader, 5)
                    break
                except BenchError as exc:
                    log(f"leadership transfer {leader} -> n1 did not complete: {exc}")
            # No transfer over RPC (or it failed): kill the leader; n1 or the other node wins.
            log(f"{leader} won the election; killing and restarting it so that n1 can lead (attempt {attempt + 1})")
            cluster.kill(leader)
            wait_for("a new leader", lambda: leader_known() not in (None, leader), 20)
            cluster.start(leader)
        else:
            raise BenchError("n1 did not become leader in 10 attempts")
        if not node.is_leader:
            raise BenchError("n1 lost leadership before the run")
        wait_for("n1's followers to be reachable and caught up",
                 lambda: all(r["reachable"] and r["applied_index"] >= node.status()["commit_index"]
                             for r in cluster.status().values()), 20)
        run_writers(node, 8, 0.5)  # warm-up: connections, code paths, journal files
        out: dict[int, dict] = {}
        for threads in thread_counts:
            rates, lats, cpu = [], [], {"n1": [], "n2": [], "n3": []}
            for _ in range(repeat):
                pids = {"n1": os.getpid(), "n2": cluster.procs["n2"].pid, "n3": cluster.procs["n3"].pid}
                c0 = {k: proc_cpu_seconds(p) for k, p in pids.items()}
                t0 = time.monotonic()
                rate, lat = run_writers(node, threads, seconds)
                t1 = time.monotonic()
                c1 = {k: proc_cpu_seconds(p) for k, p in pids.items()}
                cluster.check_alive()
                if not node.is_leader:
                    raise BenchError("n1 lost leadership during the run")
                rates.append(rate)
                lats.append(lat)
                for k in pids:
                    cpu[k].append(100.0 * (c1[k] - c0[k]) / (t1 - t0))
            out[threads] = dict(rate=statistics.median(rates), rates=rates, latency=statistics.median(lats),
                                cpu={k: statistics.median(v) for k, v in cpu.items()})
            log(f"throughput, {threads} thread(s): {out[threads]['rate']:,.0f} tx/s (runs: "
                + ", ".join(f"{r:,.0f}" for r in rates) + "); CPU % of a core: "
                + ", ".join(f"{k} {v:.0f}" for k, v in out[threads]["cpu"].items()))
        return out
    finally:
        if process is not None:
            try:
                process.node.stop(transfer=False, timeout=1.0)
                if process.server is not None:
                    process.server.close()
                process.transport.close()
            except Exception as exc:  # noqa: BLE001 - cleaning up
                log(f"stopping in-process n1: {exc}")
        cluster.stop()


def core_ceiling(batches: list[int], repeat: int, quick: bool) -> dict[int, float]:
    from raft_core_bench import cluster_run

    out = {}
    for batch in batches:
        n = (2_000 if quick else 5_000) * min(batch, 16)
        out[batch] = statistics.median(cluster_run(n, batch, 100, seed=r)[0] for r in range(repeat))
    return out


def engine_reference(directory: str, thread_counts: list[int], seconds: float, repeat: int) -> dict[int, float]:
    from engine_bench import durable_rate

    return {t: statistics.median(durable_rate(directory, t, seconds) for _ in range(repeat)) for t in thread_counts}


# -- main ----------------------------------------------------------------------------------

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer failovers, shorter windows and runs")
    p.add_argument("--repeat", type=int, default=3, help="runs (idle windows) per figure; medians")
    p.add_argument("--failovers", type=int, default=None, help="failover rounds (default 15, --quick 5)")
    p.add_argument("--idle-seconds", type=float, default=None, help="idle window (default 10 s, --quick 5 s)")
    p.add_argument("--seconds", type=float, default=None, help="seconds per throughput run (default 3, --quick 1)")
    p.add_argument("--threads", default="1,8,32", help="writer thread counts (default 1,8,32)")
    p.add_argument("--dir", default=None, help="where the nodes' data goes (default: a temporary directory)")
    p.add_argument("--skip", default="", help="comma list of steps to skip: failover,idle,throughput,core,engine")
    p.add_argument("--keep", action="store_true", help="keep the data directory (node logs) afterwards")
    p.add_argument("--heartbeat-ticks", type=int, default=5,
                   help="heartbeat every N ticks (default 5, the node default)")
    args = p.parse_args()
    if not sys.platform.startswith("linux"):
        print("error: this benchmark reads /proc and uses SIGKILL: Linux only", file=sys.stderr)
        return 2
    rounds = args.failovers or (5 if args.quick else 15)
    idle_s = args.idle_seconds or (5.0 if args.quick else 10.0)
    seconds = args.seconds or (1.0 if args.quick else 3.0)
    repeat = max(1, 1 if args.quick and args.repeat == 3 else args.repeat)
    threads = [int(t) for t in args.threads.split(",") if t]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    TIMEOUTS["heartbeat_ticks"] = args.heartbeat_ticks

    def on_signal(signum, frame):  # noqa: ARG001 - run the finally blocks, then exit
        raise SystemExit(f"interrupted by signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)

    try:
        base = tempfile.mkdtemp(prefix="cluster-bench-", dir=args.dir)
    except OSError as exc:
        print(f"error: cannot create a data directory under {args.dir or tempfile.gettempdir()}: {exc}", file=sys.stderr)
        return 1
    step = "setup"
    try:
        print(f"python {sys.version.split()[0]}, {sys.platform}, {os.cpu_count()} cpus, 3 nodes on 127.0.0.1, "
              f"tick {TIMEOUTS['tick']} s, election_ticks {TIMEOUTS['election_ticks']}, "
              f"heartbeat_ticks {TIMEOUTS['heartbeat_ticks']}, fsync={TIMEOUTS['fsync']}, "
              f"data in {base}", flush=True)
        if not {"idle", "failover"} <= skip:
            step = "starting a 3-process cluster"
            cluster = new_cluster(os.path.join(base, "procs"))
            try:
                for nid in cluster.configs:
                    cluster.start(nid)
                cluster.stable_leader(timeout=30)
                if "idle" not in skip:
                    step = "idle"
                    idle = bench_idle(cluster, idle_s, repeat)
                    print(f"\nidle, {idle_s:g} s windows, median CPU of {repeat} window(s), % of one core "
                          f"(/proc utime+stime), RSS (VmRSS):")
                    for nid, d in sorted(idle.items(), key=lambda kv: kv[1]["role"] != "leader"):
                        print(f"  {nid} {d['role']:<8}  CPU {d['cpu']:5.2f}%  (windows: "
                              f"{', '.join(f'{c:.2f}' for c in d['cpus'])}; schedstat {d['sched']:.2f}%)   "
                              f"RSS {d['rss']:5.1f} MB (max)")
                    sys.stdout.flush()
                if "failover" not in skip:
                    step = "failover"
                    fo = bench_failover(cluster, rounds)
                    secs = [r["seconds"] for r in fo]
                    print(f"\nfailover, SIGKILL the leader -> first commit on a new leader, {rounds} rounds:")
                    print(f"  median {statistics.median(secs) * 1000:.0f} ms   p90 {pct(secs, 0.9) * 1000:.0f} ms   "
                          f"max {max(secs) * 1000:.0f} ms   min {min(secs) * 1000:.0f} ms")
                    print(f"  all (ms): {', '.join(f'{s * 1000:.0f}' for s in secs)}", flush=True)
            finally:
                cluster.stop()
        if "throughput" not in skip:
            step = "throughput"
            tp = bench_throughput(os.path.join(base, "inproc"), threads, seconds, repeat)
        if "core" not in skip:
            step = "core ceiling (raft_core_bench.cluster_run)"
            core = core_ceiling(sorted(set([1] + threads)), repeat, args.quick)
        if "engine" not in skip:
            step = "engine reference (engine_bench.durable_rate)"
            eng = engine_reference(base, threads, seconds, repeat)
        if "throughput" not in skip:
            print(f"\ncommitted tx/s, 3 nodes, writers are threads in the leader's process calling "
                  f"node.execute(Add), {seconds:g} s runs, median of {repeat}:")
            print(f"  {'writers':>7}  {'cluster':>10}  {'per tx':>9}  {'core ceiling':>12}  {'cluster/core':>12}  "
                  f"{'engine alone':>12}  CPU % of a core (n1 leader+writers, n2, n3)")
            for t in threads:
                d = tp[t]
                c = core.get(t) if "core" not in skip else None
                e = eng.get(t) if "engine" not in skip else None
                rate = d["rate"]
                core_s = f"{c:,.0f}" if c else "-"
                ratio_s = f"{rate / c:.1%}" if c else "-"
                eng_s = f"{e:,.0f}" if e else "-"
                print(f"  {t:>7}  {rate:>10,.0f}  {d['latency'] * 1000:>7.2f}ms  {core_s:>12}  {ratio_s:>12}  "
                      f"{eng_s:>12}  " + " / ".join(f"{v:.0f}" for v in d["cpu"].values()))
            print("  core ceiling: benchmarks/raft_core_bench.py cluster_run (in memory, zero delay, no codec, "
                  "no disk) at a batch equal to the writer count; engine alone: benchmarks/engine_bench.py "
                  "durable_rate (fsync=always, same disk, same writers)", flush=True)
        return 0
    except (BenchError, PrevalenceError) as exc:
        print(f"\nerror: {step}: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit) as exc:
        print(f"\nerror: {step}: {exc or 'interrupted'}", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - an unexpected failure still names the step
        import traceback

        traceback.print_exc()
        print(f"\nerror: {step}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

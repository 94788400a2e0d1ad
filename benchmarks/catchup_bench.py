"""Catch-up benchmark (issue 14, item 6): a follower that fell N entries behind comes
back; does the leader keep committing while it catches the follower up by log entries?

    python3 benchmarks/catchup_bench.py [--fault netns|stop|restart] [--behind 20000] [--runs 3]

Three node processes (node default timeouts: tick 25 ms, election timeout 250-500 ms,
heartbeat 125 ms; fsync="always"; automatic snapshots off, so catch-up goes by log
entries). One client thread writes one command at a time throughout. The follower n2 is
cut off, 32 more client threads write until the leader's commit is ``--behind`` entries
past n2, then n2 is let back in; the run ends 0.5 s after n2 has applied them all.

Faults: ``netns`` (Linux, root: n2 runs in a network namespace joined by a veth pair, and
is cut off by blackhole routes on both sides: packets vanish, TCP retransmits on heal,
as with a pulled cable), ``stop`` (SIGSTOP/SIGCONT of n2) or ``restart`` (SIGKILL, then a
new process: a rebooted PC).

Reported per run: leader changes (elections: how far the term moved), the longest
commit stall (the longest time without an acknowledgement of the one-at-a-time writer,
from n2's return to the end of the run), the same figure over an equally long window
(at most 3 s) just before the fault (the machine's noise floor), and how long n2 took to
apply the backlog.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]

from prevalence._platform import child_dies_with_parent  # noqa: E402
from rpc.cluster import start_node  # noqa: E402
from rpc.config import load_config, render_config  # noqa: E402
from rpc.localcluster import LocalCluster, wait_for  # noqa: E402
from rpc.transport import NodeLink  # noqa: E402
from tests.prevalence.domain import Add  # noqa: E402

DOMAIN_ROOT = "tests.prevalence.domain:Store"
TIMEOUTS = dict(tick=0.025, election_ticks=10, heartbeat_ticks=5, fsync="always")  # the node defaults
VICTIM = "n2"
NS, VETH_HOST, VETH_NS = "cu-catchup", "cu-catchup-h", "cu-catchup-n"
HOST_IP, NS_IP = "10.231.7.1", "10.231.7.2"
CLONE_NEWNET = 0x40000000


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(cmd: str, check: bool = True) -> None:
    r = subprocess.run(cmd, shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"{cmd}: {r.stderr.strip() or f'exit code {r.returncode}'}")


class Netns:
    """n2's own network namespace, joined to the host by a veth pair; ``cut`` drops every
    packet between them silently (blackhole routes on both sides)."""

    def __enter__(self) -> "Netns":
        self.close()
        sh(f"ip netns add {NS}")
        sh(f"ip link add {VETH_HOST} type veth peer name {VETH_NS}")
        sh(f"ip link set {VETH_NS} netns {NS}")
        sh(f"ip addr add {HOST_IP}/24 dev {VETH_HOST} && ip link set {VETH_HOST} up")
        sh(f"ip netns exec {NS} sh -c 'ip addr add {NS_IP}/24 dev {VETH_NS} && ip link set {VETH_NS} up"
           f" && ip link set lo up'")
        return self

    def cut(self, on: bool) -> None:
        op = "add" if on else "del"
        sh(f"ip route {op} blackhole {NS_IP}/32")
        sh(f"ip netns exec {NS} ip route {op} blackhole {HOST_IP}/32")

    def close(self) -> None:
        sh(f"ip route del blackhole {NS_IP}/32", check=False)
        sh(f"ip link del {VETH_HOST}", check=False)
        sh(f"ip netns del {NS}", check=False)

    def __exit__(self, *exc: object) -> None:
        self.close()


def enter_netns_hook():
    """A preexec_fn: die with this process, and run in n2's namespace."""
    die = child_dies_with_parent()

    def hook() -> None:
        if die is not None:
            die()
        fd = os.open(f"/var/run/netns/{NS}", os.O_RDONLY)
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            os._exit(97)
        os.close(fd)

    return hook


class Cluster(LocalCluster):
    """The three nodes; with ``netns``, n1 and n3 on the host side of the veth, n2 in the
    namespace."""

    def __init__(self, directory: str, netns: Netns | None):
        super().__init__(directory, 3, DOMAIN_ROOT, cwd=ROOT, start=False, snapshot_every=0, **TIMEOUTS)
        self.netns = netns
        if netns is not None:
            addrs = {nid: (NS_IP if nid == VICTIM else HOST_IP, cfg.listen[1]) for nid, cfg in self.configs.items()}
            for cfg in self.configs.values():
                cfg.listen = addrs[cfg.id]
                cfg.peers = dict(addrs)
                text = render_config(cfg).replace(f'data = "{cfg.data}"', f'data = "{os.path.basename(cfg.data)}"')
                with open(cfg.path, "w", encoding="utf-8") as f:
                    f.write(text)
            self.configs = {nid: load_config(cfg.path) for nid, cfg in self.configs.items()}

    def start(self, nid: str) -> None:
        if self.netns is None or nid != VICTIM:
            return super().start(nid)
        self.procs[nid] = start_node(self.configs[nid].path, os.path.join(self.dir, f"{nid}.log"), cwd=self.cwd,
                                     preexec_fn=enter_netns_hook())


class Poller:
    """The status of one node every ``interval`` s, on its own kept-open connection."""

    def __init__(self, cluster: Cluster, nid: str, interval: float = 0.02):
        self.link = NodeLink(cluster.configs[nid].listen, cluster.secret, ident="bench", timeout=1.0)
        self.interval = interval
        self.samples: list[tuple[float, dict]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reply = self.link.call("status")
                if reply[0] == "ok":
                    self.samples.append((time.monotonic(), reply[1]))
            except Exception:  # noqa: BLE001 - unreachable for a moment: try again
                pass
            self._stop.wait(self.interval)

    def latest(self) -> dict | None:
        return self.samples[-1][1] if self.samples else None

    def start(self) -> "Poller":
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join()
        self.link.close()


class OneAtATime:
    """One thread writing one command at a time; the acknowledgement times."""

    def __init__(self, client):
        self.client = client
        self.acks: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.client.execute(Add("probe", 1), timeout=10.0)
                self.acks.append(time.monotonic())
            except Exception:  # noqa: BLE001 - counted; the gap shows in the figures
                self.errors += 1

    def start(self) -> "OneAtATime":
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join()

    def longest_gap(self, t0: float, t1: float) -> float:
        """Longest time in [t0, t1] without an acknowledgement."""
        times = [t0] + [t for t in self.acks if t0 < t <= t1] + [t1]
        return max(b - a for a, b in zip(times, times[1:]))


def bulk_write(client, until, threads: int = 32) -> int:
    """``threads`` writers until ``until()`` is true; the commands acknowledged."""
    done = threading.Event()
    counts = [0] * threads

    def run(k: int) -> None:
        while not done.is_set():
            try:
                client.execute(Add(f"k{k}", 1), timeout=10.0)
                counts[k] += 1
            except Exception:  # noqa: BLE001
                time.sleep(0.01)

    ts = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(threads)]
    for t in ts:
        t.start()
    try:
        wait_for("the backlog", until, 300, 0.05)
    finally:
        done.set()
        for t in ts:
            t.join()
    return sum(counts)


def one_run(directory: str, fault: str, behind: int, netns: Netns | None) -> dict:
    c = Cluster(directory, netns)
    try:
        others = [n for n in c.configs if n != VICTIM]
        for nid in others:
            c.start(nid)
        leader = c.leader()
        c.start(VICTIM)
        leader, st = c.stable_leader(30)
        if leader == VICTIM:
            raise SystemExit("n2 was elected; run again")
        term0 = st[leader]["term"]
        with c.client() as client:
            for _ in range(200):
                client.execute(Add("warm", 1))
            lp = Poller(c, leader).start()
            probe = OneAtATime(client).start()
            time.sleep(3.0)
            base_t1 = time.monotonic()

            # the fault
            with NodeLink(c.configs[VICTIM].listen, c.secret, ident="bench", timeout=1.0) as link:
                victim_at = link.call("status")[1]["last_index"]
            if netns is not None:
                netns.cut(True)
            elif fault == "stop":
                c.kill(VICTIM, signal.SIGSTOP)
            else:
                c.kill(VICTIM)
            cut_at = time.monotonic()
            target = victim_at + behind
            wrote = bulk_write(client, lambda: (lp.latest() or {}).get("commit_index", 0) >= target)
            down_for = time.monotonic() - cut_at
            commit_at_heal = lp.latest()["commit_index"]

            # the return
            heal_at = time.monotonic()
            if netns is not None:
                netns.cut(False)
            elif fault == "stop":
                c.kill(VICTIM, signal.SIGCONT)
            else:
                c.start(VICTIM)
            vlink = NodeLink(c.configs[VICTIM].listen, c.secret, ident="bench", timeout=1.0)

            def caught_up():
                c.check_alive()
                r = vlink.call("status")
                return r[0] == "ok" and r[1]["applied_index"] >= commit_at_heal

            try:
                wait_for("the follower to catch up", caught_up, 120, 0.02)
            finally:
                vlink.close()
            caught_at = time.monotonic()
            time.sleep(0.5)
            probe.stop()
            lp.stop()
            end_at = time.monotonic()
        st = c.status()
        new_leader = [n for n, r in st.items() if r["role"] == "leader"]
        window = end_at - heal_at
        return {
            "behind": commit_at_heal - victim_at,
            "down_s": down_for,
            "wrote": wrote,
            "leader_changes": max(st[n]["term"] for n in st) - term0,
            "same_leader": new_leader == [leader],
            "stall_ms": 1000 * probe.longest_gap(heal_at, end_at),
            "baseline_ms": 1000 * probe.longest_gap(max(base_t1 - window, probe.acks[0]), base_t1),
            "catchup_s": caught_at - heal_at,
            "probe_errors": probe.errors,
        }
    finally:
        c.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fault", choices=("netns", "stop", "restart"), default="netns")
    ap.add_argument("--behind", type=int, default=20_000, help="entries the follower falls behind (default 20000)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", help="where the nodes' data goes (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the data directories (node logs)")
    args = ap.parse_args()
    if args.fault == "netns" and (not sys.platform.startswith("linux") or os.geteuid() != 0):
        ap.error("--fault netns needs Linux and root (ip netns); try --fault restart")
    base = args.dir or tempfile.mkdtemp(prefix="catchup-bench-")
    results = []
    try:
        for k in range(args.runs):
            d = os.path.join(base, f"run{k}")
            if args.fault == "netns":
                with Netns() as ns:
                    r = one_run(d, args.fault, args.behind, ns)
            else:
                r = one_run(d, args.fault, args.behind, None)
            results.append(r)
            log(f"run {k}: " + ", ".join(f"{key}={v:.3f}" if isinstance(v, float) else f"{key}={v}"
                                          for key, v in r.items()))
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(base, ignore_errors=True)
        elif args.keep:
            log(f"data kept in {base}")
    med = {key: statistics.median(r[key] for r in results)
           for key in ("behind", "leader_changes", "stall_ms", "baseline_ms", "catchup_s")}
    print(f"fault={args.fault} runs={len(results)} medians: behind {med['behind']:.0f} entries, "
          f"leader changes {med['leader_changes']:g} (per run: {[r['leader_changes'] for r in results]}), "
          f"longest write stall {med['stall_ms']:.0f} ms (per run: {[round(r['stall_ms']) for r in results]}; "
          f"before the fault {med['baseline_ms']:.0f} ms), catch-up {med['catchup_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

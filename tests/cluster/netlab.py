"""Nodes in network namespaces of their own, joined by a wire we control: real processes,
real kernel TCP, real faults (delay, jitter, loss, reordering, duplication, corruption,
rate limits, one-way and full cuts without a reset, flapping links).

Each node runs in namespace ``nf-<tag>-<id>`` behind a TUN device; the test process's
namespace has one more TUN (the clients' side, address .1). A router thread here moves
every IP packet from one TUN to another and applies the directed link's :class:`Link`
faults on the way, as tc netem would (this machine's kernel has no netem). A cut link
drops silently (no RST, no ICMP), like a blackhole route.

Needs Linux, root, ``ip netns`` and /dev/net/tun: :func:`unavailable` says why not.
"""
from __future__ import annotations

import fcntl
import heapq
import os
import random
import select
import shutil
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from prevalence._platform import child_dies_with_parent
from replication.journal_storage import create_node_data, new_cluster_id
from rpc import localcluster
from rpc.cluster import write_keys
from rpc.config import NodeConfig, load_config, render_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEST_ROOT = "tests.prevalence.domain:Store"
PORT = 7100
CLIENT = "c"  # the test process's side of the wire

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000


def unavailable() -> str | None:
    """Why this machine cannot run the lab (None when it can)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    probe = f"nf-probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode:
        return f"`ip netns add` fails: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(list(args), capture_output=True, text=True)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r


def _free_subnet(first: int) -> int:
    """A 10.77.X.0/24 that no interface of this namespace uses yet (another lab's)."""
    used = sh("ip", "-4", "-o", "addr", "show").stdout
    for k in range(230):
        x = 20 + (first - 20 + k) % 230
        if f" 10.77.{x}." not in used:
            return x
    raise RuntimeError("no free 10.77.X.0/24 for a network lab")


@dataclass
class Link:
    """The faults of one direction of one link (probabilities 0..1, times in seconds)."""
    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0    # this share of packets is held back by 2 x delay + 10 ms more
    corrupt: float = 0.0    # one byte of the TCP payload flipped ...
    fix_checksum: bool = False  # ... and the TCP checksum made right again (a broken middlebox)
    rate: float = 0.0       # bytes per second (0: unlimited); 1 s of queue at most, then tail drop
    cut: bool = False


def _tcp_checksum(pkt: bytearray, ihl: int) -> None:
    src, dst = bytes(pkt[12:16]), bytes(pkt[16:20])
    seg = pkt[ihl:]
    seg[16:18] = b"\0\0"
    data = src + dst + struct.pack("!BBH", 0, 6, len(seg)) + bytes(seg)
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    pkt[ihl + 16:ihl + 18] = struct.pack("!H", ~s & 0xFFFF)


class Wire:
    """The router thread between the TUNs."""

    def __init__(self, seed: int | None = None) -> None:
        self.fds: dict[str, int] = {}    # end name -> TUN fd
        self.by_ip: dict[bytes, str] = {}
        self.links: dict[tuple[str, str], Link] = {}
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.heap: list[tuple[float, int, int, bytes]] = []
        self.next_free: dict[tuple[str, str], float] = {}
        self.seq = 0
        self.counts = {"forwarded": 0, "dropped": 0, "corrupted": 0, "duplicated": 0}
        self.stopping = False
        self.rpipe, self.wpipe = os.pipe()
        self.thread = threading.Thread(target=self._run, daemon=True, name="netlab-wire")

    def open_tun(self, name: str, end: str, ip: str) -> None:
        fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        os.set_blocking(fd, False)
        self.fds[end] = fd
        self.by_ip[bytes(int(x) for x in ip.split("."))] = end

    def link(self, src: str, dst: str) -> Link:
        return self.links.setdefault((src, dst), Link())

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping = True
        os.write(self.wpipe, b"x")
        self.thread.join(5)
        for fd in (*self.fds.values(), self.rpipe, self.wpipe):
            os.close(fd)
        self.fds.clear()

    def _route(self, src: str, pkt: bytes, now: float) -> None:
        if len(pkt) < 20 or pkt[0] >> 4 != 4:
            return
        dst = self.by_ip.get(bytes(pkt[16:20]))
        if dst is None or dst == src:
            return
        with self.lock:
            ln = self.links.get((src, dst)) or Link()
        r = self.rng
        if ln.cut or (ln.loss and r.random() < ln.loss):
            self.counts["dropped"] += 1
            return
        ihl = (pkt[0] & 0xF) * 4
        if ln.corrupt and pkt[9] == 6 and r.random() < ln.corrupt:
            doff = (pkt[ihl + 12] >> 4) * 4 if len(pkt) > ihl + 12 else 0
            if len(pkt) > ihl + doff:
                b = bytearray(pkt)
                k = r.randrange(ihl + doff, len(b))
                b[k] ^= 1 << r.randrange(8)
                if ln.fix_checksum:
                    _tcp_checksum(b, ihl)
                pkt = bytes(b)
                self.counts["corrupted"] += 1
        at = now
        if ln.rate:
            start = max(now, self.next_free.get((src, dst), now))
            if start - now > 1.0:
                self.counts["dropped"] += 1
                return
            self.next_free[(src, dst)] = start + len(pkt) / ln.rate
            at = start + len(pkt) / ln.rate
        at += ln.delay + (r.uniform(-ln.jitter, ln.jitter) if ln.jitter else 0.0)
        if ln.reorder and r.random() < ln.reorder:
            at += 2 * ln.delay + 0.01
        copies = 2 if ln.duplicate and r.random() < ln.duplicate else 1
        self.counts["duplicated"] += copies - 1
        for _ in range(copies):
            self.seq += 1
            heapq.heappush(self.heap, (max(at, now), self.seq, self.fds[dst], pkt))

    def _run(self) -> None:
        while not self.stopping:
            now = time.monotonic()
            while self.heap and self.heap[0][0] <= now:
                _, _, fd, pkt = heapq.heappop(self.heap)
                try:
                    os.write(fd, pkt)
                    self.counts["forwarded"] += 1
                except OSError:
                    self.counts["dropped"] += 1
            wait = max(0.0, self.heap[0][0] - now) if self.heap else 0.5
            ready, _, _ = select.select([*self.fds.values(), self.rpipe], [], [], wait)
            now = time.monotonic()
            for end, fd in list(self.fds.items()):
                if fd in ready:
                    for _ in range(64):
                        try:
                            pkt = os.read(fd, 65536)
                        except BlockingIOError:
                            break
                        self._route(end, pkt, now)


class NetLab(localcluster.LocalCluster):
    """``nodes`` nodes n1.. each in its own namespace at 10.77.<net>.1<k>:7100; the test
    process is 10.77.<net>.1. Use as a context manager: namespaces and TUNs go at exit."""

    def __init__(self, directory: Any, nodes: int = 3, *, seed: int | None = None, start: bool = True,
                 grid: bool = False, **options: Any) -> None:
        """``grid``: the grid application (app/) in one row of ``nodes``, not the test domain."""
        self.tag = f"{os.getpid() % 100000}"
        self.net = _free_subnet(20 + os.getpid() % 200)
        self.namespaces: list[str] = []
        self.wire = Wire(seed)
        directory = os.path.abspath(str(directory))
        try:
            ids = [f"n{i}" for i in range(1, nodes + 1)]
            self.ips = {nid: f"10.77.{self.net}.{10 + k}" for k, nid in enumerate(ids, 1)}
            self.ips[CLIENT] = f"10.77.{self.net}.1"
            if grid:
                options.update(imports=["app.model"], app={"plugin": "app.node:attach", "layout": "layout.toml"})
            self._write(directory, ids, "app.model:Grid" if grid else TEST_ROOT, options)
            if grid:
                from app.layout import render_layout
                from app.model import NodeSpec
                specs = [NodeSpec(nid, f"{self.ips[nid]}:{PORT}", 1, k) for k, nid in enumerate(ids, 1)]
                with open(os.path.join(directory, "layout.toml"), "w", encoding="utf-8") as f:
                    f.write(render_layout(1, nodes, specs))
            self._attach(directory, ROOT)
            self._make_net(ids)
            self.wire.start()
            if start:
                for nid in ids:
                    self.start(nid)
        except BaseException:
            self.close()
            raise

    def _write(self, directory: str, ids: list[str], root: str, options: dict) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        write_keys(directory)
        peers = {nid: (self.ips[nid], PORT) for nid in ids}
        cluster = new_cluster_id()
        for nid in ids:
            cfg = NodeConfig(path="", id=nid, listen=peers[nid], data=nid, root=root, peers=peers,
                             fsync="unsafe-no-fsync", **options)
            with open(os.path.join(directory, f"{nid}.toml"), "w", encoding="utf-8") as f:
                f.write(render_config(cfg))
            create_node_data(os.path.join(directory, nid), nid, "new-cluster", cluster=cluster)

    def _make_net(self, ids: list[str]) -> None:
        ctun = f"nf{self.tag}c"
        self.wire.open_tun(ctun, CLIENT, self.ips[CLIENT])
        sh("ip", "addr", "add", f"{self.ips[CLIENT]}/24", "dev", ctun)
        sh("ip", "link", "set", ctun, "up")
        for nid in ids:
            ns, tun = f"nf-{self.tag}-{nid}", f"nf{self.tag}{nid}"
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            self.wire.open_tun(tun, nid, self.ips[nid])
            sh("ip", "link", "set", tun, "netns", ns)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.ips[nid]}/24", "dev", tun)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", tun, "up")

    def namespace(self, nid: str) -> str:
        return f"nf-{self.tag}-{nid}"

    def start(self, nid: str) -> None:
        cfg = self.configs[nid]
        with open(os.path.join(self.dir, f"{nid}.log"), "ab") as out:
            self.procs[nid] = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace(nid), "env", f"PYTHONPATH={ROOT}", sys.executable, "-m",
                 "rpc.cli", "node", "--config", cfg.path],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                preexec_fn=child_dies_with_parent())

    # -- faults ---------------------------------------------------------------------------
    def ends(self) -> list[str]:
        return [*self.configs, CLIENT]

    def set(self, src: str, dst: str, **faults: Any) -> None:
        """The faults of the direction ``src`` -> ``dst`` (``"*"``: every end), replacing its old ones."""
        with self.wire.lock:
            for s in (self.ends() if src == "*" else [src]):
                for d in (self.ends() if dst == "*" else [dst]):
                    if s != d:
                        self.wire.links[(s, d)] = Link(**faults)

    def both(self, a: str, b: str, **faults: Any) -> None:
        self.set(a, b, **faults)
        self.set(b, a, **faults)

    def isolate(self, nid: str, on: bool = True, clients_too: bool = True) -> None:
        """Nothing reaches ``nid`` and nothing leaves it (silently)."""
        for other in self.ends():
            if other != nid and (clients_too or other != CLIENT):
                self.both(nid, other, cut=on)

    def heal(self) -> None:
        with self.wire.lock:
            self.wire.links.clear()

    def close(self) -> None:
        try:
            self.stop()
        except AttributeError:
            pass
        self.wire.stop() if self.wire.thread.is_alive() else None
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reload(self) -> None:
        self.configs = {cfg.id: cfg for cfg in map(load_config, self.paths)}


# -- a workload and what it must leave behind ------------------------------------------------

class Writer:
    """One thread executing Stamp("w<n>") with n = 0, 1, ... through ``client``; it records
    which were acknowledged, when, and what failed (a failed one may still apply, once)."""

    def __init__(self, client: Any, prefix: str = "w") -> None:
        self.client, self.prefix = client, prefix
        self.acked: list[str] = []
        self.times: list[float] = []
        self.failed: list[tuple[str, str]] = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="netlab-writer")

    def _run(self) -> None:
        from tests.prevalence.domain import Stamp
        n = 0
        while not self.stop_event.is_set():
            tag = f"{self.prefix}{n}"
            n += 1
            try:
                self.client.execute(Stamp(tag))
            except Exception as exc:  # noqa: BLE001 - recorded: a write that failed is allowed
                self.failed.append((tag, f"{type(exc).__name__}: {exc}"[:200]))
                continue
            self.acked.append(tag)
            self.times.append(time.monotonic())

    def __enter__(self) -> "Writer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(60)

    def longest_stall(self, since: float, until: float) -> float:
        """The longest time without an acknowledgement within [since, until]."""
        marks = [since, *[t for t in self.times if since < t < until], until]
        return max(b - a for a, b in zip(marks, marks[1:]))


def node_log(lab: NetLab, nid: str, timeout: float = 5.0) -> list[str]:
    """The tags of every Stamp applied on ``nid``, in order (its local state)."""
    from prevalence.codec import CODEC
    from rpc.transport import NodeLink
    from tests.prevalence.domain import Snapshot
    with NodeLink(lab.configs[nid].listen, lab.secret, ident="local", timeout=timeout) as link:
        reply = link.call("query", CODEC.dumps(Snapshot()), "local")
    assert reply[0] == "ok", reply
    return [item[0] for item in reply[1][1]]


def check_exactly_once(lab: NetLab, writer: Writer, timeout: float = 20.0) -> dict[str, list[str]]:
    """After a heal: every node applies every acknowledged command exactly once, no command
    twice, and all in the same order; no node died or logged a traceback."""
    lab.check_alive()
    lab.wait_converged(timeout=timeout)
    logs = {nid: node_log(lab, nid) for nid in lab.configs}
    first = next(iter(logs.values()))
    for nid, tags in logs.items():
        assert tags == first, f"{nid} differs: {len(tags)} vs {len(first)} entries"
    seen = [t for t in first if t.startswith(writer.prefix)]
    assert len(seen) == len(set(seen)), f"applied twice: {sorted({t for t in seen if seen.count(t) > 1})[:10]}"
    missing = set(writer.acked) - set(seen)
    assert not missing, f"acknowledged but lost: {sorted(missing)[:10]}"
    for nid in lab.configs:
        assert "Traceback" not in lab.log(nid), f"{nid} logged a traceback:\n{lab.tail(nid, 40)}"
    return logs

"""Real node processes on 127.0.0.1 for the multi-process tests."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import Any

import msgpack

from prevalence.codec import CODEC
from rpc.cluster import cluster_status, start_node, write_cluster
import rpc
from rpc.config import format_address, load_config, tls_contexts
from rpc.secret import load_secret
from rpc.transport import open_connection

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port_block(n: int) -> int:
    """A base port with ``n`` consecutive free ports (best effort)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n >= 65535:
            continue
        try:
            socks = []
            for k in range(n):
                t = socket.socket()
                t.bind(("127.0.0.1", base + k))
                socks.append(t)
            return base
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise RuntimeError("no block of free ports")


class LocalCluster:
    def __init__(self, directory: str, nodes: int = 3, root: str = "tests.prevalence.domain:Store", **options: Any):
        self.dir = str(directory)
        base = free_port_block(nodes)
        self.paths = write_cluster(self.dir, nodes, base, root, **options)
        self.configs = {load_config(p).id: load_config(p) for p in self.paths}
        self.secret = load_secret(os.path.join(self.dir, "cluster.secret"))
        self.procs: dict[str, subprocess.Popen] = {}
        for nid in self.configs:
            self.start(nid)

    def start(self, nid: str) -> None:
        cwd = os.getcwd()
        os.chdir(ROOT)  # the node imports tests.prevalence.domain from the repository
        try:
            self.procs[nid] = start_node(self.configs[nid].path, os.path.join(self.dir, f"{nid}.log"))
        finally:
            os.chdir(cwd)

    def kill(self, nid: str, sig: int = signal.SIGKILL) -> None:
        self.procs[nid].send_signal(sig)
        if sig == signal.SIGKILL:
            self.procs[nid].wait(10)

    def status(self) -> dict[str, dict]:
        return {r["id"]: r for r in cluster_status(self.dir, timeout=0.5)}

    def leader(self, timeout: float = 10.0, exclude: set[str] = frozenset()) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status()
            leaders = [n for n, r in st.items() if r["role"] == "leader" and n not in exclude]
            if len(leaders) == 1:
                return leaders[0]
            time.sleep(0.05)
        raise AssertionError(f"no leader within {timeout} s: {self.status()}")

    def connect(self, nid: str, timeout: float = 2.0):
        return open_connection(self.configs[nid].listen, self.secret, role="client", ident="test",
                               connect_timeout=0.5, handshake_timeout=1.0, request_timeout=timeout,
                               ssl_context=tls_contexts(self.configs[nid])[1])

    def call(self, nid: str, method: str, obj: Any, timeout: float = 2.0) -> list:
        conn = self.connect(nid, timeout)
        try:
            return msgpack.unpackb(getattr(conn.root, method)(CODEC.dumps(obj)), raw=False)
        finally:
            conn.close()

    def client(self, **options: Any) -> rpc.ClusterClient:
        """The real client library, over every node's address."""
        return rpc.connect([format_address(cfg.listen) for cfg in self.configs.values()],
                           secret_file=os.path.join(self.dir, "cluster.secret"), **options)

    def wait_converged(self, node: str | None = None, timeout: float = 15.0) -> dict:
        """Until every node (or ``node``) is reachable and applied as far as the leader."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            nodes = [node] if node else list(st)
            leaders = [n for n, r in st.items() if r["role"] == "leader"]
            if leaders and all(st[n]["reachable"] and st[n]["applied_index"] == st[leaders[0]]["applied_index"]
                               for n in nodes):
                return st
            assert time.monotonic() < deadline, st
            time.sleep(0.1)

    def log(self, nid: str) -> str:
        with open(os.path.join(self.dir, f"{nid}.log"), encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass

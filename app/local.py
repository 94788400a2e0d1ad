"""A grid on one machine: every node a separate process on 127.0.0.1 (``grid up``, ``grid demo``).

The directory holds what a real deployment has on each PC: the node's config
(``n1.toml``...), the cluster secret, the layout file, the node's data, and here also
its log (``logs/n1.log``).
"""
from __future__ import annotations

import os
import subprocess
import time
from typing import Any, Callable

from app.layout import render_layout
from app.model import GridView, NodeSpec
from rpc.client import ClusterClient
from rpc.cluster import SECRET_NAME, cluster_status, free_port_block, node_config_paths, start_node, write_cluster
from rpc.config import load_config
from rpc.secret import load_secret

LAYOUT_NAME = "layout.toml"
PLUGIN = "app.node:attach"


def write_grid(directory: str, rows: int = 3, columns: int = 3, base_port: int | None = None,
               **app: Any) -> list[str]:
    """Configs, secret and layout for a ``rows`` x ``columns`` grid; returns the config paths."""
    n = rows * columns
    base = base_port or free_port_block(n)
    paths = write_cluster(directory, n, base, "app.model:Grid", ["app.model"],
                          app={"plugin": PLUGIN, "layout": LAYOUT_NAME, **app})
    specs = [NodeSpec(f"n{k + 1}", f"127.0.0.1:{base + k}", k // columns + 1, k % columns + 1) for k in range(n)]
    with open(os.path.join(directory, LAYOUT_NAME), "w", encoding="utf-8") as f:
        f.write(render_layout(rows, columns, specs))
    return paths


class LocalGrid:
    """The node processes of a grid directory, started, killed and restarted by id."""

    def __init__(self, directory: str):
        self.dir = os.path.abspath(directory)
        self.configs = {load_config(p).id: p for p in node_config_paths(self.dir)}
        self.addresses = {nid: "%s:%d" % load_config(p).listen for nid, p in self.configs.items()}
        self.procs: dict[str, subprocess.Popen] = {}
        os.makedirs(os.path.join(self.dir, "logs"), exist_ok=True)

    @property
    def secret(self) -> bytes:
        return load_secret(os.path.join(self.dir, SECRET_NAME))

    def start(self, node_id: str | None = None) -> None:
        for nid in [node_id] if node_id else list(self.configs):
            if nid not in self.procs or self.procs[nid].poll() is not None:
                self.procs[nid] = start_node(self.configs[nid], os.path.join(self.dir, "logs", f"{nid}.log"))

    def kill(self, node_id: str) -> None:
        """SIGKILL (TerminateProcess on Windows): the PC loses power."""
        proc = self.procs[node_id]
        proc.kill()
        proc.wait(10)

    def alive(self, node_id: str) -> bool:
        return node_id in self.procs and self.procs[node_id].poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def client(self, **options: Any) -> ClusterClient:
        return ClusterClient(list(self.addresses.values()), self.secret, **options)

    def status(self) -> list[dict]:
        return cluster_status(self.dir, timeout=0.5)

    def leader(self) -> str | None:
        """The node that says it leads, in the highest term any reachable node reports."""
        rows = [r for r in self.status() if r["reachable"]]
        leaders = [r for r in rows if r["role"] == "leader"]
        if not leaders:
            return None
        return max(leaders, key=lambda r: r["term"])["id"]

    def wait_for(self, what: str, predicate: Callable[[], Any], timeout: float, every: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = predicate()
                if value:
                    return value
            except Exception as exc:  # noqa: BLE001 - retried until the deadline
                last_error = exc
            time.sleep(every)
        raise TimeoutError(f"{what}: not within {timeout:g} s" + (f" (last error: {last_error})" if last_error else ""))


def in_sync(view: dict, nodes: list[str] | None = None) -> bool:
    """Every (listed) node up with its agent running exactly its desired settings."""
    chosen = [n for n in view["nodes"] if nodes is None or n["id"] in nodes]
    return bool(chosen) and all(n["health"] == "up" and n["in_sync"] for n in chosen)


def grid_view(client: ClusterClient, consistency: str = "linearizable") -> dict:
    return client.query(GridView(), consistency)

"""A local cluster on one machine (``prevalence cluster up``) and its status report."""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from typing import Any

import msgpack

from rpc.config import ConfigError, NodeConfig, format_address, load_config, render_config
from rpc.secret import generate_secret_file, load_secret
from rpc.transport import open_connection

SECRET_NAME = "cluster.secret"


def write_cluster(directory: str, nodes: int, base_port: int, root: str, imports: list[str] | None = None,
                  **options: Any) -> list[str]:
    """Configs for ``nodes`` nodes on 127.0.0.1 ports ``base_port``..; returns their paths."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    secret = os.path.join(directory, SECRET_NAME)
    if not os.path.exists(secret):
        generate_secret_file(secret)
    ids = [f"n{i}" for i in range(1, nodes + 1)]
    peers = {nid: ("127.0.0.1", base_port + k) for k, nid in enumerate(ids)}
    paths = []
    for nid in ids:
        cfg = NodeConfig(path="", id=nid, listen=peers[nid], data=nid, root=root, secret_file=SECRET_NAME,
                         peers=peers, imports=list(imports or ()), **options)
        path = os.path.join(directory, f"{nid}.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(render_config(cfg))
        paths.append(path)
    return paths


def start_node(config_path: str, log_path: str | None = None) -> subprocess.Popen:
    out = open(log_path, "ab") if log_path else None
    kwargs: dict[str, Any] = {}
    if sys.platform == "win32":  # lets a console Ctrl-Break reach the node, not the parent
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    return subprocess.Popen([sys.executable, "-m", "rpc.cli", "node", "--config", config_path],
                            stdout=out, stderr=subprocess.STDOUT if out else None, **kwargs)


def cluster_up(directory: str, nodes: int, base_port: int, root: str, imports: list[str] | None = None) -> int:
    """Start the nodes, stay in the foreground, stop them all on Ctrl-C or SIGTERM."""
    paths = write_cluster(directory, nodes, base_port, root, imports)
    procs = {os.path.splitext(os.path.basename(p))[0]: start_node(p) for p in paths}
    print(f"started {nodes} nodes on 127.0.0.1:{base_port}..{base_port + nodes - 1}; "
          f"configs and secret in {os.path.abspath(directory)}; Ctrl-C stops them", flush=True)
    stopping = False

    def on_signal(signum, frame):  # noqa: ARG001
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    reported: set[str] = set()
    while not stopping:
        for nid, proc in procs.items():
            if proc.poll() is not None and nid not in reported:
                reported.add(nid)
                print(f"node {nid} exited with code {proc.returncode} (not restarted)", flush=True)
        if len(reported) == len(procs):
            return 1
        time.sleep(0.2)
    print("stopping the cluster...", flush=True)
    for proc in procs.values():
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: a node hands over leadership and exits cleanly
    deadline = time.monotonic() + 10
    for proc in procs.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0


FIELDS = ("id", "address", "role", "term", "commit_index", "applied_index", "pid", "config", "reachable")


def cluster_status(directory: str, timeout: float = 1.0) -> list[dict]:
    """Ask every node configured in ``directory`` for its status (unreachable ones too)."""
    paths = sorted(glob.glob(os.path.join(directory, "*.toml")))
    if not paths:
        raise ConfigError(f"{os.path.abspath(directory)}: no node configuration (*.toml) found")
    secret = load_secret(os.path.join(directory, SECRET_NAME))
    rows = []
    for path in paths:
        cfg = load_config(path)
        row: dict[str, Any] = dict.fromkeys(FIELDS)
        row.update(id=cfg.id, address=format_address(cfg.listen), config=cfg.path, reachable=False)
        try:
            conn = open_connection(cfg.listen, secret, role="client", ident="status", connect_timeout=timeout,
                                   handshake_timeout=timeout, request_timeout=timeout)
            try:
                reply = msgpack.unpackb(conn.root.status(), raw=False)
            finally:
                conn.close()
            if reply[0] == "ok":
                st = reply[1]
                row.update({k: st.get(k) for k in FIELDS if k in st}, reachable=True)
        except Exception as exc:  # noqa: BLE001 - reported as unreachable
            row["error"] = str(exc)
        rows.append(row)
    return rows

"""A grid on one machine: every node a separate process on 127.0.0.1 (``grid up``, ``grid demo``).

The directory holds what a real deployment has on each PC: the node's config
(``n1.toml``...), the key files, the layout file and the node's data; here also
its log (``n1.log``).
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator

from app.layout import render_layout
from app.model import GridError, GridView, NodeSpec, check_size
from prevalence.errors import PrevalenceError
from prevalence.text import one_line
from rpc.client import ClusterClient
from rpc.cluster import free_port_block, write_cluster
from rpc.localcluster import LocalCluster

LAYOUT_NAME = "layout.toml"
PLUGIN = "app.node:attach"


def write_grid(directory: str, rows: int = 3, columns: int = 3, base_port: int | None = None,
               **app: Any) -> list[str]:
    """Configs, key files and layout for a ``rows`` x ``columns`` grid; returns the config paths.
    A size or port the grid cannot run is refused before anything is written (a later
    ``grid up`` there would start the half-written grid)."""
    check_size(rows, columns)
    n = rows * columns
    if base_port is not None and not 1 <= base_port <= 65536 - n:
        raise GridError(f"--port {base_port}: the grid's {n} ports must be from 1 to 65535")
    base = base_port or free_port_block(n)
    paths = write_cluster(directory, n, base, "app.model:Grid", ["app.model"],
                          app={"plugin": PLUGIN, "layout": LAYOUT_NAME, **app})
    specs = [NodeSpec(f"n{k + 1}", f"127.0.0.1:{base + k}", k // columns + 1, k % columns + 1) for k in range(n)]
    with open(os.path.join(directory, LAYOUT_NAME), "w", encoding="utf-8") as f:
        f.write(render_layout(rows, columns, specs))
    return paths


class LocalGrid(LocalCluster):
    """The node processes of a grid directory, started, killed and restarted by id."""

    def start(self, nid: str | None = None) -> None:
        """One node, or every node that is not running and not held back. A Ctrl-C meanwhile
        is held until they are started: raised inside the fork of a node, it left logging's
        lock taken (the process hung) and the nodes started so far running."""
        with _interrupt_held():
            for node_id in [nid] if nid else list(self.configs):
                if not self.alive(node_id) and not self.held_back(node_id):
                    super().start(node_id)

    def held_back(self, nid: str) -> str | None:
        """Why ``nid`` is not started: its data is of an older epoch of the cluster than
        another node's here (left out of a grid recover). Started, the nodes of the old
        epoch would elect a master of their own, which takes commands the grid never sees."""
        from replication.journal_storage import IDENTITY_FILE, read_identity

        epochs: dict[str, tuple[str, int]] = {}
        for node_id, cfg in self.configs.items():
            path = os.path.join(cfg.data, IDENTITY_FILE)
            try:
                ident = read_identity(path) if os.path.isfile(path) else None
            except PrevalenceError:
                ident = None  # damaged: the node says so when it starts
            if ident is not None and ident.cluster:
                epochs[node_id] = (ident.cluster, ident.epoch)
        mine = epochs.get(nid)
        newest = max((e for c, e in epochs.values() if mine and c == mine[0]), default=0)
        if mine is None or mine[1] >= newest:
            return None
        return (f"{nid} not started: its data is of epoch {mine[1]}, from before grid recover made epoch {newest}; "
                f"grid replace {nid} --address {self.addresses[nid]} --cluster {self.dir} makes it a node of the "
                "grid again")

    def alive(self, nid: str) -> bool:
        """Its process runs: the one started here, or another holding its data (the
        replacement grid replace started), which a second copy could only fight."""
        return super().alive(nid) or self._held_elsewhere(nid) is not None

    def _held_elsewhere(self, nid: str) -> int | None:
        """The pid of another process holding ``nid``'s data directory, or None."""
        from prevalence._platform import DirectoryLock
        from prevalence.errors import LockedError

        cfg = self.configs.get(nid)
        if cfg is None or not os.path.isdir(cfg.data):
            return None
        lock = DirectoryLock(cfg.data)
        try:
            lock.acquire()
        except LockedError:
            pid = lock.holder()
            return pid if pid and pid != os.getpid() else None
        lock.release()
        return None


    def stop_strays(self, timeout: float = 10.0) -> list[str]:
        """Stop the nodes of this directory running as processes this object did not start
        (``grid replace`` starts the replacement itself): found by the pid in their data
        directory's held lock, asked to stop (SIGTERM), then killed. Returns what it said."""
        from prevalence._platform import DirectoryLock, kill_hard
        from prevalence.errors import LockedError

        strays: dict[str, tuple[int, DirectoryLock]] = {}
        for nid, cfg in self.configs.items():
            pid = None if super().alive(nid) else self._held_elsewhere(nid)
            if pid is not None:
                strays[nid] = (pid, DirectoryLock(cfg.data))
                os.kill(pid, signal.SIGTERM)  # TerminateProcess on Windows
        deadline = time.monotonic() + timeout
        said = []
        for nid, (pid, lock) in strays.items():
            while time.monotonic() < deadline:
                try:
                    lock.acquire()  # the lock is free: it has ended
                    lock.release()
                    break
                except LockedError:
                    time.sleep(0.1)
            else:
                kill_hard(pid)
            said.append(f"stopped {nid} (pid {pid}), which this grid up had not started")
        return said


@contextlib.contextmanager
def _interrupt_held() -> Iterator[None]:
    """SIGINT recorded instead of raised for the block, then handed to the handler it had."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only
        return
    got: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if got and callable(previous):
            previous(signal.SIGINT, got[0])


def in_sync(view: dict, nodes: list[str] | None = None) -> bool:
    """Every (listed) node up with its agent running exactly its desired settings."""
    chosen = [n for n in view["nodes"] if nodes is None or n["id"] in nodes]
    return bool(chosen) and all(n["health"] == "up" and n["in_sync"] for n in chosen)


def grid_view(client: ClusterClient, consistency: str = "linearizable") -> dict:
    return client.query(GridView(), consistency)


def report_layout(grid: LocalGrid, say: Callable[[str], None]) -> Callable[[], None]:
    """Say every layout edit the cluster applies or refuses from now on (``grid up``: the
    refusal otherwise shows only in the nodes' logs). Returns the function that stops it."""
    stop = threading.Event()

    def on_event(event: Any) -> None:
        fields = getattr(event, "fields", None) or {}
        if event.type == "grid.RefuseLayout":
            say(f"layout edit refused, nothing changed: {one_line(str(fields.get('reason')), None)}")
        elif event.type == "grid.ApplyLayout":
            say(f"layout applied: {fields.get('rows')}x{fields.get('columns')} grid, "
                f"{len(fields.get('nodes') or ())} nodes")

    held: list = []

    def run() -> None:
        while not stop.is_set():  # the nodes are starting: until one answers
            client = grid.client(timeout=2.0)
            try:
                held[:] = [client, client.subscribe(on_event)]
                return
            except Exception:  # noqa: BLE001 - no master yet: try again
                client.close()
                stop.wait(0.5)

    starter = threading.Thread(target=run, name="layout-report", daemon=True)
    starter.start()

    def close() -> None:
        stop.set()
        starter.join(5)
        if held:
            held[1].close()
            held[0].close()
    return close

"""Node processes on 127.0.0.1 driven from Python: for tests, benchmarks and demos.

    c = LocalCluster(tmp, 3, "mymodule:Root", cwd=project_dir)   # writes configs, starts n1..n3
    leader = c.leader()
    with c.client() as client:
        client.execute(...)
    c.kill(leader)                                                # SIGKILL by default
    c.start(leader)
    c.stop()

``cwd`` is where the nodes run, so that the root's module imports there. On Linux a
node started from the main thread dies with the process that started it
(PR_SET_PDEATHSIG): nothing outlives an interrupted test or benchmark.
"""
from __future__ import annotations

import os
import subprocess
import threading
import time
from typing import Any, Callable


import rpc
from prevalence.codec import CODEC
from prevalence._platform import child_dies_with_parent
from prevalence.errors import PrevalenceError
from rpc.cluster import (
    NoNodeConfig, cluster_status, directory_key, free_port_block, node_config_paths, refuse_if_running, start_node,
    stop_on_signals, write_cluster,
)
from rpc.config import NodeConfig, format_address, load_config, tls_contexts
from rpc.secret import KEY_FILES
from prevalence.text import one_line
from rpc.transport import NodeLink, open_connection


#: A node that exits within this many seconds of its start did not really run (a bad
#: config, its data in use or missing, a wrong key): restarting it at once changes
#: nothing, so each such exit in a row doubles the wait, up to RESTART_MAX_DELAY.
QUICK_EXIT = 10.0
RESTART_MAX_DELAY = 60.0


class Restarts:
    """When the supervisor starts one dead node again (times passed in: no clock here).

    The first death waits ``after`` seconds, as a PC would reboot; a node that keeps
    exiting soon after its start waits 2x, 4x ... ``after``, at most RESTART_MAX_DELAY,
    so that it comes back by itself once its cause is fixed without a restart every few
    seconds meanwhile."""

    def __init__(self, after: float, now: float) -> None:
        self.after = after
        self.started = now
        self.quick = 0  # exits in a row within QUICK_EXIT of their start

    def died(self, now: float, code: int | None = 1) -> float:
        """The seconds to wait before the next start. Only a node that exited by itself
        (``code`` > 0) counts as unable to start: a signal came from outside (an operator,
        the OOM killer), and 0 means it was asked to stop."""
        self.quick = self.quick + 1 if now - self.started < QUICK_EXIT and code is not None and code > 0 else 0
        if not self.quick:
            return self.after
        # at least 1 s to double (a --restart-after 0 must not spin), and the exponent
        # bounded: a node refused for days must not overflow the float
        return min(RESTART_MAX_DELAY, max(self.after, 1.0) * 2 ** min(self.quick, 16))

    def restarted(self, now: float) -> None:
        self.started = now


def exit_reason(code: int | None, tail: str) -> str:
    """How a node process ended, for the operator: its signal, or its code and the
    last line it logged (a node that refuses to start says why there)."""
    if code is not None and code < 0:
        return f"killed by signal {-code}"
    last = one_line(next((line for line in reversed(tail.splitlines()) if line.strip()), ""))
    return f"exit code {code}" + (f": {last}" if last else "")


def _nth(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


class ClusterTimeout(PrevalenceError):
    """The cluster did not reach the awaited state in time; the message shows its status."""


class NodeExited(PrevalenceError):
    """A node process of the cluster has ended; ``tail`` is the end of its log."""

    def __init__(self, node: str, code: int | None, log_path: str | None, tail: str):
        where = f"the end of {log_path}:\n{tail}" if log_path else "its output went to this process's"
        super().__init__(f"node {node} exited with code {code}; {where}")
        self.node, self.code, self.tail = node, code, tail


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.05,
             fatal: tuple[type[BaseException], ...] = ()) -> Any:
    """``check()``'s first truthy value; ClusterTimeout after ``timeout`` seconds. Other
    exceptions from ``check`` are retried, but for ``fatal`` ones, raised at once."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (ClusterTimeout, *fatal):
            raise
        except Exception as exc:  # noqa: BLE001 - tried again until the deadline
            last = exc
        time.sleep(interval)
    raise ClusterTimeout(f"timed out after {timeout:g} s waiting for {what}" + (f" (last error: {last})" if last else ""))


class LocalCluster:
    """``nodes`` nodes n1.. with their configs, keys, data and logs (``<id>.log``) in
    ``directory``. ``secret`` is the client key (what an operator's program holds),
    ``admin_key`` the admin key; the peer key stays with the nodes."""

    def __init__(self, directory: str, nodes: int, root: str, *, cwd: str | None = None, start: bool = True,
                 **options: Any):
        write_cluster(str(directory), nodes, free_port_block(nodes), root, **options)
        self._attach(directory, cwd)
        if start:
            for nid in self.configs:
                self.start(nid)

    @classmethod
    def open(cls, directory: str, *, cwd: str | None = None, log_files: bool = True) -> "LocalCluster":
        """The cluster already configured in ``directory`` (nothing started). Without
        ``log_files`` the nodes write to this process's output instead of ``<id>.log``."""
        self = cls.__new__(cls)
        self._attach(directory, cwd, log_files)
        return self

    def _attach(self, directory: str, cwd: str | None, log_files: bool = True) -> None:
        self.dir = os.path.abspath(str(directory))
        self.cwd = cwd
        self.log_files = log_files
        self.paths = node_config_paths(self.dir)
        self.configs = {cfg.id: cfg for cfg in map(load_config, self.paths)}
        self.secret = directory_key(self.dir, "client")
        self.admin_key = directory_key(self.dir, "admin")
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def addresses(self) -> dict[str, str]:
        return {nid: format_address(cfg.listen) for nid, cfg in self.configs.items()}

    wait_for = staticmethod(wait_for)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- processes ----------------------------------------------------------------------
    def start(self, nid: str) -> None:
        log = os.path.join(self.dir, f"{nid}.log") if self.log_files else None
        self.procs[nid] = start_node(self.configs[nid].path, log, cwd=self.cwd, preexec_fn=child_dies_with_parent())

    def kill(self, nid: str, sig: int | None = None) -> None:
        """SIGKILL (TerminateProcess on Windows) and wait, or send ``sig`` (SIGSTOP, ...)."""
        p = self.procs[nid]
        if sig is None:
            p.kill()
            p.wait(10)
        elif p.poll() is None:
            p.send_signal(sig)

    def kill_leaders(self, rounds: int, every: float = 0.7, down_for: float = 0.3) -> list[str]:
        """``rounds`` times: wait ``every`` s, SIGKILL the leader, wait for another one,
        restart the killed node ``down_for`` s later; then wait ``every`` s. The killed ids."""
        killed = []
        for _ in range(rounds):
            time.sleep(every)
            victim = self.leader()
            self.kill(victim)
            killed.append(victim)
            self.leader(exclude={victim})
            time.sleep(down_for)
            self.start(victim)
        time.sleep(every)
        return killed

    def check_alive(self) -> None:
        """Raise :class:`NodeExited`, with the end of its log, if a started node has exited."""
        for nid, p in self.procs.items():
            if p.poll() is not None:
                log_path = os.path.join(self.dir, f"{nid}.log") if self.log_files else None
                raise NodeExited(nid, p.returncode, log_path, self.tail(nid) if log_path else "")

    def log(self, nid: str) -> str:
        with open(os.path.join(self.dir, f"{nid}.log"), encoding="utf-8", errors="replace") as f:
            return f.read()

    def tail(self, nid: str, lines: int = 15) -> str:
        """The last ``lines`` of its log, read from its last 64 KiB: a log only grows."""
        try:
            with open(os.path.join(self.dir, f"{nid}.log"), "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        return "".join(text.splitlines(keepends=True)[-lines:])

    def supervise(self, restart_after: float | None = None, name: str = "cluster",
                  stop: threading.Event | None = None) -> int:
        """Stay in the foreground until Ctrl-C or SIGTERM, then stop every node gracefully.

        A node that dies is reported with how it ended (its signal, or its exit code and
        the last line it logged), and restarted ``restart_after`` seconds later (as its
        PC would reboot) unless that is None; one that keeps exiting soon after its start
        waits longer each time (:class:`Restarts`). Returns 1 if every node died for good.
        ``stop``: a :func:`stop_on_signals` event installed before the nodes were started.
        """
        stop = stop or stop_on_signals()
        restarts = {nid: Restarts(restart_after or 0.0, time.monotonic()) for nid in self.configs}
        due: dict[str, float] = {}  # dead node -> when it starts again (inf: never)
        seen: set[str] = set()  # nodes seen running: a node never started here has not exited
        while not stop.is_set():
            for nid in self.configs:
                now = time.monotonic()
                running = self.alive(nid)
                if running:
                    seen.add(nid)
                if nid in due:
                    if now >= due[nid]:
                        del due[nid]
                        restarts[nid].restarted(now)
                        if self.alive(nid):  # started meanwhile by another command (grid replace)
                            print(f"node {nid} runs again, started by another command", flush=True)
                        elif self.held_back(nid) is None:
                            self.start(nid)
                            print(f"node {nid} restarted", flush=True)
                elif not running and (nid in self.procs or nid in seen) and not self.held_back(nid):
                    code = self.procs[nid].returncode if nid in self.procs else None
                    why = exit_reason(code, self.tail(nid, 5) if self.log_files else "")
                    if restart_after is None:
                        due[nid] = float("inf")
                        print(f"node {nid} exited ({why}); not restarted", flush=True)
                        continue
                    wait = restarts[nid].died(now, code)
                    due[nid] = now + wait
                    again = f", its {_nth(restarts[nid].quick)} exit in a row soon after starting" \
                        if restarts[nid].quick > 1 else ""
                    print(f"node {nid} exited ({why}); restarting it in {wait:g} s{again}", flush=True)
            if restart_after is None and all(nid in due or self.held_back(nid) for nid in self.configs):
                return 1
            stop.wait(0.2)
        print(f"stopping the {name}...", flush=True)
        self.stop(graceful=True)
        return 0

    def alive(self, nid: str) -> bool:
        return nid in self.procs and self.procs[nid].poll() is None

    def held_back(self, nid: str) -> str | None:
        """Why ``nid`` is not to be started here (a subclass's rule), or None."""
        return None

    def stop(self, graceful: bool = False, timeout: float = 10.0) -> None:
        """SIGKILL every node, or with ``graceful`` SIGTERM first (a leader hands over)."""
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate() if graceful else p.kill()
        deadline = time.monotonic() + timeout
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    # -- what the nodes say ---------------------------------------------------------------
    def status(self) -> dict[str, dict]:
        return {r["id"]: r for r in cluster_status(self.dir, timeout=0.5)}

    @staticmethod
    def _leaders(st: dict[str, dict]) -> list[str]:
        """Who says it leads (two, briefly, across a term change)."""
        return [n for n, r in st.items() if r["role"] == "leader"]

    def leader(self, timeout: float = 10.0, exclude: set[str] = frozenset()) -> str:
        """The one node (not in ``exclude``) that reports itself leader."""
        def check():
            leaders = [n for n in self._leaders(self.status()) if n not in exclude]
            return leaders[0] if len(leaders) == 1 else None
        try:
            return wait_for("a leader", check, timeout)
        except ClusterTimeout as exc:
            raise ClusterTimeout(f"{exc}: {self.status()}") from None

    def stable_leader(self, timeout: float = 20.0) -> tuple[str, dict]:
        """(leader, status) once every node is reachable, in the leader's term, and has
        applied up to the leader's commit index."""
        def check():
            self.check_alive()
            st = self.status()
            leaders = self._leaders(st)
            if len(leaders) != 1 or not all(r["reachable"] for r in st.values()):
                return None
            lead = st[leaders[0]]
            if any(r["term"] != lead["term"] or r["applied_index"] < lead["commit_index"] for r in st.values()):
                return None
            return leaders[0], st
        return wait_for("a leader with every node caught up", check, timeout)

    def wait_converged(self, node: str | None = None, timeout: float = 15.0) -> dict:
        """Until every node (or ``node``) is reachable and applied as far as the leader.

        While clients still write, the leader moves on between two nodes' answers and
        equality may never be seen: then every node having applied at least what the
        leader had applied at the first look, while the leader has moved past it, is
        caught up too."""
        last: dict = {}
        target: list[int] = []

        def check():
            nonlocal last
            st = last = self.status()
            leaders = self._leaders(st)
            if not leaders:
                return None
            lead = st[leaders[0]]["applied_index"]
            if not target:
                target.append(lead)
            names = [node] if node else list(st)
            if not all(st[n]["reachable"] for n in names):
                return None
            if all(st[n]["applied_index"] == lead for n in names):
                return st
            moving = lead > target[0]
            return st if moving and all(st[n]["applied_index"] >= target[0] for n in names) else None
        try:
            return wait_for("the nodes to converge", check, timeout, 0.1)
        except ClusterTimeout as exc:
            silent = [n for n, st in last.items() if not st.get("reachable") and (node is None or n == node)]
            logs = "".join(f"\n--- {n} ({self._exit_text(n)}), its log's end:\n{self.tail(n, 8)}" for n in silent)
            raise ClusterTimeout(f"{exc}: {last}{logs}") from None

    def _exit_text(self, nid: str) -> str:
        p = self.procs.get(nid)
        code = None if p is None else p.poll()
        return "not started" if p is None else "running" if code is None else f"exited with code {code}"

    # -- talking to it ----------------------------------------------------------------------
    def connect(self, nid: str, timeout: float = 2.0):
        """A raw client connection to one node (``conn.root.<method>``)."""
        return open_connection(self.configs[nid].listen, self.secret, role="client", ident="local",
                               connect_timeout=0.5, handshake_timeout=1.0, request_timeout=timeout,
                               ssl_context=tls_contexts(self.configs[nid])[1])

    def call(self, nid: str, method: str, obj: Any, timeout: float = 2.0) -> list:
        """One request to one node with ``obj`` encoded; the decoded reply."""
        cfg = self.configs[nid]
        with NodeLink(cfg.listen, self.secret, ident="local", timeout=timeout,
                      ssl_context=tls_contexts(cfg)[1]) as link:
            return link.call(method, CODEC.dumps(obj))

    def client(self, *, admin: bool = False, **options: Any) -> rpc.ClusterClient:
        """The real client library, over every node's address, with the client key (or
        the admin key: what administration, such as the session expiry, needs)."""
        return rpc.connect([format_address(cfg.listen) for cfg in self.configs.values()],
                           secret_file=os.path.join(self.dir, KEY_FILES["admin" if admin else "client"]), **options)


# -- `prevalence cluster up` (here, not in rpc.cluster: it runs a LocalCluster) ------------

def cluster_up(directory: str, nodes: int, base_port: int, root: str, imports: list[str] | None = None,
               app: str | None = None) -> int:
    """Start the nodes, stay in the foreground, stop them all on Ctrl-C or SIGTERM.

    A directory that already holds node configurations is started as configured: its
    files may carry the user's edits, so they are never rewritten (the options that
    differ from them are named, not applied)."""
    plugin = app if app is None or ":" in app else f"{app}:attach"  # --app MODULE: its attach()
    existing = _configured(directory)
    if existing:
        refuse_if_running(existing, "cluster", directory)
        print(f"starting the cluster configured in {os.path.abspath(directory)} "
              f"({', '.join(os.path.basename(c.path) for c in existing)} as they are)"
              + _not_applied(existing, nodes, base_port, root, imports, plugin), flush=True)
    else:
        write_cluster(directory, nodes, base_port, root, imports, **({"app": {"plugin": plugin}} if plugin else {}))
    cluster = LocalCluster.open(directory, log_files=False)  # the nodes log to this terminal
    for nid in cluster.configs:
        cluster.start(nid)
    ports = sorted(cfg.listen[1] for cfg in cluster.configs.values())
    print(f"started {len(ports)} nodes on 127.0.0.1:{ports[0]}..{ports[-1]}; configs and keys in "
          f"{os.path.abspath(directory)} (clients use {KEY_FILES['client']}); Ctrl-C stops them", flush=True)
    return cluster.supervise()


def _configured(directory: str) -> list[NodeConfig]:
    """The node configurations already in ``directory`` (none for a new directory)."""
    try:
        paths = node_config_paths(directory)
    except NoNodeConfig:  # only that: a directory whose configs are wrong is never written over
        return []
    return [load_config(p) for p in paths]


def _not_applied(configs: list[NodeConfig], nodes: int, base_port: int, root: str,
                 imports: list[str] | None, plugin: str | None = None) -> str:
    """'; not applied: --port 7100 (the files say 7200), ...' for the options the files overrule."""
    differ = []
    if nodes != len(configs):
        differ.append(f"--nodes {nodes} (the files: {len(configs)})")
    lowest = min(c.listen[1] for c in configs)
    if base_port != lowest:
        differ.append(f"--port {base_port} (the files: {lowest})")
    roots = sorted({c.root for c in configs})
    if [root] != roots:
        differ.append(f"--root {root} (the files: {', '.join(roots)})")
    wanted = sorted(imports or ())
    had = sorted({m for c in configs for m in c.imports})
    if wanted != had:
        differ.append(f"--import {' '.join(wanted) or '(none)'} (the files: {' '.join(had) or '(none)'})")
    plugins = sorted({c.app.get("plugin", "") for c in configs} - {""})
    if plugin is not None and [plugin] != plugins:
        differ.append(f"--app {plugin} (the files: {', '.join(plugins) or 'none'})")
    return "; not applied: " + ", ".join(differ) if differ else ""

"""The reconciling controller: runs on the leader only, so there is one master acting.

Each cycle it reads the grid (the first time with a linearizable read, so a new leader
never acts on a state older than what its predecessor acknowledged), then for every node at once:
asks the agent for its status (a node recorded down is probed apart, once at a time,
and not waited for); pushes the desired settings if the agent's differ
(the push replaces the settings, so pushing twice is harmless; failures back off
exponentially per node); and records what it saw as a ``MarkNode`` transaction, only
when that differs from what the state already says. A node that has not answered for
``down_after`` seconds is recorded down, one whose host refuses the connection (no
process listening: it crashed or is restarting) at once. A new leader's controller starts from the
replicated state and simply carries on.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from app.agent import AgentError, AgentLink
from app.model import MarkNode

log = logging.getLogger("app.controller")


@dataclass
class _NodeState:
    last_ok: float
    push_at: float = 0.0  # no push before this (backoff after a failed one)
    backoff: float = 0.0


class Controller:
    def __init__(self, read_view: Callable[[bool], dict], record: Callable[[Any], Any],
                 link: Callable[[str, str], AgentLink], *, interval: float = 0.5, down_after: float = 1.0,
                 max_backoff: float = 5.0, before_first: Callable[[dict], None] | None = None,
                 fence: Callable[[], tuple[int, int]] | None = None):
        self._read, self._record, self._link = read_view, record, link
        # this leader's (epoch, term), read once: every push carries it (app.agent)
        self._fence_of, self._fence = fence, None
        self.interval, self.down_after, self.max_backoff = interval, down_after, max_backoff
        self._links: dict[str, AgentLink] = {}
        self._nodes: dict[str, _NodeState] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="grid-agent")
        # nodes recorded down are probed apart, not waited for: a hundred hung PCs, each
        # taking its whole time-out, must not delay a push to a node that answers
        self._probes = ThreadPoolExecutor(max_workers=16, thread_name_prefix="grid-probe")
        self._probing: dict[str, Future] = {}
        self.cycles = 0
        self._before_first = before_first

    def start(self) -> "Controller":
        self._thread = threading.Thread(target=self._run, name="grid-controller", daemon=True)
        self._thread.start()
        log.info("controller started: this node is the master")
        return self

    def stop(self, wait: float = 0.0) -> None:
        """Ask the loop to end; ``wait`` > 0 also waits for it (not from the node's apply thread)."""
        self._stop.set()
        if wait and self._thread is not None:
            self._thread.join(wait)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                try:
                    self.cycle()
                except Exception as exc:  # noqa: BLE001 - e.g. leadership lost mid-cycle
                    if self._stop.is_set():
                        break
                    log.warning("controller cycle failed: %s", exc)
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - began)))
        finally:
            for link in self._links.values():
                link.close()
            self._pool.shutdown(wait=False)
            self._probes.shutdown(wait=False)
            log.info("controller stopped")

    def cycle(self) -> None:
        # The first read of a term is linearizable: it waits until this leader has applied
        # everything its predecessors committed. Later ones read the leader's own state,
        # which is current for as long as it leads (the controller stops when it does not).
        if self._fence is None and self._fence_of is not None:
            self._fence = self._fence_of()  # raises while this node does not lead: no cycle
        view = self._read(self.cycles == 0)
        if self._before_first is not None:  # once, with the first view this leader trusts
            self._before_first(view)  # if it fails (a busy cluster), the next cycle tries again
            self._before_first = None
            view = self._read(False)
        now = time.monotonic()
        nodes = {n["id"]: n for n in view["nodes"]}
        for node_id in set(self._links) - set(nodes):  # removed from the grid
            self._links.pop(node_id).close()
            self._nodes.pop(node_id, None)
        for node_id, n in nodes.items():
            link = self._links.get(node_id)
            if link is None or link.address != n["address"]:
                if link is not None:
                    link.close()
                self._links[node_id] = self._link(node_id, n["address"])
            self._nodes.setdefault(node_id, _NodeState(last_ok=now))
        waited = []
        for node_id, n in nodes.items():
            args = (n, self._links[node_id], self._nodes[node_id])
            if n["health"] != "down":
                waited.append(self._pool.submit(self._reconcile, *args))
            elif node_id not in self._probing:  # one probe at a time per node
                probe = self._probes.submit(self._reconcile, *args)
                self._probing[node_id] = probe
                probe.add_done_callback(lambda f, node_id=node_id: self._probed(node_id, f))
        for future in waited:
            future.result()
        self.cycles += 1

    def _probed(self, node_id: str, probe: Future) -> None:
        self._probing.pop(node_id, None)
        exc = probe.exception()
        if exc is not None and not self._stop.is_set():  # e.g. leadership lost while recording
            log.warning("probe of node %s failed: %s", node_id, exc)

    def _reconcile(self, n: dict, link: AgentLink, st: _NodeState) -> None:
        node_id = n["id"]
        if self._stop.is_set():
            return
        try:
            status = link.status()
        except AgentError as exc:
            silent = time.monotonic() - st.last_ok >= self.down_after
            if (exc.gone or silent) and n["health"] != "down":
                log.warning("node %s is down: %s", node_id, exc)
                self._record(MarkNode(node_id, False, None, "", str(exc)))
            return
        if status.get("id") != node_id:  # a wrong address in the layout: never drive another PC
            if n["health"] != "down" or not n["detail"].startswith("wrong agent"):
                log.error("node %s: %s answers as agent %r", node_id, n["address"], status.get("id"))
                self._record(MarkNode(node_id, False, None, "",
                                      f"wrong agent: {n['address']} answers as {status.get('id')!r}"))
            return
        st.last_ok = time.monotonic()
        desired = n["desired"]
        detail = {"up": n["detail"], "down": "up again"}.get(n["health"], "")
        if status["settings"] == desired and detail.startswith("push failed"):
            detail = "settings pushed"  # the push whose answer was lost did land
        if status["settings"] != desired and time.monotonic() >= st.push_at:
            try:
                status = link.apply(desired) if self._fence is None else link.apply(desired, self._fence)
                st.backoff = 0.0
                restarted = n["boot"] and status["boot"] != n["boot"]
                detail = "agent restarted: settings restored" if restarted else "settings pushed"
                log.info("node %s: pushed %s", node_id, desired)
            except AgentError as exc:
                st.backoff = min(self.max_backoff, max(0.25, st.backoff * 2))
                st.push_at = time.monotonic() + st.backoff * random.uniform(0.8, 1.2)
                detail = f"push failed, retrying: {exc}"  # the same text each retry: journaled once
                log.warning("node %s: %s (next try in %.1f s)", node_id, detail, st.backoff)
        actual = status["settings"]
        if n["health"] != "up" or n["actual"] != actual or n["boot"] != status["boot"] or detail != n["detail"]:
            if n["health"] != "up":
                log.info("node %s is up (agent boot %s)", node_id, status["boot"])
            self._record(MarkNode(node_id, True, {k: str(v) for k, v in actual.items()}, status["boot"], detail))

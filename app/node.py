"""The grid hosted in a cluster node: ``[app] plugin = "app.node:attach"`` in its config.

Every PC runs one node process holding a cluster member, its agent, and a watcher of
its copy of the layout file; the member that is the Raft leader also runs the
controller (started and stopped by the leader hooks). Settings of the ``[app]`` table:

    layout = "layout.toml"    # relative to the node's config file; optional
    interval = 0.5            # seconds between controller cycles
    down_after = 1.0          # seconds without an answer before a node is marked down
"""
from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from app.agent import Agent, AgentLink
from app.controller import Controller
from app.layout import LayoutError, LayoutUndelivered, LayoutWatcher, file_digest, read_layout
from app.model import ApplyLayout, GridError, GridView, LayoutUnchanged, RefuseLayout
from prevalence.errors import OutcomeUnknown, PrevalenceError
from rpc.config import ConfigError, format_address

if TYPE_CHECKING:
    from rpc.server import NodeProcess

log = logging.getLogger("app.node")
KNOWN = {"layout", "interval", "down_after"}
ANSWER_MAX = 5.0  # seconds: an agent's answer later than this is none


def attach(process: "NodeProcess", settings: dict[str, Any]) -> "GridApp":
    return GridApp(process, settings)


class GridApp:
    def __init__(self, process: "NodeProcess", settings: dict[str, Any]):
        where = f"{process.cfg.path}: [app]"
        extra = sorted(set(settings) - KNOWN)
        if extra:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(extra)} (known: {', '.join(sorted(KNOWN))})")
        self.interval = _seconds(settings, "interval", 0.5, where, 0.05, 60.0)
        self.down_after = _seconds(settings, "down_after", 1.0, where, 0.1, 3600.0)
        # an agent's answer is waited for as long as down_after allows (a slow PC is not a
        # dead one), but not longer than ANSWER_MAX: until a hung node is recorded down,
        # each cycle waits that long for it before the next pushes to the others
        self.answer_within = min(max(1.0, self.down_after), ANSWER_MAX)
        layout = settings.get("layout")
        if layout is not None and not isinstance(layout, str):
            raise ConfigError(f"{where}: 'layout' must be a file name, got {layout!r}")
        self.layout_path = os.path.join(os.path.dirname(process.cfg.path), layout) if layout else None
        self.process = process
        self.agent = Agent(process.cfg.id)
        self.agent.register(process.handlers)
        self.controller: Controller | None = None
        self._lock = threading.Lock()
        self._client = None
        process.leader_hooks.append((self._lead, self._follow))
        self.watcher = None
        if self.layout_path:
            # the copy as it is now is no edit (the grid may have a newer layout from another
            # PC): a touch, or a backup tool closing it unchanged, must not send it
            self.watcher = LayoutWatcher(self.layout_path, self._submit_layout, self._refuse_layout).start(
                file_digest(self.layout_path))

    # -- leader hooks (on the node's apply thread: start and stop threads, never wait) -------
    def _lead(self) -> None:
        node = self.process.node
        with self._lock:
            if self.controller is not None:
                self.controller.stop()
            self.controller = Controller(
                lambda first: node.query(GridView(), timeout=5.0, linearizable=first),
                lambda tx: node.execute(tx, timeout=5.0),
                lambda node_id, address: AgentLink(node_id, address, self.process.client_key,
                                                   timeout=self.answer_within, ssl_context=self.process.client_tls),
                interval=self.interval, down_after=self.down_after,
                before_first=self._first_layout, fence=self._fence).start()

    def _fence(self) -> tuple[int, int]:
        """This leader's (epoch, term), the token of its pushes (app.agent); read on the
        controller's thread (status waits for the raft loop)."""
        st = self.process.node.status()
        if st["role"] != "leader":
            raise GridError(f"not the master now ({st['role']} in term {st['term']})")
        return self.process.identity.epoch, st["term"]

    def _follow(self) -> None:
        with self._lock:
            if self.controller is not None:
                self.controller.stop()
                self.controller = None

    def _first_layout(self, view: dict) -> None:
        """A grid that never had a layout takes the first leader's layout file."""
        if view["layout_digest"] or not self.layout_path:
            return
        try:
            layout = read_layout(self.layout_path)
            result = self.process.node.execute(layout, timeout=5.0)
            log.info("initial layout %s applied: %d nodes", self.layout_path, len(result["added"]))
        except LayoutUnchanged:
            pass
        except (LayoutError, GridError) as exc:
            log.error("initial layout not applied, nothing changed: %s", exc)
            try:
                self.process.node.execute(RefuseLayout(self.process.cfg.id, str(exc)), timeout=5.0)
            except PrevalenceError as failed:
                log.warning("the refusal of the initial layout was not recorded: %s", failed)

    # -- the layout file -------------------------------------------------------------------
    def _submit_layout(self, layout: ApplyLayout) -> None:
        """Any node's watcher may submit: the leader applies it, the same edit seen by other
        nodes (one machine, one file) is refused as unchanged."""
        for attempt in range(3):
            try:
                result = self._cluster().execute(layout, timeout=10.0)
                break
            except LayoutUnchanged:
                log.info("layout %s: already applied", self.layout_path)
                return
            except OutcomeUnknown as exc:  # sent, answer lost: the digest makes a second send harmless
                log.warning("layout %s: no answer, sending it again: %s", self.layout_path, exc)
                last = exc
            except PrevalenceError as exc:  # no master now (a failover, a majority down): not refused
                raise LayoutUndelivered(f"no master took it: {exc}") from None
        else:
            raise LayoutUndelivered(f"no master confirmed it (it may have been applied): {last}")
        log.info("layout %s applied: added %s, removed %s, changed %s", self.layout_path,
                 result["added"] or "none", result["removed"] or "none", result["changed"] or "none")

    def _refuse_layout(self, message: str, digest: str) -> None:
        """Record the refusal in the replicated state, where ``grid show`` and the window
        read it; the same file refused by several nodes' watchers is recorded once."""
        try:
            self._cluster().execute(RefuseLayout(self.process.cfg.id, message, digest), timeout=10.0)
        except LayoutUnchanged:
            pass
        except PrevalenceError as exc:  # no master now: the watcher checks the file again later
            raise LayoutUndelivered(f"no master recorded it: {exc}") from None
        except GridError as exc:
            log.warning("the layout refusal was not recorded (only this log has it): %s", exc)

    def _cluster(self):
        from rpc.client import ClusterClient

        with self._lock:
            if self._client is None:
                cfg = self.process.cfg
                addresses = [format_address(a) for a in cfg.peers.values()]
                self._client = ClusterClient(addresses, self.process.client_key, timeout=10.0,
                                             ssl_context=self.process.client_tls)
            return self._client

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
        with self._lock:
            controller, self.controller = self.controller, None
            client, self._client = self._client, None
        if controller is not None:
            controller.stop(wait=2.0)
        if client is not None:
            client.close()


def _seconds(settings: dict, key: str, default: float, where: str, low: float, high: float) -> float:
    """A duration from the config, bounded: a controller cycling every nanosecond burns the
    leader's CPU, one every hour (or never: inf, nan) never acts."""
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:  # nan too
        raise ConfigError(f"{where}: '{key}' must be from {low:g} to {high:g} seconds, got {value!r}")
    return float(value)

"""Everything the window needs from the cluster, done off the Tk thread.

The window never touches the network: it calls ``set_settings``/``apply_preset``
(queued, run one after the other on a worker thread through the client's exactly-once
path) and reads what the workers put in ``updates``:

- ``("view", view)``     the grid with master and term, after any committed change;
- ``("connection", state, text)``  state is connected | reconnecting | unreachable;
- ``("busy", text)``, ``("result", text)``, ``("error", text)``  for commands.

The grid is re-read when the subscription delivers a committed transaction (many
events in a burst cause one read), not on a timer. A small status call each second
to the master itself tells the connection state; it is what notices a dead master first.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.model import ApplyPreset, GridView, SetSettings
from app.view import with_cluster
from rpc.config import parse_address
from rpc.transport import NodeLink

log = logging.getLogger("app.ui")


def describe(exc: BaseException) -> str:
    """An error as one line for the operator: its type and message, never a traceback."""
    text = str(exc) or type(exc).__name__
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"


class UiSession:
    def __init__(self, client: Any, secret: bytes, *, ssl_context: Any = None, status_every: float = 0.5):
        self.client = client
        self._secret, self._ssl = secret, ssl_context
        self.updates: queue.SimpleQueue = queue.SimpleQueue()
        self.status_every = status_every
        self.connection = ("reconnecting", "connecting...")
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._commands = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ui-command")
        self._subscription = None
        self._threads = [threading.Thread(target=self._refresher, name="ui-refresh", daemon=True),
                         threading.Thread(target=self._monitor, name="ui-status", daemon=True),
                         threading.Thread(target=self._subscribe, name="ui-subscribe", daemon=True)]

    def start(self) -> "UiSession":
        self._dirty.set()
        for t in self._threads:
            t.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._dirty.set()
        if self._subscription is not None:
            self._subscription.close()
        self._commands.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    # -- commands --------------------------------------------------------------------------
    def set_settings(self, targets: list[str], settings: dict[str, str]) -> None:
        what = f"set {' '.join(f'{k}={v}' for k, v in settings.items())} on {', '.join(targets)}"
        self._submit(what, SetSettings(tuple(targets), settings))

    def apply_preset(self, name: str, targets: list[str]) -> None:
        self._submit(f"apply preset {name} to {', '.join(targets)}", ApplyPreset(name, tuple(targets)))

    def _submit(self, what: str, tx: Any) -> None:
        def run() -> None:
            self.updates.put(("busy", f"sending: {what}..."))
            try:
                changed = self.client.execute(tx, timeout=30.0)
            except Exception as exc:  # noqa: BLE001 - shown in the window, the session goes on
                self.updates.put(("error", f"{what}: {describe(exc)}"))
            else:
                self.updates.put(("result", f"done: {what} ({len(changed)} node{'s' if len(changed) != 1 else ''})"))
                self._dirty.set()

        self._commands.submit(run)

    # -- workers ---------------------------------------------------------------------------
    def _subscribe(self) -> None:
        """Wake the refresher on every committed transaction (or a compaction notice)."""
        while not self._stop.is_set():
            try:
                self._subscription = self.client.subscribe(lambda _event: self._dirty.set())
                return
            except Exception as exc:  # noqa: BLE001 - no cluster yet: the monitor says so
                log.info("subscription not started yet: %s", exc)
                self._stop.wait(1.0)

    def _refresher(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.is_set():
                return
            self._dirty.clear()
            try:
                view = self.client.query(GridView(), timeout=10.0)
                self.updates.put(("view", with_cluster(view, self.client.status())))
            except Exception as exc:  # noqa: BLE001 - retried when the cluster is back
                log.info("grid not read: %s", exc)
                self._stop.wait(0.5)
                self._dirty.set()

    def _monitor(self) -> None:
        """Keep a status line open to the master itself: when it dies the call fails at once
        and the window says so, however fast the election that follows."""
        watch = MasterWatch(self.client.addresses, self._secret, self._ssl)
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                state = watch.check()
                if state != self.connection:
                    if state[0] == "connected" and self.connection[0] != "connected":
                        self._dirty.set()  # a new master: re-read the grid
                    self.connection = state
                    self.updates.put(("connection", *state))
                wait = self.status_every if state[0] == "connected" else 0.1
                self._stop.wait(max(0.0, wait - (time.monotonic() - began)))
        finally:
            watch.close()


class MasterWatch:
    """Which node is master, asked of the master itself over a connection kept open."""

    def __init__(self, addresses: list[str], secret: bytes, ssl_context: Any = None, timeout: float = 1.0):
        self._links = [NodeLink(parse_address(a, "address"), secret, ident="ui", timeout=timeout,
                                connect_timeout=min(0.3, timeout), ssl_context=ssl_context) for a in addresses]
        self._master: NodeLink | None = None  # the link to the node that said it leads
        self.master: str | None = None

    def check(self) -> tuple[str, str]:
        if self._master is not None:
            try:
                st = _status(self._master)
                if st["role"] == "leader":
                    return _connected(st)
                lost = f"{st['id']} is no longer master"
            except Exception as exc:  # noqa: BLE001 - a dead or hung master: look for the next
                lost = f"lost master {self.master}: {describe(exc)}"
            self.close()
            return ("reconnecting", f"reconnecting: {lost}")
        for link in self._links:  # no master known: ask each node once
            try:
                st = _status(link)
            except Exception:  # noqa: BLE001 - that node is down too: try the next
                continue
            if st["role"] == "leader":
                self._master, self.master = link, st["id"]
                return _connected(st)
            link.close()
        return ("reconnecting", "reconnecting: no master yet, an election is running")

    def close(self) -> None:
        for link in self._links:
            link.close()
        self._master = None


def _connected(st: dict) -> tuple[str, str]:
    return ("connected", f"connected to master {st['id']} at {st['address']}, term {st['term']}")


def _status(link: NodeLink) -> dict:
    reply = link.call("status")
    if reply[0] != "ok":
        raise ConnectionError(reply[-1])
    return reply[1]

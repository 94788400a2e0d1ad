"""A work-order board: the domain of docs/tutorial.md, from one process to a cluster.

Technicians' work orders are opened, assigned and closed. The board is the root
object; it changes only through the transactions below. ``attach`` is a node plugin
(``[app] plugin = "workorders:attach"``) that dispatches new orders from the leader.

Run it embedded, twice with the same directory, to see the state recovered:
    python3 examples/workorders.py /tmp/board
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgpack

import prevalence

log = logging.getLogger("workorders")


# -- the root: plain Python objects -----------------------------------------------------------
@dataclass
class Order:  # part of the state, not a transaction: it need not be frozen
    id: int
    title: str
    priority: int
    code: str  # a pickup code, drawn with ctx.random
    opened: datetime
    assignee: str = ""
    closed: datetime | None = None
    dispatched_by: str = ""  # the node whose dispatcher sent it out (step 5)

    @property
    def state(self) -> str:
        return "closed" if self.closed else "assigned" if self.assignee else "open"

    def view(self) -> dict:  # plain data: what queries return to clients
        return {"id": self.id, "title": self.title, "priority": self.priority, "code": self.code,
                "state": self.state, "assignee": self.assignee, "opened": self.opened.isoformat(),
                "closed": self.closed.isoformat() if self.closed else None, "dispatched_by": self.dispatched_by}


class Board:
    def __init__(self) -> None:
        self.orders: dict[int, Order] = {}

    def order(self, order_id: int) -> Order:
        try:
            return self.orders[order_id]
        except KeyError:
            raise BoardError(f"no work order {order_id}") from None


class BoardError(Exception):
    """A command that does not fit the board. Constructible from one message, so a
    cluster client gets this same type back."""


# -- transactions ----------------------------------------------------------------------------
@dataclass(frozen=True)
class OpenOrder(prevalence.Transaction, name="workorders.OpenOrder", version=2):
    """Version 1 had no priority; journals written by it are read through ``upgrade``."""

    title: str
    priority: int = 2

    @classmethod
    def upgrade(cls, fields: dict, version: int) -> dict:
        if version == 1:
            fields["priority"] = 2
        return fields

    def check(self, root: Board) -> None:
        if not self.title.strip():
            raise BoardError("a work order needs a title")
        if not 1 <= self.priority <= 3:
            raise BoardError(f"priority must be 1, 2 or 3, got {self.priority}")

    def execute(self, root: Board, ctx: prevalence.Context) -> int:
        order_id = ctx.index  # unique and identical on every replay: no counter to keep
        code = f"{ctx.random.randrange(10_000):04d}"
        root.orders[order_id] = Order(order_id, self.title, self.priority, code, opened=ctx.now)
        return order_id


@dataclass(frozen=True)
class Assign(prevalence.Transaction, name="workorders.Assign"):
    order: int
    technician: str

    def check(self, root: Board) -> None:
        if root.order(self.order).closed:
            raise BoardError(f"work order {self.order} is closed")

    def execute(self, root: Board, ctx: prevalence.Context) -> None:
        root.orders[self.order].assignee = self.technician


@dataclass(frozen=True)
class Close(prevalence.Transaction, name="workorders.Close"):
    order: int

    def check(self, root: Board) -> None:
        o = root.order(self.order)
        if o.closed:
            raise BoardError(f"work order {self.order} is already closed")
        if not o.assignee:
            raise BoardError(f"work order {self.order} was never assigned")

    def execute(self, root: Board, ctx: prevalence.Context) -> str:
        root.orders[self.order].closed = ctx.now
        return ctx.now.isoformat()


@dataclass(frozen=True)
class CloseAllUnchecked(prevalence.Transaction, name="workorders.CloseAllUnchecked"):
    """A counter-example: no ``check``, so ``execute`` can fail half-way. The orders it
    closed before the failure stay closed, on every replica and on every replay."""

    orders: tuple[int, ...]

    def execute(self, root: Board, ctx: prevalence.Context) -> None:
        for order_id in self.orders:
            root.order(order_id).closed = ctx.now  # raises BoardError at an unknown id


@dataclass(frozen=True)
class MarkDispatched(prevalence.Transaction, name="workorders.MarkDispatched"):
    """Recorded by the leader's dispatcher once an order was sent out (step 5)."""

    order: int
    node: str

    def check(self, root: Board) -> None:
        if root.order(self.order).dispatched_by:
            raise BoardError(f"work order {self.order} was dispatched already")

    def execute(self, root: Board, ctx: prevalence.Context) -> None:
        root.orders[self.order].dispatched_by = self.node


# -- queries ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Orders(prevalence.Query, name="workorders.Orders"):
    state: str = ""  # "", "open", "assigned" or "closed"

    def run(self, root: Board) -> list[dict]:
        return [o.view() for o in root.orders.values() if not self.state or o.state == self.state]


@dataclass(frozen=True)
class Undispatched(prevalence.Query, name="workorders.Undispatched"):
    def run(self, root: Board) -> list[dict]:
        return [o.view() for o in root.orders.values() if not o.dispatched_by]


# -- step 5: a leader-only side effect, hosted in the node ------------------------------------
def attach(process: Any, settings: dict[str, Any]) -> "Dispatcher":
    """``[app] plugin = "workorders:attach"``: called with the NodeProcess and the other
    keys of the ``[app]`` table before the node starts."""
    return Dispatcher(process, settings)


class Dispatcher:
    """Sends every new work order out once it is committed, from the leader only.

    "Sending" writes ``outbox/order-<id>.json`` (a stand-in for a printer, an e-mail or
    a ticket system). It is idempotent: the file's content comes from the replicated
    state, and it is written whole under its final name, so a new leader that sends an
    order again (its predecessor died after writing, before ``MarkDispatched`` committed)
    leaves the same file.
    """

    KNOWN = {"outbox", "interval"}

    def __init__(self, process: Any, settings: dict[str, Any]):
        from rpc.config import ConfigError

        extra = sorted(set(settings) - self.KNOWN)
        if extra:
            raise ConfigError(f"{process.cfg.path}: [app]: unknown field(s) {', '.join(extra)}")
        self.process = process
        self.outbox = os.path.join(os.path.dirname(process.cfg.path), settings.get("outbox", "outbox"))
        self.interval = float(settings.get("interval", 0.2))
        self.sent = 0
        self._stop: threading.Event | None = None
        self._lock = threading.Lock()
        process.leader_hooks.append((self._lead, self._follow))
        process.handlers["workorders.dispatcher"] = self._status

    # Leader hooks run on the node's apply thread: start or stop a thread, never wait.
    def _lead(self) -> None:
        with self._lock:
            if self._stop is not None:
                self._stop.set()
            self._stop = stop = threading.Event()
        threading.Thread(target=self._run, args=(stop,), name="dispatcher", daemon=True).start()

    def _follow(self) -> None:
        with self._lock:
            if self._stop is not None:
                self._stop.set()
                self._stop = None

    def _run(self, stop: threading.Event) -> None:
        node = self.process.node
        log.info("dispatcher started: this node leads")
        while not stop.wait(self.interval):
            try:
                pending = node.query(Undispatched(), timeout=5.0)  # linearizable: never a stale view
                for order in pending:
                    if stop.is_set():
                        break
                    self._send(order)
                    try:
                        node.execute(MarkDispatched(order["id"], self.process.cfg.id), timeout=5.0)
                    except BoardError:
                        pass  # another leader's dispatcher recorded it first
                    self.sent += 1
            except Exception as exc:  # noqa: BLE001 - e.g. leadership lost mid-cycle
                if not stop.is_set():
                    log.warning("dispatch cycle failed: %s", exc)
        log.info("dispatcher stopped")

    def _send(self, order: dict) -> None:
        os.makedirs(self.outbox, exist_ok=True)
        path = os.path.join(self.outbox, f"order-{order['id']}.json")
        body = {k: order[k] for k in ("id", "title", "priority", "code", "opened")}
        tmp = f"{path}.{self.process.cfg.id}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(body, f, sort_keys=True)
        os.replace(tmp, path)  # whole or not at all; the same content every time

    def _status(self, data: bytes) -> bytes:  # an app_call handler: bytes in, bytes out
        return msgpack.packb({"node": self.process.cfg.id, "leading": self.process.node.is_leader,
                              "sent": self.sent})

    def close(self) -> None:  # runs when the node stops
        self._follow()


def main() -> int:
    import tempfile

    data = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="board-")
    with prevalence.open(data, Board) as db:
        print(f"opened {data} at index {db.last_index} with {len(db.query(Orders()))} orders")
        order = db.execute(OpenOrder("replace the lobby lamp", priority=1))
        db.execute(Assign(order, "ada"))
        print(f"order {order}: {db.query(Orders())[-1]}")
        try:
            db.execute(Close(12345))
        except BoardError as exc:
            print(f"rejected by check(), nothing journaled: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

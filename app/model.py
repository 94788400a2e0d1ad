"""The grid's replicated state and every transaction and query that touches it.

The root is plain objects: the grid's size, its nodes (address, position, desired
settings, health as the master observed it) and named presets. Nothing else changes
them: the operator's commands, the layout file and the controller's observations all
arrive here as journaled transactions, so every replica holds the same grid.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable

import prevalence
from app.settings import SettingsError, Value, normalize

MAX_SIDE = 32
# What new input must be (the CLI, a layout file): whole, ASCII. ``$`` alone lets a
# trailing line break in, ``\d`` any script's digits.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}", re.ASCII)
_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})", re.ASCII)
# What a journaled entry is checked against when it is applied: the rule it was accepted
# under, unchanged, so that every release rebuilds the same state from a journal and a
# snapshot alike (docs/tutorial.md, "Rules are part of the journal too"). What such a
# name could do to a terminal, grid show's rendering undoes.
_ID_APPLIED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_ADDRESS_APPLIED = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


class GridError(ValueError):
    """A command that does not fit the grid: unknown node, taken position, bad layout."""


class LayoutUnchanged(GridError):
    """This version of the layout file is the one already applied."""


@dataclass
class GridNode:
    id: str
    address: str
    row: int
    column: int
    desired: dict[str, Value] = field(default_factory=dict)
    health: str = "unknown"  # up | down | unknown (never heard from since it was added)
    since: datetime | None = None  # journal time of the last health change
    actual: dict[str, Value] | None = None  # what its agent last reported
    boot: str = ""  # the agent's boot id: a new one means the agent restarted empty
    detail: str = ""  # why it is down, or what the controller last did

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "address": self.address, "row": self.row, "column": self.column,
                "desired": dict(self.desired), "actual": None if self.actual is None else dict(self.actual),
                "health": self.health, "since": self.since.isoformat() if self.since else None,
                "in_sync": self.actual == self.desired, "boot": self.boot, "detail": self.detail}


@dataclass
class LayoutRefusal:
    """A layout edit a node refused, kept until a valid layout is applied."""

    node: str  # whose copy of the file it was
    reason: str  # the file and the problem
    digest: str  # of the refused content: the same file seen by other watchers is one refusal
    at: datetime

    def view(self) -> dict[str, Any]:
        return {"node": self.node, "reason": self.reason, "digest": self.digest, "at": self.at.isoformat()}


class Grid:
    """The root object of the master's state."""

    layout_refusal: LayoutRefusal | None = None  # a class default: snapshots from before it existed

    def __init__(self) -> None:
        self.rows = 3
        self.columns = 3
        self.nodes: dict[str, GridNode] = {}
        self.presets: dict[str, dict[str, Value]] = {}
        self.layout_digest = ""  # of the layout file last applied
        self.layout_refusal = None

    def node(self, node_id: str) -> GridNode:
        try:
            return self.nodes[node_id]
        except KeyError:
            known = ", ".join(sorted(self.nodes)) or "none"
            raise GridError(f"no node {node_id!r} in the grid (nodes: {known})") from None

    def at(self, row: int, column: int) -> GridNode | None:
        return next((n for n in self.nodes.values() if (n.row, n.column) == (row, column)), None)

    def select(self, targets: Iterable[str]) -> list[GridNode]:
        """Node ids, or ``all``, ``row:N``, ``column:N`` (rows and columns count from 1)."""
        chosen: dict[str, GridNode] = {}
        for target in targets:
            kind, _, number = target.partition(":")
            if target == "all":
                picked = list(self.nodes.values())
            elif kind in ("row", "column", "col") and number.isdigit():
                try:
                    n = int(number)
                except ValueError:  # "²" is a digit to isdigit(), not to int(): no such row
                    raise GridError(f"no node {target!r} in the grid") from None
                picked = [g for g in self.nodes.values() if (g.row if kind == "row" else g.column) == n]
                if not picked:
                    raise GridError(f"{target}: no node there (the grid is {self.rows}x{self.columns})")
            else:
                picked = [self.node(target)]
            chosen.update((g.id, g) for g in picked)
        if not chosen:
            raise GridError("no node selected (give node ids, all, row:N or column:N)")
        return sorted(chosen.values(), key=lambda g: (g.row, g.column, g.id))


# -- checks shared by the layout file and the transactions -----------------------------------
def check_size(rows: int, columns: int) -> None:
    for name, v in (("rows", rows), ("columns", columns)):
        if not 1 <= v <= MAX_SIDE:
            raise GridError(f"{name} must be from 1 to {MAX_SIDE}, got {v}")


def check_name(name: str, what: str = "node id") -> None:
    """A new name (a node id, a preset's), checked whole and in ASCII."""
    if not _ID.fullmatch(name):
        raise GridError(f"{what} {name!r} must be 1-32 letters, digits, '_', '.' or '-'")


def check_node(node_id: str, address: str, row: int, column: int, rows: int, columns: int, *,
               strict: bool = False) -> None:
    """``strict``: new input (a layout file, the CLI); else a journaled entry's rule."""
    if not (_ID.fullmatch(node_id) if strict else _ID_APPLIED.match(node_id)):
        raise GridError(f"node id {node_id!r} must be 1-32 letters, digits, '_', '.' or '-'")
    m = _ADDRESS.fullmatch(address) if strict else _ADDRESS_APPLIED.match(address)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise GridError(f"node {node_id}: address {address!r} must be HOST:PORT")
    if not (1 <= row <= rows and 1 <= column <= columns):
        raise GridError(f"node {node_id}: position ({row}, {column}) is outside the {rows}x{columns} grid")


@dataclass(frozen=True)
class NodeSpec:
    id: str
    address: str
    row: int
    column: int


def check_layout(rows: int, columns: int, nodes: Iterable[NodeSpec], *, strict: bool = False) -> None:
    check_size(rows, columns)
    seen_ids: dict[str, NodeSpec] = {}
    seen_at: dict[tuple[int, int], str] = {}
    for n in nodes:
        check_node(n.id, n.address, n.row, n.column, rows, columns, strict=strict)
        if n.id in seen_ids:
            raise GridError(f"node {n.id} is listed twice")
        if (n.row, n.column) in seen_at:
            raise GridError(f"nodes {seen_at[(n.row, n.column)]} and {n.id} are both at ({n.row}, {n.column})")
        seen_ids[n.id] = n
        seen_at[(n.row, n.column)] = n.id


def _settings(raw: dict[str, str]) -> dict[str, Value]:
    try:
        return normalize(raw)
    except SettingsError as exc:
        raise GridError(str(exc)) from None


def _merge(root: Grid, targets: Iterable[str], values: dict[str, Value]) -> list[str]:
    chosen = root.select(targets)
    for g in chosen:
        g.desired.update(values)
    return [g.id for g in chosen]


# -- transactions --------------------------------------------------------------------------
@dataclass(frozen=True)
class ApplyLayout(prevalence.Transaction, name="grid.ApplyLayout"):
    """The layout file's content: nodes not listed are removed, new ones added, others moved;
    desired settings of the nodes that stay are kept. It clears a recorded refusal, so the
    file saved back as it was after a refused edit is taken (changing nothing else)."""

    rows: int
    columns: int
    nodes: tuple[NodeSpec, ...]
    digest: str = ""

    def check(self, root: Grid) -> None:
        if self.digest and self.digest == root.layout_digest and root.layout_refusal is None:
            raise LayoutUnchanged(f"layout {self.digest} is already applied")
        check_layout(self.rows, self.columns, self.nodes)

    def execute(self, root: Grid, ctx: prevalence.Context) -> dict:
        wanted = {n.id: n for n in self.nodes}
        removed = sorted(set(root.nodes) - set(wanted))
        for node_id in removed:
            del root.nodes[node_id]
        added, changed = [], []
        for spec in self.nodes:
            g = root.nodes.get(spec.id)
            if g is None:
                root.nodes[spec.id] = GridNode(spec.id, spec.address, spec.row, spec.column, since=ctx.now)
                added.append(spec.id)
            elif (g.address, g.row, g.column) != (spec.address, spec.row, spec.column):
                g.address, g.row, g.column = spec.address, spec.row, spec.column
                changed.append(spec.id)
        root.rows, root.columns, root.layout_digest = self.rows, self.columns, self.digest
        root.layout_refusal = None
        return {"added": added, "removed": removed, "changed": changed}


@dataclass(frozen=True)
class RefuseLayout(prevalence.Transaction, name="grid.RefuseLayout"):
    """A node's watcher refused an edit of its layout file: recorded, so that operators see it
    (``grid show``, the window) and not only that node's log. Nothing else changes."""

    node: str
    reason: str
    digest: str = ""

    def check(self, root: Grid) -> None:
        r = root.layout_refusal
        if r is not None and self.digest and r.digest == self.digest:
            raise LayoutUnchanged(f"the refusal of layout {self.digest} is already recorded")

    def execute(self, root: Grid, ctx: prevalence.Context) -> None:
        root.layout_refusal = LayoutRefusal(self.node, self.reason[:2000], self.digest, ctx.now)


@dataclass(frozen=True)
class AddNode(prevalence.Transaction, name="grid.AddNode"):
    id: str
    address: str
    row: int
    column: int

    def check(self, root: Grid) -> None:
        check_node(self.id, self.address, self.row, self.column, root.rows, root.columns)
        if self.id in root.nodes:
            raise GridError(f"node {self.id} is already in the grid")
        other = root.at(self.row, self.column)
        if other is not None:
            raise GridError(f"position ({self.row}, {self.column}) is taken by {other.id}")

    def execute(self, root: Grid, ctx: prevalence.Context) -> None:
        root.nodes[self.id] = GridNode(self.id, self.address, self.row, self.column, since=ctx.now)


@dataclass(frozen=True)
class RemoveNode(prevalence.Transaction, name="grid.RemoveNode"):
    id: str

    def check(self, root: Grid) -> None:
        root.node(self.id)

    def execute(self, root: Grid, ctx: prevalence.Context) -> None:
        del root.nodes[self.id]


@dataclass(frozen=True)
class MoveNode(prevalence.Transaction, name="grid.MoveNode"):
    id: str
    row: int
    column: int

    def check(self, root: Grid) -> None:
        g = root.node(self.id)
        check_node(g.id, g.address, self.row, self.column, root.rows, root.columns)
        other = root.at(self.row, self.column)
        if other is not None and other.id != self.id:
            raise GridError(f"position ({self.row}, {self.column}) is taken by {other.id}")

    def execute(self, root: Grid, ctx: prevalence.Context) -> None:
        g = root.nodes[self.id]
        g.row, g.column = self.row, self.column


@dataclass(frozen=True)
class SetSettings(prevalence.Transaction, name="grid.SetSettings"):
    """Merge settings into the desired settings of the targets (ids, all, row:N, column:N)."""

    targets: tuple[str, ...]
    settings: dict[str, str]

    def check(self, root: Grid) -> None:
        _settings(self.settings)
        root.select(self.targets)

    def execute(self, root: Grid, ctx: prevalence.Context) -> list[str]:
        return _merge(root, self.targets, _settings(self.settings))


@dataclass(frozen=True)
class DefinePreset(prevalence.Transaction, name="grid.DefinePreset"):
    name: str
    settings: dict[str, str]

    def check(self, root: Grid) -> None:
        if not _ID_APPLIED.match(self.name):  # the journaled rule; new names: check_name
            raise GridError(f"preset name {self.name!r} must be 1-32 letters, digits, '_', '.' or '-'")
        _settings(self.settings)

    def execute(self, root: Grid, ctx: prevalence.Context) -> None:
        root.presets[self.name] = _settings(self.settings)


@dataclass(frozen=True)
class DeletePreset(prevalence.Transaction, name="grid.DeletePreset"):
    name: str

    def check(self, root: Grid) -> None:
        _preset(root, self.name)

    def execute(self, root: Grid, ctx: prevalence.Context) -> None:
        del root.presets[self.name]


def _preset(root: Grid, name: str) -> dict[str, Value]:
    try:
        return root.presets[name]
    except KeyError:
        known = ", ".join(sorted(root.presets)) or "none defined"
        raise GridError(f"no preset {name!r} (presets: {known})") from None


@dataclass(frozen=True)
class ApplyPreset(prevalence.Transaction, name="grid.ApplyPreset"):
    name: str
    targets: tuple[str, ...]

    def check(self, root: Grid) -> None:
        _preset(root, self.name)
        root.select(self.targets)

    def execute(self, root: Grid, ctx: prevalence.Context) -> list[str]:
        return _merge(root, self.targets, _preset(root, self.name))


@dataclass(frozen=True)
class MarkNode(prevalence.Transaction, name="grid.MarkNode"):
    """The controller's observation of a node: up or down, and what its agent reported."""

    id: str
    up: bool
    actual: dict[str, str] | None = None
    boot: str = ""
    detail: str = ""

    def check(self, root: Grid) -> None:
        root.node(self.id)

    def execute(self, root: Grid, ctx: prevalence.Context) -> None:
        g = root.nodes[self.id]
        health = "up" if self.up else "down"
        if g.health != health:
            g.health, g.since = health, ctx.now
        g.actual = lenient(self.actual) if self.up and self.actual is not None else None
        if self.boot:
            g.boot = self.boot
        g.detail = self.detail


def lenient(raw: dict[str, Any]) -> dict[str, Value]:
    """An agent's report, typed like desired settings where it can be (kept as text otherwise)."""
    out: dict[str, Value] = {}
    for k, v in raw.items():
        try:
            out[k] = normalize({k: v})[k]
        except SettingsError:
            out[k] = str(v)
    return out


# -- queries -------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridView(prevalence.Query, name="grid.GridView"):
    """Everything an operator's screen shows, as plain data."""

    def run(self, root: Grid) -> dict:
        nodes = sorted(root.nodes.values(), key=lambda g: (g.row, g.column, g.id))
        return {"rows": root.rows, "columns": root.columns, "nodes": [g.view() for g in nodes],
                "presets": {k: dict(v) for k, v in sorted(root.presets.items())},
                "layout_digest": root.layout_digest,
                "layout_refused": None if root.layout_refusal is None else root.layout_refusal.view()}


@dataclass(frozen=True)
class NodeDetail(prevalence.Query, name="grid.NodeDetail"):
    id: str

    def run(self, root: Grid) -> dict:
        return root.node(self.id).view()

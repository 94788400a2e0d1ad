"""The grid as operators read it: a map of the grid and a table of nodes (``grid show``)."""
from __future__ import annotations

from typing import Any

from tabulate import tabulate

from app.settings import as_text
from prevalence.text import one_line


def with_cluster(view: dict, status: dict) -> dict:
    """The grid view plus who is master, in which term (what ``grid show --json`` prints)."""
    leader = status.get("leader") or (status.get("id") if status.get("role") == "leader" else None)
    nodes = [{**n, "master": n["id"] == leader} for n in view["nodes"]]
    return {**view, "nodes": nodes, "master": leader, "term": status.get("term"), "read_from": status.get("id")}


WIDTH = 80  # a terminal's


def _cell(n: dict[str, Any]) -> str:
    mark = " (master)" if n.get("master") else ""
    state = n["health"] + ("" if n["health"] != "up" else ", in sync" if n["in_sync"] else ", pending")
    return f"{n['id']}{mark}\n{state}"


def _short_cell(n: dict[str, Any]) -> str:
    """n1* (master), n2! (not up), n3~ (pending), n4 (up, in sync)."""
    mark = "*" if n.get("master") else ""
    return n["id"] + mark + ("!" if n["health"] != "up" else "" if n["in_sync"] else "~")


def _map(view: dict) -> list[str]:
    """The grid as a map, in full, or compact if that is too wide, or a note if even that is."""
    by_pos = {(n["row"], n["column"]): n for n in view["nodes"]}
    for cell, note in ((_cell, []), (_short_cell, ["* master, ! not up, ~ settings pending"])):
        grid = [[cell(by_pos[(r, c)]) if (r, c) in by_pos else "-"
                 for c in range(1, view["columns"] + 1)] for r in range(1, view["rows"] + 1)]
        text = tabulate(grid, tablefmt="grid")
        if max(len(line) for line in text.splitlines()) <= WIDTH:
            return [text] + note
    return [f"(a {view['rows']}x{view['columns']} map does not fit {WIDTH} columns; the table follows)"]


def _lines(settings: dict[str, Any] | None) -> str:
    """One setting a line: a cell stays narrow however many settings there are."""
    return "\n".join(one_line(f"{k}={settings[k]}", None) for k in sorted(settings)) if settings else "-"


def _difference(n: dict[str, Any]) -> str:
    """What the agent runs, only where it differs from the desired settings."""
    if n["actual"] is None:
        return "unknown"
    if n["actual"] == n["desired"]:
        return "same"
    diff = {k: v for k, v in n["actual"].items() if n["desired"].get(k) != v}
    unset = [f"{k} unset" for k in sorted(n["desired"]) if k not in n["actual"]]
    return "\n".join(filter(None, [_lines(diff) if diff else "", *unset]))


def _table(view: dict) -> str:
    headers = ["node", "pos", "health", "desired", "actual", "detail"]
    rows = [[n["id"] + (" *" if n.get("master") else ""), f"{n['row']},{n['column']}", n["health"],
             _lines(n["desired"]), _difference(n), one_line(n["detail"] or "", None)] for n in view["nodes"]]
    widths = [max((len(line) for r in rows for line in str(r[k]).splitlines() or [""]), default=1) or 1
              for k in range(3, 6)]  # default: a grid whose layout lists no node
    while True:  # narrow the widest wrapped column until the table fits
        text = tabulate(rows, headers=headers, maxcolwidths=[None, None, None, *widths])
        k = max(range(3), key=lambda i: widths[i])
        if max(len(line) for line in text.splitlines()) <= WIDTH or widths[k] <= 8:
            return text
        widths[k] -= 1


def _printable(value: Any) -> Any:
    """``value`` with every non-printable character of its text a '?': any client can
    journal a node's detail, settings or a layout refusal (MarkNode, RefuseLayout), and an
    escape sequence or line break printed as it is drives the operator's terminal."""
    if isinstance(value, str):
        return value if value.isprintable() else "".join(c if c.isprintable() else "?" for c in value)
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable(v) for v in value]
    return value


def render(view: dict) -> str:
    view = _printable(view)
    if view.get("master"):
        first = f"grid {view['rows']}x{view['columns']}, master {view['master']} (term {view.get('term', '?')})"
    else:  # a node's own copy (--consistency local): nothing has checked the nodes since a master did
        read_from = view.get("read_from")
        copy = f"{one_line(read_from, 100)}'s copy" if isinstance(read_from, str) else "a node's copy"
        first = (f"grid {view['rows']}x{view['columns']}, no master now (term {view.get('term', '?')}): {copy}, "
                 "health and settings as the last master recorded them")
    lines = [first, *_map(view), "", _table(view)]
    refused = view.get("layout_refused")
    if refused:
        lines += ["", f"layout edit refused on {refused['node']} at {refused['at'][:19].replace('T', ' ')} UTC, "
                      f"the grid keeps its layout: {one_line(str(refused['reason']), None)}"]  # one line to grep
    if view.get("presets"):
        lines += ["", "presets:"] + [f"  {k}: {as_text(v)}" for k, v in view["presets"].items()]
    return "\n".join(lines)

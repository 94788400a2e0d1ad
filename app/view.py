"""The grid as operators read it: a map of the grid and a table of nodes (``grid show``)."""
from __future__ import annotations

from typing import Any

from tabulate import tabulate

from app.settings import as_text


def with_cluster(view: dict, status: dict) -> dict:
    """The grid view plus who is master, in which term (what ``grid show --json`` prints)."""
    leader = status.get("leader") or (status.get("id") if status.get("role") == "leader" else None)
    nodes = [{**n, "master": n["id"] == leader} for n in view["nodes"]]
    return {**view, "nodes": nodes, "master": leader, "term": status.get("term")}


def _cell(n: dict[str, Any]) -> str:
    mark = " (master)" if n.get("master") else ""
    state = n["health"] + ("" if n["health"] != "up" else ", in sync" if n["in_sync"] else ", pending")
    return f"{n['id']}{mark}\n{state}"


def render(view: dict) -> str:
    by_pos = {(n["row"], n["column"]): n for n in view["nodes"]}
    grid = [[_cell(by_pos[(r, c)]) if (r, c) in by_pos else "(empty)"
             for c in range(1, view["columns"] + 1)] for r in range(1, view["rows"] + 1)]
    lines = [f"grid {view['rows']}x{view['columns']}, master {view.get('master') or 'unknown'} "
             f"(term {view.get('term', '?')})",
             tabulate(grid, tablefmt="grid"), ""]
    rows = [[n["id"] + (" *" if n.get("master") else ""), f"{n['row']},{n['column']}", n["health"],
             as_text(n["desired"]), "-" if n["actual"] is None else as_text(n["actual"]),
             "yes" if n["in_sync"] else "no", n["detail"]] for n in view["nodes"]]
    lines.append(tabulate(rows, headers=["node", "pos", "health", "desired", "actual", "in sync", "detail"]))
    refused = view.get("layout_refused")
    if refused:
        lines += ["", f"layout edit refused on {refused['node']} at {refused['at'][:19].replace('T', ' ')} UTC, "
                      f"the grid keeps its layout: {refused['reason']}"]
    if view.get("presets"):
        lines += ["", "presets: " + "; ".join(f"{k}: {as_text(v)}" for k, v in view["presets"].items())]
    return "\n".join(lines)

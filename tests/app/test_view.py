"""`grid show` as a terminal shows it: 80 columns, actual settings only where they differ."""
from __future__ import annotations

from app.view import render

SETTINGS = {"power": "on", "volume": 40, "brightness": 70, "content": "evening news from the studio"}


def node(k: int, rows: int, columns: int, **over) -> dict:
    n = {"id": f"n{k + 1}", "address": f"127.0.0.1:{7100 + k}", "row": k // columns + 1, "column": k % columns + 1,
         "desired": dict(SETTINGS), "actual": dict(SETTINGS), "health": "up", "in_sync": True, "boot": "b",
         "detail": "", "master": k == 0}
    n.update(over)
    return n


def view(rows: int, columns: int, **changed) -> dict:
    nodes = [node(k, rows, columns, **changed.get(f"n{k + 1}", {})) for k in range(rows * columns)]
    return {"rows": rows, "columns": columns, "nodes": nodes, "master": "n1", "term": 3, "presets": {},
            "layout_refused": None}


def test_every_line_fits_80_columns_and_only_differences_are_shown():
    drifting = {**SETTINGS, "volume": 12}
    out = render(view(3, 3, n5={"actual": drifting, "in_sync": False},
                      n7={"health": "down", "actual": None, "in_sync": False,
                          "detail": "127.0.0.1:7106: cannot connect: Connection refused (since 12:00:01)"}))
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, "\n" + out
    rows = block(lines, "n5")
    assert "volume=12" in rows and rows.count("power=on") == 1  # the difference, not every setting again
    assert "127.0.0.1:7106: cannot" in block(lines, "n7") and "12:00:01)" in block(lines, "n7")  # wrapped, kept
    assert block(lines, "n1").count("volume=40") == 1 and "same" in block(lines, "n1")  # not repeated


def block(lines: list[str], node_id: str) -> str:
    """A node's row of the table with its wrapped continuation lines."""
    start = next(k for k, line in enumerate(lines) if line.split()[:1] == [node_id])
    end = next((k for k in range(start + 1, len(lines)) if lines[k][:1].strip()), len(lines))
    return "\n".join(lines[start:end])


def test_a_wide_grid_still_fits():
    out = render(view(4, 8))
    assert max(len(line) for line in out.splitlines()) <= 80, "\n" + out
    assert "n32" in out

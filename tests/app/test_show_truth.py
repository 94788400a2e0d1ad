"""`grid show` when no node leads (a node's own copy, `--consistency local`): the health
and settings it prints are what the last master recorded, and it says so."""
from __future__ import annotations

from app.view import render, with_cluster


def view() -> dict:
    return {"rows": 1, "columns": 2, "presets": {}, "layout_refused": None,
            "nodes": [{"id": n, "address": f"127.0.0.1:710{k}", "row": 1, "column": k, "desired": {}, "actual": {},
                       "health": "up", "since": None, "in_sync": True, "boot": "b", "detail": ""}
                      for k, n in ((1, "n1"), (2, "n2"))]}


def test_without_a_master_the_rows_are_said_to_be_the_last_recorded_state():
    """Before: "grid 1x2, master unknown (term 6)" then every node "up, in sync", though
    with no master nothing had checked them since (n2 was dead)."""
    text = render(with_cluster(view(), {"id": "n1", "role": "pre_candidate", "leader": None, "term": 6}))
    first = text.splitlines()[0]
    assert "no master" in first and "n1's copy" in first and "last master recorded" in first, first


def test_with_a_master_the_first_line_stays_as_it_was():
    text = render(with_cluster(view(), {"id": "n1", "role": "follower", "leader": "n2", "term": 6}))
    assert text.splitlines()[0] == "grid 1x2, master n2 (term 6)"

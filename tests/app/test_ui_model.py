"""The window's view model without a display: what the header, the tiles and the event
strip say for each thing the session can report (issue 16)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from app.model import GridError
from app.ui.model import HEADER_COLOURS, MAX_EVENTS, TILE_STATES, Board, Link, describe
from rpc.client import ClusterUnavailable, RemoteTransactionError
from rpc.subscription import CommandUnanswered, Event

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


def node(nid: str, row: int, column: int, health: str = "up", desired=None, actual=None, detail: str = "",
         since: str | None = None) -> dict:
    desired = {"volume": 10} if desired is None else desired
    actual = (dict(desired) if health == "up" else None) if actual is None else actual
    return {"id": nid, "address": f"127.0.0.1:{7100 + row * 3 + column}", "row": row, "column": column,
            "desired": desired, "actual": actual, "health": health, "since": since or T0.isoformat(),
            "in_sync": actual == desired, "boot": "b", "detail": detail}


def view(*nodes: dict, refused: dict | None = None) -> dict:
    return {"rows": 3, "columns": 3, "nodes": list(nodes), "presets": {}, "layout_digest": "d",
            "layout_refused": refused}


def grid9(**changes: dict) -> dict:
    return view(*[changes.get(f"n{k + 1}", node(f"n{k + 1}", k // 3 + 1, k % 3 + 1)) for k in range(9)])


def connected(master: str, term: int = 2) -> Link:
    return Link("connected", master=master, address=f"127.0.0.1:{7000 + int(master[1:])}", term=term)


def tiles(board: Board, now: float = 0.0) -> dict:
    return {t.id: t for t in board.screen(now).tiles}


def event(kind: str, seconds: int = 0, **fields) -> tuple:
    return ("event", Event(1, T0 + timedelta(seconds=seconds), kind, fields))


def test_the_master_is_one_fact_shown_by_the_header_and_a_tile_of_its_own():
    b = Board()
    b.apply(("view", grid9()))
    assert b.screen().header.state == "connecting" and not any(t.master for t in tiles(b).values())
    b.apply(("link", connected("n5")))
    screen = b.screen()
    assert screen.header.state == "connected" and "master n5" in screen.header.text
    assert screen.header.colour == HEADER_COLOURS["connected"]
    assert [t.id for t in screen.tiles if t.master] == ["n5"]


def test_during_a_failover_no_tile_is_master_and_the_lost_master_is_down_at_once():
    """The issue: header "connected to master n7" while the old master's tile still said
    "★ master · up · in sync", and that tile turned down only ~2.8 s after the kill."""
    b = Board()
    b.apply(("view", grid9()))
    b.apply(("link", connected("n5")))
    b.apply(("link", Link("lost", node="n5", reason="connection refused", silent=("n5",))))
    screen = b.screen()
    assert screen.header.state == "failover" and "n5" in screen.header.text
    assert "connection refused" in screen.header.text
    t = tiles(b)
    assert not any(x.master for x in t.values())
    # the replicated state still says up (nobody has recorded it yet): the window knows better
    assert t["n5"].state == "down" and "stopped answering" in t["n5"].detail
    b.apply(("link", Link("searching", answering=8, of=9, silent=("n5",))))
    assert b.screen().header.state == "failover" and "8 of 9 nodes answer" in b.screen().header.text
    b.apply(("link", Link("connected", master="n9", address="127.0.0.1:7009", term=3, silent=("n5",))))
    t = tiles(b)
    assert b.screen().header.state == "connected" and t["n9"].master and t["n5"].state == "down"
    assert [e.text for e in b.events if e.kind == "master"][-1] == "master changed: n5 → n9 (term 3)"
    # the state catches up, then the old master answers the window again: the state rules
    b.apply(("view", grid9(n5=node("n5", 2, 2, "down", detail="connect refused"))))
    b.apply(("link", Link("connected", master="n9", address="127.0.0.1:7009", term=3)))
    assert tiles(b)["n5"].state == "down" and "connect refused" in tiles(b)["n5"].detail
    b.apply(("view", grid9()))
    assert tiles(b)["n5"].state == "in_sync"


def test_a_master_that_steps_down_but_answers_is_not_shown_down():
    b = Board()
    b.apply(("view", grid9()))
    b.apply(("link", connected("n5")))
    b.apply(("link", Link("lost", node="n5", reason="it is no longer the leader")))
    assert tiles(b)["n5"].state == "in_sync" and b.screen().header.state == "failover"


def test_cluster_unreachable_in_red_and_back_to_normal_by_itself():
    b = Board()
    b.apply(("view", grid9()))
    b.apply(("link", connected("n5")))
    b.apply(("link", Link("lost", node="n5", reason="connection refused", silent=("n5",))))
    b.apply(("link", Link("unreachable", of=9, silent=("n5",))))
    screen = b.screen()
    assert screen.header.state == "unreachable" and screen.header.colour == HEADER_COLOURS["unreachable"] == "#b00020"
    assert "Cluster unreachable" in screen.header.text and "last known" in screen.header.text
    assert {t.state for t in screen.tiles} == {"unreachable"} and not any(t.master for t in screen.tiles)
    assert all(t.detail == "last known: up" for t in screen.tiles)
    b.apply(("link", Link("searching", answering=3, of=9)))
    assert b.screen().header.state == "failover"
    b.apply(("link", connected("n2", 4)))
    screen = b.screen()
    assert screen.header.state == "connected" and {t.state for t in screen.tiles} == {"in_sync"}
    texts = [e.text for e in b.events]
    assert "cluster unreachable: no node answers (9 tried)" in texts and "the cluster answers again" in texts


def test_no_master_without_a_majority_says_so():
    b = Board()
    b.apply(("link", Link("searching", answering=4, of=9)))
    assert b.screen().header.text == "No master: only 4 of 9 nodes answer, a master needs 5"
    b.apply(("link", Link("searching", answering=7, of=9)))
    assert b.screen().header.text == "No master: an election is running · 7 of 9 nodes answer"


def test_each_tile_state_has_its_own_colour_and_words():
    states = {s: (words, colour, accent) for s, (words, colour, accent) in TILE_STATES.items()}
    assert len({c for _w, c, _a in states.values()}) == len(states)  # body colours all differ
    assert len({a for _w, _c, a in states.values()}) == len(states)
    assert len({w for w, _c, _a in states.values()}) == len(states)
    b = Board(drift_after=5.0)
    b.apply(("link", connected("n1")))
    b.apply(("view", grid9(n2=node("n2", 1, 2, "down", detail="connect refused"),
                           n3=node("n3", 1, 3, "unknown"),
                           n4=node("n4", 2, 1, actual={"volume": 3}),
                           n6=node("n6", 2, 3, actual={}, detail="push failed, retrying: timed out"))), now=100.0)
    t = tiles(b, now=101.0)
    assert (t["n1"].state, t["n2"].state, t["n3"].state, t["n4"].state, t["n6"].state) == \
        ("in_sync", "down", "unknown", "restoring", "drifting")
    assert t["n2"].words == "down" and "connect refused" in t["n2"].detail
    assert t["n6"].words.startswith("drifting") and "push failed" in t["n6"].detail
    # out of sync for longer than a push takes: drifting, though no push failed
    assert tiles(b, now=106.0)["n4"].state == "drifting"
    b.apply(("view", grid9()), now=107.0)
    assert tiles(b, now=107.0)["n4"].state == "in_sync"


def test_the_event_strip_keeps_the_last_twenty_with_times_newest_first():
    b = Board()
    b.apply(("view", grid9()))
    b.apply(event("grid.MarkNode", 1, id="n3", up=False, actual=None, boot="", detail="connect refused"))
    b.apply(event("grid.MarkNode", 2, id="n3", up=True, actual={"volume": "10"}, boot="b2",
                  detail="agent restarted: settings restored"))
    b.apply(event("grid.MarkNode", 3, id="n4", up=False, actual=None, boot="", detail="timed out"))
    b.apply(event("grid.MarkNode", 4, id="n4", up=True, actual={}, boot="b", detail="up again"))
    b.apply(event("grid.MarkNode", 5, id="n4", up=True, actual={"volume": "10"}, boot="b", detail="settings pushed"))
    b.apply(event("grid.RefuseLayout", 6, node="n7", reason="layout.toml: nodes n1 and n10 are both at (1, 1)",
                  digest="x"))
    b.apply(event("grid.ApplyLayout", 7, rows=3, columns=4, nodes=[{}] * 9, digest="y"))
    b.apply(event("grid.SetSettings", 8, targets=["n1", "row:2"], settings={"volume": "40"}))
    b.apply(("command", "refused", "set volume=500 on n4: setting volume='500': must be from 0 to 100"),
            wall=T0 + timedelta(seconds=9))
    texts = [e.text for e in b.screen().events]
    assert texts == [
        "command refused: set volume=500 on n4: setting volume='500': must be from 0 to 100",
        "set volume=40 on n1, row:2",
        "layout applied: 3x4 grid, 9 nodes",
        "layout edit refused on n7: layout.toml: nodes n1 and n10 are both at (1, 1)",
        "n4 up again",
        "n4 down: timed out",
        "n3 up: agent restarted, settings restored",
        "n3 down: connect refused",
    ]  # "settings pushed" is routine: not an event
    assert b.screen().events[-1].at == (T0 + timedelta(seconds=1)).astimezone()  # journal time, local clock
    for k in range(30):  # sorted by time: the journal's, or this PC's clock for what the window saw
        b.apply(event("grid.DeletePreset", 100 + k, name=f"p{k}"))
    events = b.screen().events
    assert len(events) == MAX_EVENTS and events[0].text == "preset p29 deleted" and events[-1].text == "preset p10 deleted"


def test_a_refused_layout_edit_is_a_banner_until_it_is_cleared():
    b = Board()
    refused = {"node": "n3", "reason": "/grid/layout.toml: nodes n1 and n10 are both at (1, 1)", "digest": "x",
               "at": T0.isoformat()}
    b.apply(("view", {**grid9(), "layout_refused": refused}))
    banner = b.screen().refusal
    assert banner.startswith("Layout edit refused on n3 at ") and "nodes n1 and n10 are both at (1, 1)" in banner
    assert "The grid keeps its layout" in banner
    b.apply(("view", grid9()))
    assert b.screen().refusal is None


@pytest.mark.parametrize("exc, text", [
    (GridError("no node 'n42' in the grid (nodes: n1)"), "no node 'n42' in the grid (nodes: n1)"),
    (RemoteTransactionError("other.Oops", "it broke", rejected=True), "it broke"),
    (ClusterUnavailable("execute_batch: no leader answered within the deadline; tried a, b"),
     "no master answered in time (the cluster is unreachable or has no majority); not sent"),
    (ClusterUnavailable("query: no leader answered within the deadline; tried a, b", sent=True),
     "no master answered in time (the cluster is unreachable or has no majority); not confirmed"),
    (CommandUnanswered("execute_batch: no leader answered within the deadline; the command was sent"),
     "sent, but its answer was lost (the master may have died): it may have been applied; look at the tiles "
     "before sending it again"),
    (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
    (EOFError("stream has been closed"), "connection lost"),
    (RuntimeError("KeyError: 'x'"), "'x'"),
])
def test_messages_for_operators_carry_no_class_names(exc, text):
    assert describe(exc) == text


def test_an_error_with_a_remote_traceback_is_described_in_one_bounded_line():
    """RPyC appends the node's traceback to an error it rebuilds: the window's header
    ("master n1 lost (...)") and message line showed it whole, over many lines."""
    exc = ValueError("bad status\n\n========= Remote Traceback (1) =========\n" + "  File x\x1b[2J\n" * 2000)
    text = describe(exc)
    assert text.startswith("bad status") and text.isprintable() and len(text) <= 300, text[:400]

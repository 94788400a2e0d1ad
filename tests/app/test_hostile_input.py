"""What a careless or hostile operator types or saves: each refused in one short line
that names the problem, nothing applied, no traceback."""
from __future__ import annotations

import os

import pytest

from app.cli import cluster_addresses
from app.layout import LayoutError, parse_layout, read_layout
from app.local import write_grid
from app.model import DefinePreset, Grid, GridError, SetSettings, check_name, check_node
from app.settings import SettingsError, parse_assignments
from prevalence.errors import PrevalenceError
from tests.app.test_layout import GOOD

DEEP = b"[grid]\nrows = 2\ncolumns = 2\na = " + b"[" * 5000 + b"]" * 5000 + b"\n"


@pytest.mark.parametrize("name", ["evil\n", "p1\n", "n1\n"])
def test_a_name_with_a_trailing_line_break_is_refused(name):
    with pytest.raises(GridError, match="must be 1-32 letters"):
        check_name(name, "preset name")
    with pytest.raises(GridError, match="must be 1-32 letters"):
        check_node(name, "127.0.0.1:7100", 1, 1, 3, 3, strict=True)


def test_an_address_with_a_trailing_line_break_or_foreign_digits_is_refused():
    for address in ("127.0.0.1:7100\n", "127.0.0.1:\u0667\u0661\u0660\u0660"):
        with pytest.raises(GridError, match="must be HOST:PORT"):
            check_node("n1", address, 1, 1, 3, 3, strict=True)


def test_a_journaled_entry_is_checked_by_the_rule_it_was_accepted_under():
    """Rules run again when entries are applied (replay, every replica): tightened in
    place, an entry an earlier release accepted would rebuild differently from a journal
    than from a snapshot. New input gets the strict rule; journaled entries the old one."""
    DefinePreset("evening\n", {"volume": "3"}).check(Grid())
    check_node("n1\n", "127.0.0.1:\u0667\u0661\u0660\u0660", 1, 1, 3, 3)


def test_a_row_that_is_not_a_plain_number_is_named():
    grid = Grid()
    with pytest.raises(GridError, match=r"no node 'row:\u00b2'"):
        SetSettings(("row:\u00b2",), {"volume": "3"}).check(grid)


def test_a_huge_value_is_not_echoed_whole():
    with pytest.raises(SettingsError) as err:
        parse_assignments(["content=" + "y" * 100_000])
    message = str(err.value)
    assert "content=" in message and "at most 200 characters" in message
    assert len(message) < 400


def test_a_deeply_nested_layout_is_refused_by_name(tmp_path):
    with pytest.raises(LayoutError, match="l.toml: not valid TOML: nested too deeply"):
        parse_layout(DEEP, "l.toml")


def test_a_layout_file_that_never_ends_is_refused(tmp_path):
    big = tmp_path / "big.toml"
    big.write_bytes(GOOD + b"#" * (5 << 20))
    with pytest.raises(LayoutError, match="big.toml: larger than"):
        read_layout(str(big))
    if os.path.exists("/dev/zero"):
        with pytest.raises(LayoutError, match="not a regular file"):
            read_layout("/dev/zero")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_layout_file_that_is_a_fifo_is_refused_at_once(tmp_path):
    """open() of a FIFO waits for a writer: grid layout check hung, and so did the layout
    watcher's thread on every node, and every grid command on the directory."""
    fifo = tmp_path / "layout.toml"
    os.mkfifo(fifo)
    with pytest.raises(LayoutError, match="layout.toml: cannot read the layout file: not a regular file"):
        read_layout(str(fifo))


@pytest.mark.parametrize("content", [b"[grid", b"\xff\xfe[grid]", DEEP])
def test_a_broken_layout_file_does_not_hide_the_grid_directory(tmp_path, content):
    """The operator saved a broken layout: grid show must still find the nodes, to show the refusal."""
    write_grid(str(tmp_path), 2, 2, base_port=47100)
    (tmp_path / "layout.toml").write_bytes(content)
    addresses, _ = cluster_addresses(str(tmp_path))
    assert sorted(addresses) == [f"127.0.0.1:{p}" for p in range(47100, 47104)]


def test_a_broken_node_config_is_still_named(tmp_path):
    write_grid(str(tmp_path), 2, 2, base_port=47100)
    path = tmp_path / "n2.toml"
    path.write_text(path.read_text().replace('listen = "127.0.0.1:47101"', "listen = 127.0.0.1:47101"))
    with pytest.raises(PrevalenceError, match="n2.toml: not valid TOML"):
        cluster_addresses(str(tmp_path))


def test_grid_show_of_a_grid_without_nodes():
    """A layout with an empty [nodes] table is valid; grid show must still show the grid."""
    from app.view import render

    text = render({"rows": 2, "columns": 2, "nodes": [], "presets": {}, "layout_refused": None,
                   "master": "n1", "term": 3})
    assert text.startswith("grid 2x2, master n1 (term 3)") and "node" in text


ESCAPES = '"\\u001b]0;owned\\u0007\\u001b[31mRED"'


@pytest.mark.parametrize("edit", [
    lambda t: t.replace(b"rows = 2", b"rows = 2\n" + ESCAPES.encode() + b" = 1"),  # an unknown [grid] key
    lambda t: t.replace(b"[nodes.b]", b"[nodes." + ESCAPES.encode() + b"]"),  # a node id
    lambda t: t.replace(b"[nodes.b]", b"[nodes." + ESCAPES.encode() + b"]\ncolour = 1"),  # ... with a bad field
    lambda t: t + ESCAPES.encode() + b" = 1\n",  # an unknown field of a node
    lambda t: b"[" + ESCAPES.encode() + b"]\n" + t,  # an unknown section
])
def test_a_layout_refusal_never_carries_control_characters(edit):
    with pytest.raises(LayoutError) as err:
        parse_layout(edit(GOOD), "l.toml")
    message = str(err.value)
    assert message.isprintable() and "owned" in message, repr(message)


def test_grid_show_prints_a_recorded_refusal_as_plain_text():
    from app.view import render

    text = render({"rows": 1, "columns": 1, "nodes": [], "presets": {}, "master": "n1", "term": 1,
                   "layout_refused": {"node": "n1", "at": "2026-01-01T00:00:00", "digest": "x",
                                      "reason": "l.toml: bad \x1b]0;owned\x07\x1b[2J\nsecond line"}})
    assert "\x1b" not in text and "\x07" not in text and "second line" in text.splitlines()[-1]


def test_grid_show_prints_what_the_state_holds_as_plain_text():
    """MarkNode is a transaction any client key can send: its detail and actual settings
    reach grid show, which must not pass their escape sequences to the terminal."""
    from app.view import render

    node = {"id": "n1", "address": "h:1", "row": 1, "column": 1, "desired": {"volume": 1},
            "actual": {"content": "\x1b[2Jx", "volume": 1}, "health": "up", "since": None, "in_sync": False,
            "boot": "b", "detail": "\x1b]0;owned\x07 pushed", "master": True}
    text = render({"rows": 1, "columns": 1, "nodes": [node], "presets": {}, "master": "n1", "term": 1,
                   "layout_refused": None})
    assert "\x1b" not in text and "\x07" not in text and "pushed" in text


def test_what_a_client_journals_reaches_grid_show_without_control_characters():
    """Any holder of the client key can journal a MarkNode or a RefuseLayout (the controller
    and the watchers do, through the same door) with escape sequences and line breaks in
    its detail, settings and reason: grid show printed them to the operator's terminal,
    where they drive it (clear the screen, retitle the window, fake a line)."""
    import datetime

    from app.model import AddNode, GridView, MarkNode, RefuseLayout
    from app.view import render, with_cluster
    from prevalence import Context

    grid = Grid()
    ctx = Context(1, 1_700_000_000_000_000)
    for tx in (AddNode("n1", "127.0.0.1:7100", 1, 1),
               MarkNode("n1", True, {"content": "\x1b]0;owned\x07", "\x1b[2Jkey": "1"}, "b\x1b[1m", "\x1b[2J\r\nfake"),
               RefuseLayout("n\x1b[5m2", "bad\x1b[31m\nline", "d1"),
               SetSettings(("n1",), {"content": "ok"})):
        tx.check(grid)
        tx.execute(grid, ctx)
    text = render(with_cluster(GridView().run(grid), {"leader": "n1", "term": 2}))
    assert "\x1b" not in text and "\r" not in text and "\x07" not in text, text
    assert not [line for line in text.splitlines() if line.startswith("fake")], text
    assert "layout edit refused on" in text and datetime  # the refusal is still said

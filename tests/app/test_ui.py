"""The operator window under Xvfb against a real 3x3 grid: commands through the widgets,
a refused layout edit, a node down, the master killed, every node killed, and the window
telling each truthfully and recovering by itself (issue 16).

Each state's screenshot is saved to ``$TEST_ARTIFACTS/ui/`` (default
``test-artifacts/ui/``, ignored by git): steady, layout-refused, node-down,
failover-in-progress, new-master, unreachable, a 4-column grid at 1280 px and a 32x32 one.
"""
from __future__ import annotations

import gc
import os
import signal
import sys
import time

import pytest

from app.layout import read_layout
from app.model import ApplyLayout, GridView, NodeSpec, SetSettings
from app.ui.model import HEADER_COLOURS, MASTER_BAND, TILE_STATES
from tests.app.gridproc import running_grid

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="uses Xvfb and SIGKILL")]
ARTIFACTS = os.path.join(os.environ.get("TEST_ARTIFACTS", "test-artifacts"), "ui")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    with running_grid(str(tmp_path_factory.mktemp("uigrid"))) as g:
        yield g


@pytest.fixture
def window(display, grid):
    import tkinter as tk

    from app.ui.session import UiSession
    from app.ui.window import GridWindow

    for nid in grid.configs:  # a test that stopped nodes may have failed before restarting them
        grid.start(nid)
    root = tk.Tk()
    w = GridWindow(root, UiSession(grid.client(timeout=30.0), grid.secret).start())
    try:
        pump(w, "connected, every tile in sync", lambda: connected(w) and len(w.tiles) == 9
             and all(t.state == "in_sync" for t in w.screen.tiles), 60)
        yield w
    finally:
        w.close()
        del w, root
        gc.collect()


def pump(w, what: str, predicate, timeout: float = 20.0):
    """Run the Tk loop until ``predicate()`` holds (the test is the Tk thread)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        w.root.update()
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {timeout} s; header {w.header.cget('text')!r}, "
                         f"message {w.message.cget('text')!r}")


def connected(w) -> bool:
    return w.screen is not None and w.screen.header.state == "connected"


def master(w) -> str:
    return next(t.id for t in w.screen.tiles if t.master)


def tile(w, node_id: str):
    return next(t for t in w.screen.tiles if t.id == node_id)


def tile_text(w, node_id: str) -> str:
    """What the tile's widgets say (the operator's view, not the model's)."""
    t = w.tiles[node_id]
    return " | ".join(label.cget("text") for label in (t.title, t.role, *t.lines) if label.winfo_ismapped())


def events(w) -> str:
    return w.events.get("1.0", "end")


def click(w, node_id: str) -> None:
    w.tiles[node_id].title.event_generate("<Button-1>")
    w.root.update()


def fill(w, **values: str) -> None:
    for name, widget in w.fields.items():
        if name == "power":
            widget.set(values.get(name, ""))
        else:
            widget.delete(0, "end")
            widget.insert(0, values.get(name, ""))


def save_screenshot(w, name: str) -> str:
    from PIL import ImageGrab

    w.root.update()
    x, y = w.root.winfo_rootx(), w.root.winfo_rooty()
    image = ImageGrab.grab(bbox=(x, y, x + w.root.winfo_width(), y + w.root.winfo_height()),
                           xdisplay=os.environ["DISPLAY"])
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name)
    image.save(path)
    return path


def test_the_window_shows_the_grid_and_sends_a_command(window, grid):
    w = window
    assert w.theme == "sun-valley-light"  # the declared theme loads under Xvfb
    m = master(w)
    assert w.header.cget("bg") == HEADER_COLOURS["connected"] and f"master {m}" in w.header.cget("text")
    assert w.tiles[m].band.cget("bg") == MASTER_BAND and "★ MASTER" in tile_text(w, m)
    assert all(w.tiles[n].band.cget("bg") != MASTER_BAND for n in w.tiles if n != m)
    click(w, "n1")
    click(w, "n2")
    click(w, "n3")
    click(w, "n3")  # a second click deselects
    assert w.selection.cget("text") == "selected: n1, n2"
    fill(w, volume="42", content="from the window", power="on")
    began = time.monotonic()
    w.set_button.invoke()
    pump(w, "the command's result", lambda: w.message.cget("text").startswith("done: set"))
    view = grid.c.query(GridView())
    by_id = {n["id"]: n for n in view["nodes"]}
    assert by_id["n1"]["desired"] == by_id["n2"]["desired"] == {"volume": 42, "content": "from the window", "power": "on"}
    assert "volume" not in by_id["n3"]["desired"]
    # the subscription brings the agents' confirmation to the tiles, no polling involved
    pump(w, "tiles show the pushed settings", lambda: "actual:  content=from the window power=on volume=42"
         in tile_text(w, "n2") and tile(w, "n2").state == "in_sync")
    assert time.monotonic() - began < 3.0  # generous: the client's own test measures the stall
    assert "set content=from the window power=on volume=42 on n1, n2" in events(w)
    w.clear_selection()
    save_screenshot(w, "steady.png")


def test_mistakes_are_shown_in_the_window_and_change_nothing(window, grid):
    w = window
    before = grid.c.query(GridView())
    w.clear_selection()
    fill(w, volume="7")
    w.set_button.invoke()
    assert w.message.cget("text") == "select tiles and fill in at least one setting first"
    click(w, "n4")
    fill(w, volume="500")
    w.set_button.invoke()
    pump(w, "the refusal", lambda: "must be from 0 to 100" in w.message.cget("text"), 5)
    text = w.message.cget("text")
    assert text == "set volume=500 on n4: setting volume='500': must be from 0 to 100", text  # no class name
    assert w.message.cget("fg") == "#b00020"
    assert "command refused: set volume=500 on n4" in events(w)
    w.preset.set("")
    w.preset_button.invoke()
    assert w.message.cget("text") == "select tiles and a preset first"
    assert grid.c.query(GridView())["nodes"] == before["nodes"]


def test_a_refused_layout_edit_reaches_the_window(window, grid):
    w = window
    path = os.path.join(grid.dir, "layout.toml")
    with open(path) as f:
        original = f.read()
    try:
        with open(path, "a") as f:
            f.write('\n[nodes.n10]\naddress = "127.0.0.1:1"\nrow = 1\ncolumn = 1\n')  # n1 is at (1, 1)
        pump(w, "the refusal shown", lambda: w.banner.winfo_ismapped(), 15)
        banner = w.banner.cget("text")
        assert banner.startswith("Layout edit refused on n") and "nodes n1 and n10 are both at (1, 1)" in banner
        pump(w, "the refusal in the event strip", lambda: "layout edit refused on n" in events(w), 5)
        assert len(w.tiles) == 9 and connected(w)  # nothing else changed
        save_screenshot(w, "layout-refused.png")
    finally:
        with open(path, "w") as f:  # saved back as it was: the refusal goes by itself
            f.write(original)
    pump(w, "the banner gone", lambda: not w.banner.winfo_ismapped(), 15)


def test_tiles_follow_the_window_and_any_grid_size_fits(window, grid):
    """Issue 16: fixed 260 px tiles; a 4-column layout clipped the buttons at 1280 px."""
    w = window
    spec = {n.id: n for n in read_layout(os.path.join(grid.dir, "layout.toml")).nodes}

    def layout(rows: int, columns: int, places: list[tuple[int, int]]) -> None:
        nodes = tuple(NodeSpec(nid, spec[nid].address, r, c) for nid, (r, c) in zip(sorted(spec), places))
        grid.c.execute(ApplyLayout(rows, columns, nodes, f"test-{rows}x{columns}"))
        pump(w, f"the {rows}x{columns} grid", lambda: w.screen.columns == columns and w.screen.rows == rows
             and {(t.row, t.column) for t in w.screen.tiles} == set(places[:9]))
        w.root.update()

    def fits() -> None:
        right, bottom = w.root.winfo_rootx() + w.root.winfo_width(), w.root.winfo_rooty() + w.root.winfo_height()
        for b in w.buttons:
            assert b.winfo_ismapped() and b.winfo_rootx() + b.winfo_width() <= right, b.cget("text")
            assert b.winfo_width() >= b.winfo_reqwidth(), f"{b.cget('text')!r} squeezed"
        for nid, t in w.tiles.items():
            assert t.winfo_width() > 20 and t.winfo_height() > 10, nid
            assert t.winfo_rootx() + t.winfo_width() <= w.board.winfo_rootx() + w.board.winfo_width(), nid
            assert t.winfo_rooty() + t.winfo_height() <= bottom, nid
            assert nid in tile_text(w, nid)  # the id is always shown, whole
            assert t.title.winfo_rootx() + t.title.winfo_reqwidth() <= t.winfo_rootx() + t.winfo_width(), nid

    try:
        w.root.geometry("1280x800")
        layout(3, 4, [(r, c) for r in range(1, 4) for c in range(1, 5)])
        fits()
        save_screenshot(w, "four-columns-1280.png")
        wide = w.tiles["n1"].winfo_width()
        w.root.geometry("900x600")
        w.root.update()
        fits()
        assert w.tiles["n1"].winfo_width() < wide  # the tiles shrank with the window
        w.root.geometry("1280x800")
        layout(8, 8, [(k + 1, 8 - k) for k in range(8)] + [(8, 8)])
        fits()
        layout(1, 9, [(1, k) for k in range(1, 10)])
        fits()
        layout(32, 32, [(k * 3 + 1, 32 - k * 3) for k in range(8)] + [(32, 32)])
        fits()
        save_screenshot(w, "32x32.png")
    finally:
        grid.c.execute(read_layout(os.path.join(grid.dir, "layout.toml")))
    pump(w, "the 3x3 grid back", lambda: (w.screen.rows, w.screen.columns) == (3, 3))


def test_a_node_down_and_restored(window, grid):
    w = window
    victim = next(n for n in ("n2", "n1", "n3") if n != master(w))
    grid.c.execute(SetSettings((victim,), {"content": "restore me"}))
    pump(w, "pushed", lambda: tile(w, victim).state == "in_sync" and "restore me" in tile_text(w, victim))
    grid.kill(victim)
    pump(w, "the node shown down", lambda: tile(w, victim).state == "down", 10)
    assert w.tiles[victim].cget("bg") == TILE_STATES["down"][1]
    assert "down" in tile_text(w, victim) and connected(w)
    pump(w, "the event", lambda: f"{victim} down" in events(w), 5)
    save_screenshot(w, "node-down.png")
    grid.start(victim)
    pump(w, "the node restored", lambda: tile(w, victim).state == "in_sync", 30)
    pump(w, "the event", lambda: f"{victim} up: agent restarted, settings restored" in events(w), 5)


def test_the_window_rides_through_a_master_failover(window, grid):
    w = window
    victim = master(w)
    target = next(n for n in sorted(w.tiles) if n != victim)
    click(w, target)
    fill(w, content="sent while the master died")
    grid.kill(victim)
    w.set_button.invoke()  # in flight during the failover: applied exactly once
    # the failover as it happens: amber, no tile is master, the old master already down
    pump(w, "failover in progress", lambda: w.screen.header.state == "failover", 10)
    save_screenshot(w, "failover-in-progress.png")
    assert w.header.cget("bg") == HEADER_COLOURS["failover"] and victim in w.header.cget("text")
    assert not any(t.master for t in w.screen.tiles)
    pump(w, "a new master", lambda: connected(w), 30)
    known = time.monotonic()
    new_master = master(w)
    assert new_master != victim and f"master {new_master}" in w.header.cget("text")
    # issue 16: the dead master's tile turned down ~2.8 s after the kill; now within 1 s of
    # the new master being known (the window saw it stop answering before that)
    pump(w, "the dead master shown down", lambda: tile(w, victim).state == "down", 1.0)
    assert time.monotonic() - known <= 1.0
    assert "down" in tile_text(w, victim) and "★ MASTER" not in tile_text(w, victim)
    pump(w, "the command's result", lambda: w.message.cget("text").startswith("done: set"), 30)
    pump(w, "the command pushed and shown on its tile", lambda: "content=sent while the master d…"
         in tile_text(w, target) and tile(w, target).state == "in_sync")
    assert f"master changed: {victim} → {new_master}" in events(w)
    save_screenshot(w, "new-master.png")
    sent = [e for e in journal(grid) if e.type == "grid.SetSettings"
            and e.fields["settings"].get("content") == "sent while the master died"]
    assert len(sent) == 1  # exactly once
    grid.start(victim)
    pump(w, "the old master back up", lambda: tile(w, victim).state == "in_sync", 30)


def test_cluster_unreachable_and_back_by_itself(window, grid):
    w = window
    # every node hung (its PC accepts connections but nothing answers): the hardest to tell
    for nid in grid.configs:
        grid.kill(nid, signal.SIGSTOP)
    gone = time.monotonic()
    try:
        pump(w, "cluster unreachable (hung)", lambda: w.screen.header.state == "unreachable", 10)
        assert time.monotonic() - gone < 3.0
    finally:
        for nid in grid.configs:
            grid.kill(nid, signal.SIGCONT)
    pump(w, "connected again by itself", lambda: connected(w), 30)
    # every node gone (nothing listens): issue 16 saw an amber bar 40 s later
    for nid in grid.configs:
        grid.kill(nid)
    gone = time.monotonic()
    pump(w, "cluster unreachable", lambda: w.screen.header.state == "unreachable", 10)
    assert time.monotonic() - gone < 3.0
    assert w.header.cget("bg") == "#b00020" and w.header.cget("text").startswith("Cluster unreachable")
    assert all(t.state == "unreachable" and not t.master for t in w.screen.tiles)
    save_screenshot(w, "unreachable.png")
    for nid in grid.configs:
        grid.start(nid)
    pump(w, "connected again by itself", lambda: connected(w), 60)
    pump(w, "every tile in sync again", lambda: all(t.state == "in_sync" for t in w.screen.tiles), 60)
    assert "the cluster answers again" in events(w)


def journal(grid) -> list:
    seen: list = []
    sub = grid.c.subscribe(seen.append, from_index=1)
    try:
        applied = grid.c.status()["applied_index"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (seen and seen[-1].index >= applied - 5):
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        sub.close()
    return seen

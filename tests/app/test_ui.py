"""The operator window under Xvfb against a real 3x3 grid: commands through the widgets,
the master killed, the window recovering by itself. A screenshot after the failover is
saved to ``$TEST_ARTIFACTS`` (default ``test-artifacts/``)."""
from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.app.gridproc import running_grid
from app.model import GridView

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="uses Xvfb and SIGKILL")]
ARTIFACTS = os.environ.get("TEST_ARTIFACTS", "test-artifacts")


@pytest.fixture(scope="module")
def display():
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (.ci/run installs Debian's xvfb)")
    read, write = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as f:
        number = f.readline().strip()
    old = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = f":{number}"
    try:
        yield f":{number}"
    finally:
        xvfb.terminate()
        xvfb.wait(10)
        if old is None:
            os.environ.pop("DISPLAY", None)
        else:
            os.environ["DISPLAY"] = old


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    with running_grid(str(tmp_path_factory.mktemp("uigrid"))) as g:
        yield g


@pytest.fixture
def window(display, grid):
    import tkinter as tk

    from app.ui.session import UiSession
    from app.ui.window import GridWindow

    root = tk.Tk()
    w = GridWindow(root, UiSession(grid.client(timeout=30.0), grid.secret).start())
    w.states = []

    def recording(update, handle=w.handle, states=w.states):
        if update[0] == "connection":
            states.append(update[1:])
        handle(update)

    w.handle = recording
    try:
        yield w
    finally:
        w.close()
        w.handle = None  # the recording wrapper holds the window: no cycle may outlive the test
        del w, recording, root
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
    raise AssertionError(f"{what}: not within {timeout} s; last message {w.message.cget('text')!r}, "
                         f"connection {w.connection.cget('text')!r}")


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


def tile_text(w, node_id: str) -> str:
    t = w.tiles[node_id]
    return " | ".join(label.cget("text") for label in (t.title, t.health, t.desired, t.actual))


def test_the_window_shows_the_grid_and_sends_a_command(window, grid):
    w = window
    pump(w, "tiles and a master", lambda: len(w.tiles) == 9 and w.view and w.view["master"])
    master = w.view["master"]
    assert "★ master" in tile_text(w, master)
    pump(w, "connected", lambda: w.connection.cget("text").startswith(f"connected to master {master}"))
    click(w, "n1")
    click(w, "n2")
    click(w, "n3")
    click(w, "n3")  # a second click deselects
    assert w.selection.cget("text") == "selected: n1, n2"
    fill(w, volume="42", content="from the window", power="on")
    w.set_button.invoke()
    pump(w, "the command's result", lambda: w.message.cget("text").startswith("done: set"))
    view = grid.c.query(GridView())
    by_id = {n["id"]: n for n in view["nodes"]}
    assert by_id["n1"]["desired"] == by_id["n2"]["desired"] == {"volume": 42, "content": "from the window", "power": "on"}
    assert "volume" not in by_id["n3"]["desired"]
    # the subscription brings the agents' confirmation to the tiles, no polling involved
    pump(w, "tiles show the pushed settings", lambda: "actual:  content=from the window power=on volume=42"
         in tile_text(w, "n2") and "in sync" in tile_text(w, "n2"))


def test_mistakes_are_shown_in_the_window_and_change_nothing(window, grid):
    w = window
    pump(w, "tiles", lambda: len(w.tiles) == 9)
    before = grid.c.query(GridView())
    w.clear_selection()
    fill(w, volume="7")
    w.set_button.invoke()
    assert w.message.cget("text") == "select tiles and fill in at least one setting first"
    click(w, "n4")
    fill(w, volume="500")
    w.set_button.invoke()
    pump(w, "the refusal", lambda: "must be from 0 to 100" in w.message.cget("text"))
    assert "Traceback" not in w.message.cget("text") and w.message.cget("fg") == "#b00020"
    w.preset.set("")
    w.preset_button.invoke()
    assert w.message.cget("text") == "select tiles and a preset first"
    assert grid.c.query(GridView())["nodes"] == before["nodes"]


def test_the_window_rides_through_a_master_failover(window, grid):
    w = window
    pump(w, "connected", lambda: w.view and w.connection.cget("text").startswith("connected to master"))
    victim = w.view["master"]
    target = next(n for n in sorted(w.tiles) if n != victim)
    click(w, target)
    fill(w, content="sent while the master died")
    first = len(grid.c.query(GridView())["nodes"])
    grid.kill(victim)
    w.set_button.invoke()  # in flight during the failover: applied exactly once
    pump(w, "the command's result", lambda: w.message.cget("text").startswith("done: set"), 30)
    pump(w, "reconnected to a new master", lambda: w.connection.cget("text").startswith("connected to master")
         and victim not in w.connection.cget("text"), 30)
    assert any(state == "reconnecting" for state, _text in w.states), w.states
    pump(w, "the dead master shown down", lambda: tile_text(w, victim).split(" | ")[1] == "down", 20)
    new_master = w.view["master"]
    assert new_master != victim and "★ master" in tile_text(w, new_master)
    pump(w, "the command pushed and shown on its tile", lambda: "actual:  content=sent while the master d…"
         in tile_text(w, target) and "in sync" in tile_text(w, target))
    # exactly once: the log holds one such command
    events = []
    sub = grid.c.subscribe(events.append, from_index=1)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(e.type == "grid.MarkNode" and e.fields["id"] == victim
                                                      and not e.fields["up"] for e in events):
            time.sleep(0.05)
    finally:
        sub.close()
    sent = [e for e in events if e.type == "grid.SetSettings" and e.fields["settings"].get("content") == "sent while the master died"]
    assert len(sent) == 1
    assert len(w.tiles) == first
    save_screenshot(w, "ui-after-failover.png")
    grid.start(victim)
    pump(w, "the old master back up", lambda: tile_text(w, victim).split(" | ")[1].startswith("up"), 30)


def save_screenshot(w, name: str) -> None:
    from PIL import ImageGrab

    w.root.update()
    x, y = w.root.winfo_rootx(), w.root.winfo_rooty()
    image = ImageGrab.grab(bbox=(x, y, x + w.root.winfo_width(), y + w.root.winfo_height()),
                           xdisplay=os.environ["DISPLAY"])
    os.makedirs(ARTIFACTS, exist_ok=True)
    image.save(os.path.join(ARTIFACTS, name))

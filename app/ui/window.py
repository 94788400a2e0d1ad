"""The Tk window: the grid as tiles, a command panel, the connection state, a message line.

Only the Tk thread touches widgets; it drains the session's ``updates`` every 50 ms
(a local queue, not the network).
"""
from __future__ import annotations

import gc
import queue
import tkinter as tk
from tkinter import ttk
from typing import Any

from app.settings import SETTINGS, as_text
from app.ui.session import UiSession

COLOURS = {"up": "#d9f2d9", "down": "#f7d4d4", "unknown": "#e6e6e6"}
CONNECTION = {"connected": "#1e7b1e", "reconnecting": "#b36b00", "unreachable": "#b00020"}
SELECTED, PLAIN = "#1f5fbf", "#999999"


def _short(settings: dict) -> str:
    """Settings as text that fits a tile: long values cut (the full text is in ``grid show``)."""
    return as_text({k: (v if len(str(v)) <= 24 else str(v)[:23] + "…") for k, v in settings.items()})


class Tile(tk.Frame):
    """One node: id (and master), health, desired and actual settings. Click to select."""

    def __init__(self, parent: tk.Widget, window: "GridWindow", node_id: str):
        super().__init__(parent, bd=0, highlightthickness=3, highlightbackground=PLAIN, padx=6, pady=4,
                         width=260, height=150)
        self.node_id, self.window = node_id, window
        self.grid_propagate(False)
        self.title = tk.Label(self, font=("TkDefaultFont", 11, "bold"), anchor="w")
        self.health = tk.Label(self, anchor="w")
        self.desired = tk.Label(self, anchor="w", justify="left", wraplength=245)
        self.actual = tk.Label(self, anchor="w", justify="left", wraplength=245)
        for row, w in enumerate((self.title, self.health, self.desired, self.actual)):
            w.grid(row=row, column=0, sticky="w")
            w.bind("<Button-1>", self.clicked)
        self.bind("<Button-1>", self.clicked)

    def clicked(self, event: Any = None) -> None:
        self.window.toggle(self.node_id)

    def show(self, node: dict, selected: bool) -> None:
        bg = COLOURS.get(node["health"], COLOURS["unknown"])
        sync = "" if node["health"] != "up" else (" · in sync" if node["in_sync"] else " · pushing...")
        self.title.config(text=node["id"] + ("  ★ master" if node.get("master") else ""))
        self.health.config(text=f"{node['health']}{sync}")
        self.desired.config(text="desired: " + _short(node["desired"]))
        self.actual.config(text="actual:  " + ("unknown" if node["actual"] is None else _short(node["actual"])))
        for w in (self, self.title, self.health, self.desired, self.actual):
            w.config(bg=bg)
        self.config(highlightbackground=SELECTED if selected else PLAIN)


class GridWindow:
    def __init__(self, root: tk.Tk, session: UiSession):
        self.root, self.session = root, session
        self.view: dict | None = None
        self.selected: set[str] = set()
        self.tiles: dict[str, Tile] = {}
        root.title("Grid operator")
        root.protocol("WM_DELETE_WINDOW", self.close)

        self.connection = tk.Label(root, text="connecting...", anchor="w", fg="white",
                                   bg=CONNECTION["reconnecting"], padx=8, pady=4)
        self.connection.pack(fill="x")
        body = tk.Frame(root, padx=8, pady=8)
        body.pack(fill="both", expand=True)
        self.board = tk.Frame(body)
        self.board.pack(side="left", anchor="n")
        panel = tk.Frame(body, padx=12)
        panel.pack(side="left", fill="y", anchor="n")
        self._build_panel(panel)
        self.message = tk.Label(root, text="", anchor="w", justify="left", padx=8, pady=4, wraplength=900)
        self.message.pack(fill="x")
        self._pump()

    def _build_panel(self, panel: tk.Frame) -> None:
        self.selection = tk.Label(panel, text="selected: none", anchor="w", wraplength=260, justify="left")
        self.selection.grid(row=0, column=0, columnspan=2, sticky="w", pady=(0, 6))
        self.fields: dict[str, tk.Widget] = {}
        for row, name in enumerate(SETTINGS, start=1):
            tk.Label(panel, text=name, anchor="w").grid(row=row, column=0, sticky="w")
            if name == "power":
                w: tk.Widget = ttk.Combobox(panel, values=("", "on", "off"), width=22, state="readonly")
            else:
                w = ttk.Entry(panel, width=25)
            w.grid(row=row, column=1, sticky="w", pady=1)
            self.fields[name] = w
        row = len(SETTINGS) + 1
        self.set_button = ttk.Button(panel, text="Set on selected", command=self.set_clicked)
        self.set_button.grid(row=row, column=0, columnspan=2, sticky="we", pady=(4, 10))
        tk.Label(panel, text="preset", anchor="w").grid(row=row + 1, column=0, sticky="w")
        self.preset = ttk.Combobox(panel, values=(), width=22, state="readonly")
        self.preset.grid(row=row + 1, column=1, sticky="w")
        self.preset_button = ttk.Button(panel, text="Apply preset to selected", command=self.preset_clicked)
        self.preset_button.grid(row=row + 2, column=0, columnspan=2, sticky="we", pady=(4, 10))
        ttk.Button(panel, text="Select all", command=self.select_all).grid(row=row + 3, column=0, sticky="we")
        ttk.Button(panel, text="Clear selection", command=self.clear_selection).grid(row=row + 3, column=1, sticky="we")

    # -- operator actions --------------------------------------------------------------------
    def toggle(self, node_id: str) -> None:
        self.selected.symmetric_difference_update({node_id})
        self._show_selection()

    def select_all(self) -> None:
        self.selected = set(self.tiles)
        self._show_selection()

    def clear_selection(self) -> None:
        self.selected.clear()
        self._show_selection()

    def set_clicked(self) -> None:
        values = {name: w.get().strip() for name, w in self.fields.items() if w.get().strip()}
        if not self._targets() or not values:
            self.say("select tiles and fill in at least one setting first", error=True)
            return
        self.session.set_settings(self._targets(), values)

    def preset_clicked(self) -> None:
        name = self.preset.get()
        if not self._targets() or not name:
            self.say("select tiles and a preset first", error=True)
            return
        self.session.apply_preset(name, self._targets())

    def _targets(self) -> list[str]:
        order = {n: k for k, n in enumerate(self.tiles)}
        return sorted(self.selected, key=lambda n: order.get(n, 0))

    # -- what the session reports ----------------------------------------------------------------
    def _pump(self) -> None:
        try:
            while True:
                self.handle(self.session.updates.get_nowait())
        except queue.Empty:
            pass
        self._after = self.root.after(50, self._pump)

    def handle(self, update: tuple) -> None:
        kind = update[0]
        if kind == "view":
            self.show(update[1])
        elif kind == "connection":
            self.connection.config(text=update[2], bg=CONNECTION[update[1]])
        elif kind in ("busy", "result"):
            self.say(update[1])
        elif kind == "error":
            self.say(update[1], error=True)

    def say(self, text: str, error: bool = False) -> None:
        self.message.config(text=text, fg="#b00020" if error else "black")

    def show(self, view: dict) -> None:
        self.view = view
        ids = [n["id"] for n in view["nodes"]]
        if list(self.tiles) != ids:  # layout changed: rebuild the board
            for tile in self.tiles.values():
                tile.destroy()
            self.tiles = {nid: Tile(self.board, self, nid) for nid in ids}
            self.selected &= set(ids)
        for n in view["nodes"]:
            self.tiles[n["id"]].grid(row=n["row"], column=n["column"], padx=3, pady=3)
            self.tiles[n["id"]].show(n, n["id"] in self.selected)
        self.preset.config(values=list(view["presets"]))
        self.root.title(f"Grid operator: master {view.get('master') or '?'}, term {view.get('term')}")
        self._show_selection()

    def _show_selection(self) -> None:
        self.selection.config(text="selected: " + (", ".join(self._targets()) or "none (click tiles)"))
        if self.view:
            for n in self.view["nodes"]:
                self.tiles[n["id"]].show(n, n["id"] in self.selected)

    def close(self) -> None:
        self.root.after_cancel(self._after)
        self.session.close()
        self.root.destroy()
        # No reference cycle may keep Tk objects alive: the last reference must go on this
        # thread (reference counting), not in a garbage collection on a worker thread,
        # where deleting the Tcl interpreter aborts the process.
        for tile in self.tiles.values():
            tile.window = None
        self.tiles = {}


def run(client: Any, secret: bytes) -> int:
    try:
        root = tk.Tk()
    except tk.TclError as exc:  # no display (a server, an SSH session without X forwarding)
        from rpc.config import ConfigError

        client.close()
        raise ConfigError(f"cannot open a window: {exc}") from None
    window = GridWindow(root, UiSession(client, secret).start())
    root.mainloop()
    # Tk objects must be freed on this thread: a collection on a worker thread that is
    # still finishing a call would make Tcl abort the process.
    del window, root
    gc.collect()
    return 0

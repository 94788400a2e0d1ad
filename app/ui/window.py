"""The Tk window: a header, the grid as tiles, the commands, the event strip, a message line.

Only the Tk thread touches widgets. Every 50 ms it hands the session's updates (a local
queue, not the network) to the view model (app.ui.model.Board), then draws what the
model's ``screen()`` says, and only what changed. Tiles sit in a grid whose rows and
columns share the space evenly, so they follow the window's size; what a tile shows
shrinks with it (the whole text in large tiles, the id and state in small ones).
"""
from __future__ import annotations

import gc
import queue
import time
import tkinter as tk
from tkinter import font as tkfont
from tkinter import ttk
from typing import Any

from app.settings import SETTINGS
from app.ui.model import MASTER_BAND, MASTER_MARK, Board, Screen, TileView
from app.ui.session import UiSession

SELECTED = "#1f5fbf"
BOARD_BG = "#f3f3f3"
SIDE_WIDTH = 360
TEXT = "#1c1c1c"
HINT = "Click tiles to select them, then set settings or apply a preset to the selected nodes."
REDRAW_EVERY = 1.0  # seconds: what depends on time alone ("drifting") is redrawn this often


def apply_theme(root: tk.Tk) -> str:
    """Sun Valley (sv-ttk, Windows 11's look) when installed, else Tk's "clam"."""
    try:
        import sv_ttk

        sv_ttk.set_theme("light", root)
        return "sun-valley-light"
    except Exception:  # noqa: BLE001 - not installed or no PNG support: the plain theme works
        ttk.Style(root).theme_use("clam")
        return "clam"


class Fonts:
    def __init__(self, root: tk.Tk):
        family = tkfont.nametofont("TkDefaultFont", root).actual("family")
        self.header = tkfont.Font(root, family=family, size=12, weight="bold")
        self.title = {size: tkfont.Font(root, family=family, size=size, weight="bold") for size in (8, 10, 12)}
        self.body = {size: tkfont.Font(root, family=family, size=size) for size in (7, 9, 10)}
        self.strong = {size: tkfont.Font(root, family=family, size=size, weight="bold") for size in (7, 9, 10)}
        self.small = tkfont.Font(root, family=family, size=9)


class Tile(tk.Frame):
    """One node: a band with its id (and the master's mark), its state in words, what the
    master last saw, desired and actual settings. Click to select."""

    def __init__(self, parent: tk.Widget, window: "GridWindow", node_id: str):
        super().__init__(parent, bd=0, highlightthickness=3, highlightbackground=BOARD_BG)
        self.node_id, self.window = node_id, window
        self.pack_propagate(False)
        self.band = tk.Frame(self, bd=0)
        self.band.pack(side="top", fill="x")
        self.title = tk.Label(self.band, anchor="w", fg="white", padx=6)
        self.title.pack(side="left")
        self.role = tk.Label(self.band, anchor="e", fg="#ffd54f", padx=6)
        self.role.pack(side="right")
        self.health = tk.Label(self, anchor="w", justify="left", padx=6)
        self.detail = tk.Label(self, anchor="w", justify="left", padx=6, fg="#444444")
        self.desired = tk.Label(self, anchor="w", justify="left", padx=6, fg=TEXT)
        self.actual = tk.Label(self, anchor="w", justify="left", padx=6, fg=TEXT)
        self.lines = (self.health, self.detail, self.desired, self.actual)
        for w in (self, self.band, self.title, self.role, *self.lines):
            w.bind("<Button-1>", self.clicked)
        self.bind("<Configure>", self._resized)
        self._shown: tuple | None = None
        self._size = (0, 0)

    def clicked(self, event: Any = None) -> None:
        self.window.toggle(self.node_id)

    def show(self, t: TileView, selected: bool) -> None:
        key = (t, selected)
        if key == self._shown:
            return
        self._shown = key
        band = MASTER_BAND if t.master else t.accent
        self.band.config(bg=band)
        self.title.config(text=("✓ " if selected else "") + t.id, bg=band)
        self.role.config(bg=band)
        self.health.config(text=t.words, fg=t.accent, bg=t.colour)
        self.detail.config(text=t.detail, bg=t.colour)
        self.desired.config(text=t.desired, bg=t.colour)
        self.actual.config(text=t.actual, bg=t.colour)
        self._layout()

    def _resized(self, event: Any) -> None:
        if (event.width, event.height) != self._size:
            self._size = (event.width, event.height)
            self._layout()

    def _layout(self) -> None:
        """What fits: every line in a large tile, fewer as it shrinks, fonts and margins too;
        a tile too small for any line is all band (its state's colour, or the master's)."""
        width, height = self._size
        if width < 2 or self._shown is None:
            return
        t, selected = self._shown
        fonts = self.window.fonts
        size = 12 if height >= 150 and width >= 200 else 10 if height >= 90 and width >= 120 else 8
        body = {12: 10, 10: 9, 8: 7}[size]
        tiny = width < 70 or height < 40
        pad, thick = (1, 1) if tiny else (6, 3)
        outline = SELECTED if selected else MASTER_BAND if t.master else BOARD_BG
        self.config(highlightthickness=thick, highlightbackground=outline)
        self.title.config(font=fonts.title[size], padx=pad)
        mark, title_font = "", fonts.title[size]
        for candidate in ((MASTER_MARK, "★", "") if t.master else ()):  # the band's colour says it too
            mark = candidate
            if title_font.measure(self.title.cget("text") + candidate) + 4 * pad + 2 * thick + 2 <= width:
                break
        self.role.config(text=mark, font=fonts.title[size], padx=pad)
        line = fonts.body[body].metrics("linespace")
        room = height - fonts.title[size].metrics("linespace") - 8
        wrap = max(20, width - 18)
        wanted = [self.health] + [w for w in (self.detail, self.desired, self.actual) if w.cget("text")]
        shown = []
        for w in wanted:  # a line that may wrap counts as two
            need = line * (2 if w is not self.health and width < 260 else 1)
            if tiny or room < need:
                break
            room -= need
            shown.append(w)
        self.config(bg=t.colour if shown else self.band.cget("bg"))
        for w in self.lines:
            w.config(wraplength=wrap, font=fonts.strong[body] if w is self.health else fonts.body[body])
            w.pack_forget()
        for w in shown:  # in their order, whatever was shown before
            w.pack(side="top", fill="x", anchor="w")


class GridWindow:
    def __init__(self, root: tk.Tk, session: UiSession, *, board: Board | None = None):
        self.root, self.session = root, session
        self.model = board or Board()
        self.screen: Screen | None = None
        self.selected: set[str] = set()
        self.tiles: dict[str, Tile] = {}
        self._cells: tuple | None = None
        self.theme = apply_theme(root)
        self.fonts = Fonts(root)
        root.title("Grid operator")
        root.protocol("WM_DELETE_WINDOW", self.close)
        root.minsize(860, 560)
        width, height = min(1280, root.winfo_screenwidth()), min(800, root.winfo_screenheight())
        root.geometry(f"{width}x{height}")

        self.header = tk.Label(root, text="Connecting to the cluster…", anchor="w", fg="white", bg="#546e7a",
                               padx=12, pady=8, font=self.fonts.header, justify="left")
        self.header.pack(side="top", fill="x")
        self.banner = tk.Label(root, text="", anchor="w", justify="left", fg="white", bg="#b00020", padx=12, pady=6)
        self.message = tk.Label(root, text=HINT, anchor="w", justify="left", padx=12, pady=5, bg="#e8e8e8", fg=TEXT)
        self.message.pack(side="bottom", fill="x")
        self.body = tk.Frame(root, bg=BOARD_BG)
        self.body.pack(side="top", fill="both", expand=True)
        side = ttk.Frame(self.body, width=SIDE_WIDTH, padding=(10, 8, 10, 8))
        side.pack(side="right", fill="y")
        side.pack_propagate(False)
        side.grid_propagate(False)
        self.board = tk.Frame(self.body, bg=BOARD_BG, padx=6, pady=6)
        self.board.pack(side="left", fill="both", expand=True)
        self.empty = tk.Label(self.board, text="waiting for the grid…", bg=BOARD_BG, fg="#777777")
        self.empty.place(relx=0.5, rely=0.5, anchor="center")
        self._build_side(side)
        root.bind("<Configure>", self._window_resized, add="+")
        self._drawn_at = 0.0
        self._changes = -1
        self._after = None
        self._pump()

    # -- the side panel: commands and events ---------------------------------------------------
    def _build_side(self, side: ttk.Frame) -> None:
        side.columnconfigure(1, weight=1)
        self.selection = ttk.Label(side, text="selected: none", wraplength=SIDE_WIDTH - 30, justify="left")
        self.selection.grid(row=0, column=0, columnspan=2, sticky="we", pady=(0, 6))
        self.fields: dict[str, Any] = {}
        for row, name in enumerate(SETTINGS, start=1):
            ttk.Label(side, text=name).grid(row=row, column=0, sticky="w", padx=(0, 8))
            if name == "power":
                w: Any = ttk.Combobox(side, values=("", "on", "off"), state="readonly")
            else:
                w = ttk.Entry(side)
            w.grid(row=row, column=1, sticky="we", pady=2)
            self.fields[name] = w
        row = len(SETTINGS) + 1
        self.set_button = ttk.Button(side, text="Set on selected", command=self.set_clicked)
        self.set_button.grid(row=row, column=0, columnspan=2, sticky="we", pady=(6, 10))
        ttk.Label(side, text="preset").grid(row=row + 1, column=0, sticky="w", padx=(0, 8))
        self.preset = ttk.Combobox(side, values=(), state="readonly")
        self.preset.grid(row=row + 1, column=1, sticky="we")
        self.preset_button = ttk.Button(side, text="Apply preset to selected", command=self.preset_clicked)
        self.preset_button.grid(row=row + 2, column=0, columnspan=2, sticky="we", pady=(6, 10))
        pair = ttk.Frame(side)
        pair.grid(row=row + 3, column=0, columnspan=2, sticky="we")
        pair.columnconfigure((0, 1), weight=1, uniform="b")
        self.select_all_button = ttk.Button(pair, text="Select all", command=self.select_all)
        self.select_all_button.grid(row=0, column=0, sticky="we", padx=(0, 3))
        self.clear_button = ttk.Button(pair, text="Clear selection", command=self.clear_selection)
        self.clear_button.grid(row=0, column=1, sticky="we", padx=(3, 0))
        ttk.Label(side, text="Events (newest first)", font=self.fonts.strong[10]).grid(
            row=row + 4, column=0, columnspan=2, sticky="w", pady=(14, 4))
        self.events = tk.Text(side, wrap="word", height=10, relief="flat", bd=0, padx=6, pady=4, bg="white",
                              fg=TEXT, font=self.fonts.small, cursor="arrow", takefocus=0)
        self.events.grid(row=row + 5, column=0, columnspan=2, sticky="nsew")
        self.events.tag_configure("time", foreground="#777777")
        side.rowconfigure(row + 5, weight=1)
        self.events.config(state="disabled")
        self.buttons = (self.set_button, self.preset_button, self.select_all_button, self.clear_button)

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

    def say(self, text: str, error: bool = False) -> None:
        self.message.config(text=text, fg="#b00020" if error else TEXT)

    # -- the one loop: updates into the model, the model onto the screen -----------------------
    def _pump(self) -> None:
        try:
            while True:
                self.handle(self.session.updates.get_nowait())
        except queue.Empty:
            pass
        now = time.monotonic()
        if self.model.changes != self._changes or now - self._drawn_at >= REDRAW_EVERY:
            self._changes, self._drawn_at = self.model.changes, now
            self.draw(self.model.screen(now))
        self._after = self.root.after(50, self._pump)

    def handle(self, update: tuple) -> None:
        self.model.apply(update)

    def draw(self, screen: Screen) -> None:
        old, self.screen = self.screen, screen
        h = screen.header
        if old is None or old.header != h:
            self.header.config(text=h.text, bg=h.colour)
            self.root.title(f"Grid operator: {h.text}")
        if old is None or old.refusal != screen.refusal:
            if screen.refusal:
                self.banner.config(text=screen.refusal)
                self.banner.pack(side="top", fill="x", after=self.header)
            else:
                self.banner.pack_forget()
        self._draw_tiles(screen)
        if old is None or old.presets != screen.presets:
            self.preset.config(values=list(screen.presets))
        if old is None or old.events != screen.events:
            self._draw_events(screen)
        if old is None or (old.message, old.message_is_error) != (screen.message, screen.message_is_error):
            self.say(screen.message or HINT, screen.message_is_error)

    def _draw_tiles(self, screen: Screen) -> None:
        cells = (screen.rows, screen.columns, tuple((t.id, t.row, t.column) for t in screen.tiles))
        if cells != self._cells:  # the layout changed: rebuild the board
            self._cells = cells
            for tile in self.tiles.values():
                tile.destroy()
            for k in range(max(self.board.grid_size()[0], 33)):
                self.board.columnconfigure(k, weight=0, uniform="")
                self.board.rowconfigure(k, weight=0, uniform="")
            for c in range(1, screen.columns + 1):
                self.board.columnconfigure(c, weight=1, uniform="col")
            for r in range(1, screen.rows + 1):
                self.board.rowconfigure(r, weight=1, uniform="row")
            self.tiles = {t.id: Tile(self.board, self, t.id) for t in screen.tiles}
            pad = 3 if max(screen.rows, screen.columns) <= 8 else 1
            for t in screen.tiles:
                self.tiles[t.id].grid(row=t.row, column=t.column, padx=pad, pady=pad, sticky="nsew")
            self.selected &= set(self.tiles)
            if screen.tiles:
                self.empty.place_forget()
            self._show_selection(draw=False)
        for t in screen.tiles:
            self.tiles[t.id].show(t, t.id in self.selected)

    def _draw_events(self, screen: Screen) -> None:
        e = self.events
        e.config(state="normal")
        e.delete("1.0", "end")
        for line in screen.events:
            e.tag_configure(line.kind, foreground=line.colour)
            e.insert("end", line.at.strftime("%H:%M:%S") + "  ", ("time",))
            e.insert("end", line.text + "\n", (line.kind,))
        e.config(state="disabled")

    def _show_selection(self, draw: bool = True) -> None:
        self.selection.config(text="selected: " + (", ".join(self._targets()) or "none (click tiles)"))
        if draw and self.screen is not None:
            for t in self.screen.tiles:
                self.tiles[t.id].show(t, t.id in self.selected)

    def _window_resized(self, event: Any) -> None:
        if event.widget is self.root:
            wrap = max(200, event.width - 30)
            self.header.config(wraplength=wrap)
            self.banner.config(wraplength=wrap)
            self.message.config(wraplength=wrap)

    def close(self) -> None:
        if self._after is not None:
            self.root.after_cancel(self._after)
        self.session.close()
        self.root.destroy()
        # No reference cycle may keep Tk objects alive: the last reference must go on this
        # thread (reference counting), not in a garbage collection on a worker thread,
        # where deleting the Tcl interpreter aborts the process.
        for tile in self.tiles.values():
            tile.window = None
        self.tiles = {}
        self.fonts = None


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

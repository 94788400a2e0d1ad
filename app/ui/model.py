"""The window's view model: what the header, the tiles and the event strip say, derived
in one place from what the session reports.

The Tk thread hands every update to :meth:`Board.apply` and draws only what
:meth:`Board.screen` returns. Who is master comes from one fact (the session's watch of
the master), so the header and the tiles cannot disagree: while a failover runs no tile
is master, and the master that stopped answering the window is shown down at once, before
the new master's controller records it. Pure Python, no Tk: tested without a display.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from app.settings import as_text
from prevalence.text import one_line

#: Tile states: (words on the tile, body colour, accent colour for the band and words).
TILE_STATES: dict[str, tuple[str, str, str]] = {
    "in_sync": ("up · in sync", "#e3f4e4", "#2e7d32"),
    "restoring": ("up · restoring desired settings…", "#dfeafc", "#1565c0"),
    "drifting": ("drifting: actual ≠ desired", "#ffecd1", "#d84315"),
    "down": ("down", "#fbdcdc", "#c62828"),
    "unknown": ("not heard from yet", "#eceff1", "#607d8b"),
    "unreachable": ("no answer from the cluster", "#d5dade", "#37474f"),
    "answering": ("answers · no master checks it", "#eef2e0", "#6b7f1a"),
}
MASTER_BAND = "#283593"  # indigo: the master's band, whatever its health
MASTER_MARK = "★ MASTER"

#: Header states: (background colour). The words are built in :meth:`Board.header`.
HEADER_COLOURS = {"connecting": "#546e7a", "connected": "#2e7d32", "failover": "#b26a00",
                  "no_master": "#b26a00", "unreachable": "#b00020"}

#: Event kinds and their colour in the strip.
EVENT_COLOURS = {"master": "#283593", "down": "#c62828", "up": "#2e7d32", "restored": "#1565c0",
                 "drift": "#d84315", "layout": "#4a148c", "refused": "#b00020", "command": "#37474f",
                 "cluster": "#b00020", "reachable": "#2e7d32"}
MAX_EVENTS = 20


@dataclass(frozen=True)
class Link:
    """What the session's watch of the master saw last.

    ``state``: connected (``master`` answers as leader), lost (the master just stopped
    answering or stepped down: ``node``, ``reason``), searching (no leader among the nodes
    that answer), unreachable (no node answered). ``silent``: former masters that have not
    answered this window since it lost them."""

    state: str
    master: str | None = None
    address: str | None = None
    term: int | None = None
    node: str | None = None
    reason: str = ""
    answering: int = 0
    of: int = 0
    voters: int = 0  # the voters the answering nodes name (0: unknown), and how many of them answer
    voting: int = 0
    silent: tuple[str, ...] = ()
    #: while no node leads: (id if known, address, why) of each node that gave no status,
    #: and the ids of those that gave one
    unanswered: tuple[tuple[str | None, str, str], ...] = ()
    answered: tuple[str, ...] = ()
    #: while none answers as leader: the leader that ``following`` answering nodes of the
    #: newest term (``term``) follow, though it does not answer this window
    followed: str | None = None
    following: int = 0

    def why_not(self, node: dict) -> str | None:
        """Why ``node`` (a grid view's node) gave this window no status, if it did not."""
        return next((why for nid, address, why in self.unanswered
                     if nid == node["id"] or (nid is None and address == node.get("address"))), None)

    def no_status(self) -> str:
        """"no node answers (N tried)", or with why when it is known, each cause once
        with the nodes that gave it: a node refusing the key answers, it is not silent."""
        if not self.unanswered:
            return f"no node answers ({self.of} tried)"
        causes: dict[str, list[str]] = {}
        for nid, address, why in self.unanswered:
            causes.setdefault(why, []).append(nid or address)
        if len(causes) == 1:
            why = next(iter(causes))
        else:
            why = "; ".join(f"{cause} ({', '.join(who[:5])}{' ...' if len(who) > 5 else ''})"
                            for cause, who in causes.items())
        return f"no node gives its status ({self.of} tried: {one_line(why, 240)})"


@dataclass(frozen=True)
class Header:
    state: str
    text: str
    colour: str


@dataclass(frozen=True)
class TileView:
    id: str
    row: int
    column: int
    state: str
    master: bool
    words: str
    detail: str
    desired: str
    actual: str
    colour: str
    accent: str


@dataclass(frozen=True)
class EventLine:
    at: datetime  # local time
    kind: str
    text: str

    @property
    def colour(self) -> str:
        return EVENT_COLOURS.get(self.kind, "#37474f")


@dataclass(frozen=True)
class Screen:
    header: Header
    rows: int
    columns: int
    tiles: tuple[TileView, ...]
    refusal: str | None
    events: tuple[EventLine, ...]  # newest first
    presets: tuple[str, ...]
    message: str
    message_is_error: bool


def describe(exc: BaseException) -> str:
    """An error as one line for an operator: what happened, never a class name or a traceback."""
    from prevalence.errors import OutcomeUnknown, PrevalenceError
    from rpc.client import ClusterUnavailable, RemoteTransactionError

    if isinstance(exc, RemoteTransactionError):
        return one_line(str(exc.remote_message))
    if isinstance(exc, OutcomeUnknown):  # sent, its answer lost: "failed" would invite a second apply
        return ("sent, but its answer was lost (the master may have died): it may have been applied; "
                "look at the tiles before sending it again")
    if isinstance(exc, ClusterUnavailable):
        return ("no master answered in time (the cluster is unreachable or has no majority); "
                + ("not confirmed" if exc.sent else "not sent"))
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "no answer (timed out)"
    if isinstance(exc, (EOFError, ConnectionError)):
        return "connection lost"
    # RPyC appends the other side's traceback to an error it rebuilds: not for operators
    text = one_line(str(exc).split("\n\n========= Remote Traceback", 1)[0])
    if not isinstance(exc, (PrevalenceError, ValueError)):
        text = re.sub(r"^[A-Za-z_][\w.]*(Error|Exception): ", "", text)
    return text or "failed without a message"


def _local(moment: datetime) -> datetime:
    return moment.astimezone() if moment.tzinfo else moment


def _clock(moment: datetime) -> str:
    return _local(moment).strftime("%H:%M:%S")


def _short(settings: dict | None, limit: int = 24) -> str:
    """Settings as text that fits a tile: long values cut (``grid show`` prints them whole)."""
    if settings is None:
        return "unknown"
    return as_text({k: (v if len(str(v)) <= limit else str(v)[:limit - 1] + "…") for k, v in settings.items()})


def _targets(targets: Iterable[str]) -> str:
    return ", ".join(targets) or "nothing"


class Board:
    """The one place where the window's state changes; ``screen()`` is all it shows.

    ``drift_after``: seconds a node that is up may differ from its desired settings before
    "restoring" becomes "drifting" (a push normally takes one controller cycle, 0.5 s)."""

    def __init__(self, drift_after: float = 5.0):
        self.drift_after = drift_after
        self.link = Link("connecting")
        self.view: dict | None = None
        self.events: list[EventLine] = []
        self.message, self.message_is_error = "", False
        self._failover_from: str | None = None  # the master lost, until a new one is known
        self._last_master: str | None = None
        self._unreachable_since: datetime | None = None
        self._out_of_sync: dict[str, float] = {}  # node -> when this window first saw it differ
        self._health: dict[str, str] = {}  # node -> up/down, as the journal's events said
        self.changes = 0  # counts apply() calls that changed something, for the window's redraw

    # -- the one way in --------------------------------------------------------------------
    def apply(self, update: tuple, now: float | None = None, wall: datetime | None = None) -> None:
        """One update from the session: ("link", Link), ("view", grid view), ("event", rpc.Event),
        ("command", "busy"|"done"|"refused"|"failed", text)."""
        now = time.monotonic() if now is None else now
        wall = datetime.now().astimezone() if wall is None else wall
        kind = update[0]
        if kind == "link":
            self._link(update[1], wall)
        elif kind == "view":
            self._view(update[1], now)
        elif kind == "event":
            self._journal_event(update[1])
        elif kind == "command":
            self._command(update[1], update[2], wall)
        else:
            return
        self.changes += 1

    def _link(self, link: Link, wall: datetime) -> None:
        old = self.link
        if old.state == "unreachable" and link.state != "unreachable":
            self._event(wall, "reachable", "the cluster answers again")
        if link.state == "connected":
            if self._last_master is None:
                self._event(wall, "master", f"connected: master {link.master}, term {link.term}")
            elif link.master != self._last_master or old.state != "connected":
                was = self._failover_from or self._last_master
                if link.master != was:
                    self._event(wall, "master", f"master changed: {was} → {link.master} (term {link.term})")
                else:
                    self._event(wall, "master", f"master {link.master} again (term {link.term})")
            self._last_master, self._failover_from, self._unreachable_since = link.master, None, None
        elif link.state == "lost":
            self._failover_from = link.node
            self._event(wall, "master", f"master {link.node} lost: {link.reason}")
        elif link.state == "unreachable" and old.state != "unreachable":
            self._unreachable_since = wall
            self._event(wall, "cluster", f"cluster unreachable: {link.no_status()}")
        if link.state != "unreachable":
            self._unreachable_since = None
        self.link = link

    def _view(self, view: dict, now: float) -> None:
        self.view = view
        for n in view["nodes"]:
            if n["health"] == "up" and not n["in_sync"]:
                self._out_of_sync.setdefault(n["id"], now)
            else:
                self._out_of_sync.pop(n["id"], None)
            self._health.setdefault(n["id"], n["health"])

    def _journal_event(self, event: Any) -> None:
        at, f = _local(event.time), event.fields
        t = event.type
        if t == "grid.MarkNode":
            node, detail = f.get("id"), f.get("detail") or ""
            before = self._health.get(node)
            self._health[node] = "up" if f.get("up") else "down"
            if not f.get("up"):
                self._event(at, "down", f"{node} down: {detail}" if detail else f"{node} down")
            elif detail.startswith("agent restarted"):
                self._event(at, "restored", f"{node} up: agent restarted, settings restored")
            elif detail.startswith("push failed"):
                self._event(at, "drift", f"{node} {detail}")
            elif before != "up":
                self._event(at, "up", f"{node} up again" if before == "down" else f"{node} up")
        elif t == "grid.ApplyLayout":
            self._event(at, "layout", f"layout applied: {f.get('rows')}x{f.get('columns')} grid, "
                                      f"{len(f.get('nodes') or ())} nodes")
        elif t == "grid.RefuseLayout":
            self._event(at, "refused", f"layout edit refused on {f.get('node')}: {f.get('reason')}")
        elif t == "grid.SetSettings":
            self._event(at, "command", f"set {as_text(f.get('settings'))} on {_targets(f.get('targets', ()))}")
        elif t == "grid.ApplyPreset":
            self._event(at, "command", f"preset {f.get('name')} applied to {_targets(f.get('targets', ()))}")
        elif t == "grid.DefinePreset":
            self._event(at, "command", f"preset {f.get('name')} defined: {as_text(f.get('settings'))}")
        elif t == "grid.DeletePreset":
            self._event(at, "command", f"preset {f.get('name')} deleted")
        elif t in ("grid.AddNode", "grid.RemoveNode", "grid.MoveNode"):
            what = t.split(".")[1].replace("Node", "").lower()
            self._event(at, "layout", f"node {f.get('id')}: {what}d" if what != "add" else f"node {f.get('id')} added")

    def _command(self, phase: str, text: str, wall: datetime) -> None:
        self.message, self.message_is_error = text, phase in ("refused", "failed")
        if phase == "refused":
            self._event(wall, "refused", f"command refused: {text}")
        elif phase == "failed":
            self._event(wall, "refused", f"command not confirmed: {text}")

    def _event(self, at: datetime, kind: str, text: str) -> None:
        self.events.append(EventLine(_local(at), kind, text))
        self.events.sort(key=lambda e: e.at)  # stable: same-time events keep their order
        del self.events[:-MAX_EVENTS]

    # -- what the window shows ---------------------------------------------------------------
    def header(self) -> Header:
        link, state = self.link, self.link.state
        if state == "connected":
            text = f"Connected · master {link.master} at {link.address} · term {link.term}"
            return Header("connected", text, HEADER_COLOURS["connected"])
        if state == "unreachable":
            since = f" since {_clock(self._unreachable_since)}" if self._unreachable_since else ""
            text = (f"Cluster unreachable: {link.no_status()}{since}"
                    + (" · the tiles show the last known state" if self.view else ""))
            return Header("unreachable", text, HEADER_COLOURS["unreachable"])
        # a majority of the voters the answering nodes name elects (of the addresses only
        # when no node names its voters)
        up, of, who = (link.voting, link.voters, "voters") if link.voters else (link.answering, link.of, "nodes")
        need = of // 2 + 1
        if state == "searching" and link.followed:  # it may lead them still: no failover to claim
            why = link.why_not({"id": link.followed})
            text = (f"Master {link.followed} does not answer this window{f' ({why})' if why else ''}, "
                    f"yet {link.following} of the nodes that answer follow it (term {link.term})")
            return Header("failover" if self._failover_from else "no_master", text, HEADER_COLOURS["failover"])
        if self._failover_from is not None:
            if state == "searching" and link.voters and up < need:  # no new master can come: say so
                text = (f"No master: master {self._failover_from} lost, and only {up} of {of} voters answer, "
                        f"a master needs {need}")
                return Header("no_master", text, HEADER_COLOURS["no_master"])
            why = f" ({link.reason})" if state == "lost" and link.reason else ""
            answers = f" · {up} of {of} {who} answer" if state == "searching" else ""
            text = f"Failover in progress: master {self._failover_from} lost{why} · waiting for a new master{answers}"
            return Header("failover", text, HEADER_COLOURS["failover"])
        if state == "searching":
            text = (f"No master: an election is running · {up} of {of} {who} answer" if up >= need else
                    f"No master: only {up} of {of} {who} answer, a master needs {need}")
            return Header("no_master", text, HEADER_COLOURS["no_master"])
        return Header("connecting", "Connecting to the cluster…", HEADER_COLOURS["connecting"])

    def tile(self, n: dict, now: float) -> TileView:
        master = self.link.state == "connected" and n["id"] == self.link.master
        followed = self.link.state == "searching" and n["id"] == self.link.followed  # leads, as the others say
        silent = n["id"] in self.link.silent and not followed
        # no master records anything now: a node that gives this window no status is not shown as it was
        unanswered = self.link.why_not(n) if self.link.state == "searching" and not followed else None
        answers = self.link.state == "searching" and n["id"] in self.link.answered and not silent
        detail = n.get("detail") or ""
        if self.link.state == "unreachable":
            state, detail = "unreachable", f"last known: {n['health']}"
        elif answers and n["health"] != "up":  # what the last master recorded is no longer so
            since = f" since {_clock(datetime.fromisoformat(n['since']))}" if n.get("since") else ""
            state, detail = "answering", (f"recorded down{since}; it answers this window now" if n["health"] == "down"
                                          else "no master has checked it yet; it answers this window now")
        elif silent or unanswered or n["health"] == "down":
            state = "down"
            if unanswered and not silent:
                detail = f"not answering (nor is any master): {unanswered}"
            elif n["health"] != "down":  # the window saw it first: the new master has not recorded it yet
                why = self.link.reason if n["id"] == self.link.node else self.link.why_not(n)
                detail = f"stopped answering: {why}" if why else "stopped answering"
            elif n.get("since"):
                detail = f"since {_clock(datetime.fromisoformat(n['since']))}" + (f" · {detail}" if detail else "")
        elif n["health"] == "unknown":
            state = "unknown"
        elif n["in_sync"]:
            state, detail = "in_sync", ""  # what was pushed when: the event strip has it
        elif (detail.startswith("push failed") or now - self._out_of_sync.get(n["id"], now) >= self.drift_after
              or self.link.state in ("searching", "unreachable")):  # no master pushes anything now
            state = "drifting"
        else:
            state = "restoring"
        if followed:
            why = self.link.why_not(n)
            detail = f"the others follow it, but it does not answer this window{': ' + why if why else ''}"
        words, colour, accent = TILE_STATES[state]
        return TileView(n["id"], n["row"], n["column"], state, master, words, detail,
                        "desired: " + _short(n["desired"]),
                        "actual:  " + ("-" if state in ("down", "unreachable") and n["actual"] is None
                                       else _short(n["actual"])),
                        colour, accent)

    def screen(self, now: float | None = None) -> Screen:
        now = time.monotonic() if now is None else now
        v = self.view or {"rows": 0, "columns": 0, "nodes": [], "presets": {}}
        refused = v.get("layout_refused")
        refusal = None
        if refused:
            refusal = (f"Layout edit refused on {refused['node']} at "
                       f"{_clock(datetime.fromisoformat(refused['at']))}: {refused['reason']}. "
                       "The grid keeps its layout; fix the file and save it again.")
        return Screen(self.header(), v["rows"], v["columns"], tuple(self.tile(n, now) for n in v["nodes"]),
                      refusal, tuple(reversed(self.events)), tuple(v["presets"]), self.message, self.message_is_error)

"""The layout file (grid size and nodes) and the watcher that turns edits into transactions.

    [grid]
    rows = 3
    columns = 3

    [nodes.n1]
    address = "127.0.0.1:7101"   # where the node's agent answers
    row = 1
    column = 1

The file is the operator's way to change the configuration: a saved edit is checked
here and, if valid, becomes one replicated ``ApplyLayout``; an invalid edit is logged
with the file and the problem and changes nothing.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import tomllib
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from app.model import ApplyLayout, GridError, NodeSpec, check_layout
from prevalence._platform import read_small_file

log = logging.getLogger("app.layout")
MAX_BYTES = 1 << 20  # a 32x32 layout is under 100 KB; more is not a layout (or is /dev/zero)
#: Seconds a file written in place is left to its writer when its close is not seen:
#: where the observer reports closes (inotify), a write is read once its writer closes it.
WRITE_GRACE = 10.0


def _reports_closes(observer) -> bool:
    """Whether ``observer`` says when a writer closes a file (Linux's inotify does;
    Windows' and macOS's observers do not)."""
    try:
        from watchdog.observers.inotify import InotifyObserver
    except Exception:  # noqa: BLE001 - not Linux: the module needs inotify from the C library
        return False
    return isinstance(observer, InotifyObserver)


class LayoutError(GridError):
    """The layout file cannot be used; the message names the file and the problem."""


class LayoutUndelivered(Exception):
    """A valid layout the cluster did not answer for (no master now, or its answer lost):
    nothing refused it, so the watcher sends the file again later, until it is taken."""


def parse_layout(data: bytes, path: str = "layout.toml") -> ApplyLayout:
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise LayoutError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise LayoutError(f"{path}: not valid TOML: nested too deeply") from None
    extra = sorted(set(doc) - {"grid", "nodes"})
    if extra:
        raise LayoutError(f"{path}: unknown section(s) {_keys(extra)} (expected [grid] and [nodes.ID])")
    grid = _table(doc, "grid", path)
    _no_extras(grid, {"rows", "columns"}, f"{path}: [grid]")  # first: a misspelt key is named as such
    rows = _int(grid, "rows", f"{path}: [grid]")
    columns = _int(grid, "columns", f"{path}: [grid]")
    specs = []
    for node_id, body in _table(doc, "nodes", path).items():
        where = f"{path}: [nodes.{_keys([node_id])}]"
        if not isinstance(body, dict):
            raise LayoutError(f"{where} must be a table with address, row and column")
        _no_extras(body, {"address", "row", "column"}, where)
        address = body.get("address")
        if not isinstance(address, str):
            raise LayoutError(f"{where}: 'address' must be \"HOST:PORT\", got {address!r}")
        specs.append(NodeSpec(node_id, address, _int(body, "row", where), _int(body, "column", where)))
    try:
        check_layout(rows, columns, specs, strict=True)
    except GridError as exc:
        raise LayoutError(f"{path}: {exc}") from None
    return ApplyLayout(rows, columns, tuple(specs), digest_of(data))


def read_layout(path: str) -> ApplyLayout:
    return parse_layout(read_bounded(path), path)


def read_bounded(path: str) -> bytes:
    """The file's bytes, refused past :data:`MAX_BYTES` instead of read into memory whole."""
    try:
        data, _ = read_small_file(path, MAX_BYTES)  # a FIFO would block the CLI, or the watcher's thread
    except OSError as exc:
        raise LayoutError(f"{path}: cannot read the layout file: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise LayoutError(f"{path}: larger than {MAX_BYTES >> 20} MB: not a layout file")
    return data


def render_layout(rows: int, columns: int, nodes: list[NodeSpec]) -> str:
    lines = ["# The grid and its nodes. Save an edit and the running cluster applies it.",
             "[grid]", f"rows = {rows}", f"columns = {columns}", ""]
    for n in nodes:
        lines += [f"[nodes.{n.id}]", f'address = "{n.address}"', f"row = {n.row}", f"column = {n.column}", ""]
    return "\n".join(lines)


def _table(doc: dict, key: str, path: str) -> dict:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise LayoutError(f"{path}: a [{key}] section is required")
    return value


def _int(table: dict, key: str, where: str) -> int:
    value = table.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise LayoutError(f"{where}: '{key}' must be a whole number, got {value!r}")
    return value


def _no_extras(table: dict, known: set[str], where: str) -> None:
    extra = sorted(set(table) - known)
    if extra:
        raise LayoutError(f"{where}: unknown field(s) {_keys(extra)} (expected {', '.join(sorted(known))})")


def _keys(keys: list[str]) -> str:
    """Keys from the file as a message names them: a quoted TOML key may hold escape
    sequences, which grid show and grid up would otherwise print to the terminal."""
    return ", ".join(k if k.isprintable() and len(k) <= 64 else repr(k)[:66] for k in keys)


def digest_of(data: bytes) -> str:
    """The short digest that names a version of a layout file (``ApplyLayout.digest``)."""
    return hashlib.sha256(data).hexdigest()[:16]


def file_digest(path: str) -> str | None:
    """The digest of the file as it is now; None if it cannot be read."""
    try:
        return digest_of(read_bounded(path))
    except LayoutError:
        return None


class LayoutWatcher:
    """Calls ``on_layout`` with each valid saved version of ``path``, else
    ``on_error(message, digest)`` (``digest`` of the refused content, "" if unreadable).

    Editors save by rewriting or by renaming a temporary file over the original, so the
    directory is watched and events for the file are debounced; an unchanged digest
    (a touch, a second event for the same save) is not reported again, but the version
    saved after a refused one always is (so that the refusal can be cleared). Where the
    observer reports closes, a file written in place is read once its writer closes it
    (or after :data:`WRITE_GRACE`), not while a slow save has written part of it: the
    first nodes alone are a valid layout, which would remove the others. A version
    ``on_layout`` could not deliver, or whose refusal ``on_error`` could not record
    (:class:`LayoutUndelivered`), is read and checked again after a back-off (``retry``
    seconds, doubling up to 30), until it is taken or its refusal recorded.
    """

    def __init__(self, path: str, on_layout: Callable[[ApplyLayout], None],
                 on_error: Callable[[str, str], None], debounce: float = 0.2, retry: float = 1.0):
        self.path = os.path.abspath(path)
        self._on_layout, self._on_error, self._debounce = on_layout, on_error, debounce
        self._retry_first, self._retry = retry, retry
        self._closed = False
        self._last_digest: str | None = None
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._checking = threading.Lock()
        self._observer = Observer()
        self._observer.daemon = True
        self._closes = _reports_closes(self._observer)
        self._observer.schedule(_Handler(self), os.path.dirname(self.path), recursive=False)

    def start(self, current_digest: str | None = None) -> "LayoutWatcher":
        """``current_digest``: a version not to report (unless saved again after another):
        the one already applied, or the one in the file as the watching starts."""
        self._last_digest = current_digest
        self._observer.start()
        return self

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._timer:
                self._timer.cancel()
        self._observer.stop()
        self._observer.join(2)

    def _touched(self, event: FileSystemEvent) -> None:
        paths = {os.path.abspath(os.fsdecode(p)) for p in (event.src_path, getattr(event, "dest_path", ""))
                 if p}
        if self.path not in paths or event.event_type in ("opened", "closed_no_write", "deleted"):
            return
        self._retry = self._retry_first  # a new save: its delivery starts afresh
        written = event.event_type == "modified" and not event.is_directory and self._closes
        self._check_in(WRITE_GRACE if written else self._debounce)  # written: "closed" follows

    def _check_in(self, delay: float) -> None:
        with self._lock:
            if self._closed:
                return
            if self._timer:
                self._timer.cancel()
            self._timer = threading.Timer(delay, self._check)
            self._timer.daemon = True
            self._timer.start()

    def _check(self) -> None:
        # one check at a time: a save made while the previous one is still being sent (no
        # master yet) is read and sent after it, so the grid ends with the file's content
        with self._checking:
            self._check_now()

    def _check_now(self) -> None:
        digest = ""  # unreadable or too large: no digest of a content
        try:
            data = read_bounded(self.path)
            digest = digest_of(data)
            layout = parse_layout(data, self.path)
        except LayoutError as exc:
            log.error("layout edit rejected, nothing changed: %s", exc)
            self._last_digest = None  # the next valid save is reported, even if it is the applied one
            self._report(str(exc), digest)
            return
        if layout.digest == self._last_digest:
            return
        self._last_digest = layout.digest
        try:
            self._on_layout(layout)
        except LayoutUndelivered as exc:  # not refused: sent again (the file read again) later
            self._last_digest = None
            log.warning("layout edit not applied yet, sending it again in %.0f s: %s", self._retry, exc)
            self._again()
        except Exception as exc:  # noqa: BLE001 - reported, the watcher keeps watching
            self._last_digest = None  # a later save of the same text is tried again
            log.error("layout edit not applied: %s", exc)
            self._report(f"{self.path}: {exc}", layout.digest)

    def _report(self, message: str, digest: str) -> None:
        try:
            self._on_error(message, digest)
        except LayoutUndelivered as exc:  # the refusal not recorded (no master): checked again later
            log.warning("layout refusal not recorded yet, checking the file again in %.0f s: %s", self._retry, exc)
            self._again()

    def _again(self) -> None:
        delay, self._retry = self._retry, min(30.0, self._retry * 2)
        self._check_in(delay)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: LayoutWatcher):
        self._w = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._w._touched(event)

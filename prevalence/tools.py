"""Offline tools on a data directory: verify, dump, repair, and the state as of an index.

All of them read without modifying, except ``repair``, which copies the journal aside
before it cuts anything.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

from . import _platform
from .entry import EntryKind
from .errors import CodecError, JournalCorruptError, PrevalenceError, SnapshotError
from .journal import Journal, scan_directory
from .segment import SEGMENT_HEADER, parse_segment_name, segment_header
from .snapshots import SnapshotStore, check_file
from .state import describe_command

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def journal_dir(path: str) -> str:
    """Accept either a data directory (holding ``journal/``) or the journal directory."""
    sub = os.path.join(path, "journal")
    if os.path.isdir(sub):
        return sub
    if os.path.isdir(path):
        return path
    raise PrevalenceError(f"{path} is not a directory")


def data_dir(path: str) -> str:
    path = os.path.abspath(path)
    return os.path.dirname(path) if os.path.basename(path) == "journal" else path


def require_data(path: str) -> str:
    """The journal directory of ``path``, if it holds a journal segment or a snapshots
    directory: a tool pointed at another program's directory refuses it, writes nothing."""
    jdir = journal_dir(path)
    has_segments = any(parse_segment_name(n) is not None for n in os.listdir(jdir))
    if not has_segments and not os.path.isdir(os.path.join(data_dir(path), "snapshots")):
        raise PrevalenceError(f"no journal in {path}")
    return jdir


@dataclass
class VerifyReport:
    journal: str
    segments: list[dict] = field(default_factory=list)
    first_index: int = 0
    last_index: int = 0
    torn: list[str] = field(default_factory=list)
    error: str | None = None
    snapshots: list[dict] = field(default_factory=list)
    gap: str | None = None  # entries before the journal's start that no usable snapshot holds

    @property
    def ok(self) -> bool:
        return self.error is None and self.gap is None and all(s["ok"] for s in self.snapshots)


def verify(path: str) -> VerifyReport:
    jdir = require_data(path)
    report = VerifyReport(jdir)
    try:
        for seg_path, res in scan_directory(jdir):
            report.segments.append(
                {"file": seg_path, "first": res.first_index, "last": res.last_index, "bytes": res.file_bytes}
            )
            if res.torn:
                report.torn.append(f"{seg_path} at byte offset {res.valid_bytes}: {res.torn} (cut off at the next open)")
    except JournalCorruptError as exc:
        report.error = str(exc)
    with_entries = [s for s in report.segments if s["last"] >= s["first"]]
    if with_entries:
        report.first_index, report.last_index = with_entries[0]["first"], with_entries[-1]["last"]
    store = SnapshotStore(os.path.join(data_dir(path), "snapshots"), read_only=True)
    for index in store.indexes():
        try:
            meta = check_file(store.path_of(index))  # in chunks: a snapshot may be bigger than memory
            if meta.index != index:
                raise SnapshotError(f"{meta.path}: named for index {index} but holds index {meta.index}")
            report.snapshots.append({"index": index, "file": meta.path, "ok": True, "serializer": meta.serializer})
        except FileNotFoundError:
            continue  # pruned by a running engine since the listing: a newer one replaced it
        except OSError as exc:
            report.snapshots.append({"index": index, "file": store.path_of(index), "ok": False,
                                     "error": f"{store.path_of(index)}: cannot read: {exc}"})
        except SnapshotError as exc:
            report.snapshots.append({"index": index, "file": store.path_of(index), "ok": False, "error": str(exc)})
    # recovery starts from the newest usable snapshot: it must reach the journal's first entry
    usable = max((s["index"] for s in report.snapshots if s["ok"]), default=0)
    if with_entries and report.first_index > usable + 1:
        report.gap = (f"entries {usable + 1}..{report.first_index - 1} are in no snapshot and no longer in the "
                      f"journal, which starts at index {report.first_index}: the state cannot be rebuilt")
    return report


def iso(timestamp_us: int) -> str:
    return (_EPOCH + timedelta(microseconds=timestamp_us)).isoformat()


def dump(path: str, start: int | None = None, stop: int | None = None,
         note: Callable[[str], None] | None = None) -> Iterator[dict]:
    """Entries as plain dicts (index, term, time, type, version, fields); no app code needed.

    A range that cannot hold an entry is an error, not an empty dump: it is a typo. A
    range that begins before the first entry kept is told to ``note``: compacted away."""
    for name, value in (("--from", start), ("--to", stop)):
        if value is not None and value < 1:
            raise PrevalenceError(f"{name} {value}: an index is at least 1")
    if start is not None and stop is not None and start > stop:
        raise PrevalenceError(f"--from {start} is after --to {stop}")
    with Journal(require_data(path), read_only=True) as j:
        if start is not None and start > j.last_index:
            raise PrevalenceError(f"--from {start} is beyond the end of the journal ({j.last_index})")
        if stop is not None and stop < j.first_index:
            raise PrevalenceError(f"--to {stop} is before the journal's first entry ({j.first_index}): "
                                  "the entries before it are only in a snapshot now")
        lo = j.first_index if start is None else max(start, j.first_index)
        if start is not None and start < j.first_index and note is not None:
            note(f"the journal starts at index {j.first_index}: the entries before it are only in a snapshot now")
        hi = j.last_index if stop is None else min(stop, j.last_index)
        for e in j.iter_entries(lo, hi + 1):
            row: dict[str, Any] = {"index": e.index, "term": e.term}
            if e.kind == EntryKind.COMMAND:
                try:
                    d = describe_command(e.data)
                    row.update(time=iso(d["timestamp_us"]), type=d["type"], version=d["version"], fields=d["fields"])
                except CodecError as exc:
                    row.update(time=None, type="<undecodable>", version=None, fields={"error": str(exc)})
            else:
                kind = EntryKind(e.kind).name.lower() if e.kind in EntryKind._value2member_map_ else str(e.kind)
                row.update(time=None, type=f"<{kind}>", version=None, fields={"bytes": len(e.data)})
            yield row


@dataclass
class RepairResult:
    damaged: str | None  # the error that was repaired, None when the journal was sound
    backup: str | None = None
    kept_last_index: int = 0
    removed_files: list[str] = field(default_factory=list)
    cut: str | None = None


#: files only a cluster node's data directory holds (replication.journal_storage's
#: HARD_STATE_FILE and IDENTITY_FILE; named here, the engine does not import replication)
_NODE_FILES = ("raft-state", "identity.toml")


def repair(path: str) -> RepairResult:
    """Cut the journal at its first damage, after copying it to ``journal.backup-<time>``;
    damage before a segment that the newest usable snapshot reaches removes the segments
    before that one instead, so the entries after the damage are kept.

    A torn tail too is cut only after the copy, and said: repair never changes a byte
    it has not copied aside, and never touches a file that is not a segment."""
    jdir = require_data(path)
    for marker in _NODE_FILES:
        if os.path.exists(os.path.join(data_dir(path), marker)):
            raise PrevalenceError(
                f"{data_dir(path)} holds a cluster node's data ({marker}): its entries may be votes and commits the "
                "cluster counted on, so it is rebuilt, never repaired (docs/operations.md, 'Rebuilding a node')")
    lock = _platform.DirectoryLock(data_dir(path))
    lock.acquire()
    try:
        kept, torn = 0, None
        try:
            for seg_path, res in scan_directory(jdir):
                kept = res.last_index if res.offsets else kept
                if res.torn is not None:
                    torn = (seg_path, res)
        except JournalCorruptError as exc:
            damage = exc
        else:
            if torn is None:
                with Journal(jdir) as j:
                    return RepairResult(damaged=None, kept_last_index=j.last_index)
            seg_path, res = torn
            result = RepairResult(damaged=f"{seg_path} at byte offset {res.valid_bytes}: torn tail: {res.torn}",
                                  backup=_backup_copy(jdir), kept_last_index=kept)
            with Journal(jdir) as j:  # opening cuts a torn tail off, as a node's start does
                result.kept_last_index = j.last_index
            if os.path.exists(seg_path):
                result.cut = f"{seg_path} at byte offset {res.valid_bytes}"
            else:
                result.removed_files.append(seg_path)
            return result
        result = RepairResult(damaged=str(damage), backup=_backup_copy(jdir), kept_last_index=kept)
        covered = _newest_usable_snapshot(path)
        while damage is not None:
            if not _drop_covered_prefix(jdir, damage, covered, result):
                _cut_at(jdir, damage, result)
            _platform.fsync_dir(jdir)
            damage = None
            try:
                for _ in scan_directory(jdir):
                    pass
            except JournalCorruptError as exc:  # more damage after the prefix a snapshot covered
                damage = exc
        with Journal(jdir) as j:
            result.kept_last_index = j.last_index
        return result
    finally:
        lock.release()


def _newest_usable_snapshot(path: str) -> int:
    """The index of the newest snapshot whose checksum holds (0: none)."""
    store = SnapshotStore(os.path.join(data_dir(path), "snapshots"), read_only=True)
    for index in store.indexes():
        try:
            if check_file(store.path_of(index)).index == index:
                return index
        except (OSError, SnapshotError):
            continue
    return 0


def _drop_covered_prefix(jdir: str, damage: JournalCorruptError, covered: int, result: RepairResult) -> bool:
    """Damage before a segment that the snapshot at ``covered`` reaches: remove the
    segments before that one (the snapshot holds their entries) instead of the entries
    after the damage, which recovery replays on top of the snapshot."""
    names = sorted(n for n in os.listdir(jdir) if parse_segment_name(n) is not None)
    bad = os.path.basename(damage.path)
    if bad not in names:
        return False
    start = names.index(bad) + 1
    if damage.offset < SEGMENT_HEADER.size and _header_is_intact(damage.path, bad):
        start -= 1  # the segment is sound; one before it is missing
    if start == 0 or start >= len(names) or covered < parse_segment_name(names[start]) - 1:
        return False
    for name in names[:start]:
        os.remove(os.path.join(jdir, name))
        result.removed_files.append(os.path.join(jdir, name))
    return True


def _header_is_intact(path: str, name: str) -> bool:
    with open(path, "rb") as f:
        return f.read(SEGMENT_HEADER.size) == segment_header(parse_segment_name(name))


def _cut_at(jdir: str, damage: JournalCorruptError, result: RepairResult) -> None:
    """Keep what precedes the damage: cut its segment there, remove every later one."""
    names = sorted(n for n in os.listdir(jdir) if parse_segment_name(n) is not None)
    bad = os.path.basename(damage.path)
    for name in names:
        full = os.path.join(jdir, name)
        if name < bad:
            continue
        if name == bad and damage.offset >= SEGMENT_HEADER.size:
            with open(full, "r+b") as f:
                f.truncate(damage.offset)
                f.flush()
                os.fsync(f.fileno())
            result.cut = f"{full} at byte offset {damage.offset}"
        else:
            os.remove(full)
            result.removed_files.append(full)


def _backup_copy(jdir: str) -> str:
    """Copy the journal to a new ``journal.backup-<time>[-n]`` (two repairs in one second
    keep two copies)."""
    base = f"{jdir}.backup-{time.strftime('%Y%m%d-%H%M%S')}"
    backup, n = base, 1
    while os.path.exists(backup):
        n += 1
        backup = f"{base}-{n}"
    shutil.copytree(jdir, backup)
    return backup


def describe(obj: Any, depth: int = 0, seen: set[int] | None = None) -> Any:
    """A plain-data picture of an object graph for printing (cycles and depth bounded)."""
    seen = set() if seen is None else seen
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, bytes):
        return obj.hex()
    if isinstance(obj, datetime):
        return obj.isoformat()
    if id(obj) in seen or depth > 12:
        return f"<{type(obj).__name__} ...>"
    seen = seen | {id(obj)}
    if isinstance(obj, dict):
        return {str(k): describe(v, depth + 1, seen) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [describe(v, depth + 1, seen) for v in items]
    attrs = getattr(obj, "__dict__", None)
    if attrs is None and hasattr(obj, "__slots__"):
        attrs = {s: getattr(obj, s) for s in obj.__slots__ if hasattr(obj, s)}
    if attrs is not None:
        return {"__type__": type(obj).__qualname__, **{k: describe(v, depth + 1, seen) for k, v in attrs.items()}}
    return repr(obj)

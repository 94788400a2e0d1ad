"""Rebuilding the state at start-up: the newest usable snapshot plus the journal after it."""
from __future__ import annotations

import logging
from typing import Any, Callable

from .codec import CODEC, Codec
from .errors import CodecError, PrevalenceError, SnapshotError, UnpicklableSnapshot, UnreadableEntry
from .journal import Journal
from .snapshots import SnapshotStore
from .state import StateMachine

log = logging.getLogger("prevalence.recovery")


def recover(
    journal: Journal,
    snapshots: SnapshotStore,
    root_factory: Callable[[], Any],
    *,
    upto: int | None = None,
    codec: Codec = CODEC,
    check: bool = False,
    stop_unreadable: bool = False,
) -> tuple[StateMachine, list[str]]:
    """The state as of ``upto`` (default: the end of the journal), and warnings on the way.

    A damaged snapshot is skipped for an older one plus more journal. When no snapshot and
    no journal prefix can rebuild the state, the error says which files were tried.
    ``check``: run each transaction's ``check`` before it (a replicated log, where
    entries are checked when applied rather than before they are journaled).
    ``stop_unreadable``: an entry this program cannot decode (a newer release wrote it)
    ends the replay before it, recorded as ``sm.unreadable``, instead of raising: a
    replicated node keeps its place in the cluster and applies on once upgraded. So
    does a snapshot it cannot unpickle when nothing older rebuilds the state: the
    state is then a new root at index 0, stuck before that snapshot.
    """
    warnings: list[str] = []
    first, last = journal.first_index, journal.last_index
    target = last if upto is None else upto
    damaged: list[str] = []
    unpicklable: UnreadableEntry | None = None  # the newest snapshot this program cannot unpickle
    sm: StateMachine | None = None
    for index in snapshots.indexes():
        if index > target and upto is not None:
            continue  # a point-in-time view before this snapshot
        try:
            meta, root = snapshots.load(index)
        except SnapshotError as exc:
            if isinstance(exc, UnpicklableSnapshot) and unpicklable is None:
                unpicklable = UnreadableEntry(index, str(exc), snapshot=True)
            msg = f"skipping damaged snapshot: {exc}"
            log.warning("%s", msg)
            warnings.append(msg)
            damaged.append(str(exc))
            continue
        if index < first - 1:
            if stop_unreadable and unpicklable is not None:
                break
            raise SnapshotError(
                f"the newest usable snapshot ({meta.path}, index {index}) is older than the journal, "
                f"which starts at index {first}: entries {index + 1}..{first - 1} are gone"
                + (f"; damaged newer snapshots: {'; '.join(damaged)}" if damaged else "")
            )
        sm = StateMachine.from_snapshot(meta, root)
        break
    if sm is None and first > 1 and stop_unreadable and unpicklable is not None:
        sm = StateMachine(root_factory(), 0, 0)  # nothing this program reads holds the state
        sm.unreadable = unpicklable
        return sm, warnings
    if sm is None:
        if first > 1:
            what = "the state" if upto is None else f"the state as of index {upto}"
            why = f" (damaged: {'; '.join(damaged)})" if damaged else " (no snapshot at or before it)"
            raise SnapshotError(
                f"cannot rebuild {what}: the journal starts at index {first} and no usable snapshot covers "
                f"entries 1..{first - 1}{why}"
            )
        sm = StateMachine(root_factory(), 0, 0)
    if upto is not None and upto > last and upto > sm.applied_index:
        raise PrevalenceError(f"index {upto} is beyond the end of the journal ({last})")
    start = sm.applied_index + 1
    if start <= target and start < first:  # a journal read would begin at ``first``, skipping the rest
        raise SnapshotError(f"the state at index {sm.applied_index} needs entries {start}..{first - 1}, "
                            f"which the journal (starting at index {first}) no longer holds")
    if start <= target:
        lock = sm.lock
        lock.acquire_write()
        try:
            apply = sm.apply_entry
            for entry in journal.iter_entries(start, target + 1):
                try:
                    _result, exc = apply(entry, codec, check=check)
                except UnreadableEntry as err:
                    if stop_unreadable:
                        sm.unreadable = err
                        break
                    raise CodecError(f"cannot replay journal entry {entry.index}: {err.reason}") from None
                except CodecError as err:
                    raise CodecError(f"cannot replay journal entry {entry.index}: {err}") from None
                if exc is not None:
                    log.debug("replayed entry %d raised %r, as it did when first executed", entry.index, exc)
        finally:
            lock.release_write()
    return sm, warnings

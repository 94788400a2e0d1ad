"""The single-process engine: journal first, then apply; snapshots; recovery on open."""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Any, Callable

from . import _platform, segment
from .codec import CODEC
from .entry import EntryKind
from .errors import ClosedError, CodecError, DiskFull, EngineHaltedError, PrevalenceError
from .journal import DEFAULT_SEGMENT_BYTES, Journal
from .recovery import recover
from .snapshots import SnapshotMeta, SnapshotStore
from .state import encode_command
from .text import os_error_text
from .transaction import Transaction

log = logging.getLogger("prevalence.engine")

_COMMAND = int(EntryKind.COMMAND)
_COMMAND_OVERHEAD = 9  # what encode_command adds to the plain form: the timestamp


def _wall_clock_us() -> int:
    return time.time_ns() // 1000


class Engine:
    """A root object made durable by a journal of transactions. Thread-safe.

    Transactions run one at a time under a write lock: ``check``, append to the journal
    buffer, ``execute``. The wait for the disk happens after the lock is released, so
    concurrent writers share one fsync. A query never returns a state that is not yet
    acknowledged: if it saw an entry still on its way to disk, it waits for that entry.
    """

    def __init__(
        self,
        path: str,
        root_factory: Callable[[], Any],
        *,
        fsync: str = "always",
        snapshot_every: int | None = None,
        snapshot_bytes: int | None = None,
        keep_snapshots: int = 2,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        batch_interval: float = 0.005,
        read_only: bool = False,
        at_index: int | None = None,
        clock: Callable[[], int] | None = None,
    ):
        if at_index is not None and not read_only:
            raise PrevalenceError("a point-in-time view (at_index) must be opened with read_only=True")
        self.path = os.path.abspath(path)
        self.read_only = read_only
        self._clock = clock or _wall_clock_us
        self._snapshot_every = snapshot_every
        self._snapshot_bytes = snapshot_bytes
        self._closed = False
        self._dirlock: _platform.DirectoryLock | None = None
        self._journal: Journal | None = None
        if not read_only:
            try:
                os.makedirs(self.path, exist_ok=True)
                self._dirlock = _platform.DirectoryLock(self.path)
                self._dirlock.acquire()
            except OSError as exc:
                self._dirlock = None
                raise PrevalenceError(f"cannot open {self.path}: {os_error_text(exc)}") from exc
        elif not os.path.isdir(self.path):
            raise PrevalenceError(f"{self.path} does not exist")
        try:
            self._journal = Journal(
                os.path.join(self.path, "journal"),
                fsync=fsync,
                segment_bytes=segment_bytes,
                batch_interval=batch_interval,
                read_only=read_only,
            )
            self._snapshots = SnapshotStore(os.path.join(self.path, "snapshots"), keep=keep_snapshots, read_only=read_only)
            self._sm, rec_warnings = recover(self._journal, self._snapshots, root_factory, upto=at_index)
            self.warnings = self._journal.warnings + rec_warnings
            if not read_only and self._sm.applied_index > self._journal.last_index:
                # A snapshot newer than the journal's end (the journal was lost or reset):
                # the snapshot is the state; the journal resumes after it.
                msg = f"journal ends at {self._journal.last_index}, before the snapshot at {self._sm.applied_index}; resuming after the snapshot"
                log.warning("%s", msg)
                self.warnings.append(msg)
                self._journal.reset(self._sm.applied_index + 1)
        except OSError as exc:
            self._release()
            raise PrevalenceError(f"cannot open {self.path}: {os_error_text(exc)}") from exc
        except BaseException:
            self._release()
            raise
        self._queue: deque[_Request] = deque()
        self._queue_lock = threading.Lock()
        self._snapshot_lock = threading.Lock()
        self._snapshot_thread: threading.Thread | None = None
        self._since_entries = 0
        self._since_bytes = 0
        self.snapshot_error: BaseException | None = None  # the last automatic snapshot's failure
        self._inside = threading.local()  # .what: this thread runs a transaction or a query
        self._halted: str | None = None  # why the state in memory can no longer be trusted

    # -- the API --------------------------------------------------------------------
    def execute(self, tx: Any) -> Any:
        """Journal ``tx``, apply it, and return its result once the entry is durable.

        Concurrent callers are combined: they queue, and the thread at the head of the
        queue applies the whole queue in order under one lock hold, waits for one
        write and fsync for all of it, then wakes each caller with its own outcome and
        hands the head to the next waiting caller. Each caller is woken once, and a lone
        caller is never woken at all.
        """
        self._refuse_reentry("execute")
        self._check_halted()
        # what applies is the copy a replay decodes, so the first run is the replay; a
        # class that is not journalable, or a value that cannot come back, fails here
        plain, copy, size = CODEC.journal_copy(tx)
        if size + _COMMAND_OVERHEAD > segment.MAX_RECORD:  # the journal's scan would call it damage
            raise CodecError(f"{plain[0]}: {size} bytes encoded, more than a journal record holds "
                             f"({segment.MAX_RECORD - _COMMAND_OVERHEAD} bytes)")
        if not isinstance(copy, Transaction):
            raise CodecError(f"{plain[0]} is a Query, not a Transaction: run it with query()")
        if self.read_only:
            raise PrevalenceError(f"{self.path} is open read-only: execute is not allowed")
        req = _Request(copy, plain)
        with self._queue_lock:
            self._queue.append(req)
            lead = len(self._queue) == 1
        if not lead:
            try:
                req.wake.acquire()  # released when served, or when made the head
            except BaseException:  # KeyboardInterrupt while waiting
                self._abandon(req)
                raise
            if req.done:
                if req.unsynced:  # applied whole; its leader was interrupted before the fsync
                    try:
                        self._wait_durable(req.index)
                    except BaseException as exc:  # noqa: BLE001 - this caller's outcome now
                        req.exc = exc
                return req.outcome()
        with self._queue_lock:
            batch = list(self._queue)
            for r in batch:
                r.taken = True
        try:
            self._apply_batch(batch)
        except BaseException as exc:
            alone = isinstance(exc, KeyboardInterrupt) and self._halted is None  # in the wait, not the apply
            for r in batch:  # not durable, or not applied: the batch's error is the outcome
                if r.rejected:
                    continue
                if alone and r is not req and r.index:
                    r.unsynced = True  # the interrupt is the leader's: each waits for itself
                else:
                    r.exc = exc
        finally:
            with self._queue_lock:
                for _ in batch:
                    self._queue.popleft()
                head = self._queue[0] if self._queue else None
            for r in batch:
                r.done = True
                if r is not req:
                    r.wake.release()
            if head is not None:
                head.wake.release()  # not done: it leads the next batch
        if self._snapshot_due():
            self._start_auto_snapshot()
        return req.outcome()

    def _abandon(self, req: "_Request") -> None:
        """A caller left while it waited in the queue: a batch that took its request
        applies it anyway; otherwise it leaves the queue, and if it had been made the
        head, the next caller is."""
        with self._queue_lock:
            if req.taken:
                return
            was_head = self._queue[0] is req
            self._queue.remove(req)
            head = self._queue[0] if was_head and self._queue else None
        if head is not None:
            head.wake.release()

    def _apply_batch(self, batch: list["_Request"]) -> None:
        sm = self._sm
        journal = self._journal
        last = 0
        sm.lock.acquire_write()
        self._inside.what = "a transaction's check or execute"
        try:
            if self._closed:
                raise ClosedError(f"engine {self.path} is closed")
            root = sm.root
            for r in batch:
                try:
                    r.tx.check(root)  # rejecting here journals nothing
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # noqa: BLE001 - a refusal, whatever its type
                    r.exc, r.rejected = exc, True
                    continue
                index = journal.last_index + 1
                ts = self._clock()
                if ts < sm.timestamp_us:
                    ts = sm.timestamp_us  # the wall clock stepped back; ``now`` does not
                data = encode_command(ts, r.plain)
                journal.append(index, 0, _COMMAND, data)
                r.index = index
                r.result, r.exc = sm.apply_command(index, ts, r.tx)
                self._since_entries += 1
                self._since_bytes += len(data)
                last = index
        except KeyboardInterrupt:
            # from outside the transaction, maybe halfway through it: replay runs it whole,
            # so the root in memory may be a state no replay gives; nothing may read or
            # snapshot it
            self._halted = (f"a transaction was interrupted (KeyboardInterrupt) at index {journal.last_index}: "
                            "the state in memory may differ from what the journal rebuilds")
            raise
        finally:
            self._inside.what = None
            sm.lock.release_write()
        if last:
            self._wait_durable(last)

    def _wait_durable(self, last: int) -> None:
        try:
            self._journal.wait(last)
        except DiskFull as exc:
            # not the journal's "retry": these transactions are applied and still
            # buffered, so running one again would apply (and journal) it twice
            raise DiskFull(f"{self.path}: disk full: the transaction is applied (up to index {last}) but not yet "
                           "durable; do not execute it again: it is written at the next successful flush (a "
                           f"query or snapshot) once space returns ({exc})") from exc

    def query(self, query: Any) -> Any:
        """Run ``query.run(root)`` alongside other queries, never during a transaction."""
        if self._closed:
            raise ClosedError(f"engine {self.path} is closed")
        self._refuse_reentry("query")
        self._check_halted()
        if not callable(getattr(query, "run", None)):
            kind = "is a Transaction, not a Query: apply it with execute()" if isinstance(query, Transaction) else \
                "has no run(root)"
            raise PrevalenceError(f"{_name(query)} {kind}")
        sm = self._sm
        sm.lock.acquire_read()
        self._inside.what = "a query's run"
        try:
            result = query.run(sm.root)
            seen = sm.applied_index
        finally:
            self._inside.what = None
            sm.lock.release_read()
        if not self.read_only:
            self._journal.wait(seen)
        return result

    def snapshot(self) -> SnapshotMeta:
        """Write a snapshot of the current state and drop journal segments it makes redundant."""
        if self.read_only:
            raise PrevalenceError(f"{self.path} is open read-only: snapshot is not allowed")
        if self._closed:
            raise ClosedError(f"engine {self.path} is closed")
        self._refuse_reentry("snapshot")
        self._check_halted()
        with self._snapshot_lock:
            # counted from this attempt, failed or not: a root that cannot be serialized
            # is tried again at the next threshold, not at every transaction
            self._since_entries = self._since_bytes = 0
            meta, body = self._sm.capture(term=self._term_at(self._sm.applied_index))
            self._journal.sync()  # a snapshot never runs ahead of the journal on disk
            meta = self._snapshots.write(meta, body)
            kept = self._snapshots.indexes()
            if kept:
                removed = self._journal.compact(min(kept))
                if removed:
                    log.info("removed %d journal segment(s) covered by snapshot %d", removed, min(kept))
            return meta

    @property
    def last_index(self) -> int:
        """Index of the last transaction applied (0 before the first)."""
        return self._sm.applied_index

    @property
    def journal(self) -> Journal:
        return self._journal

    def close(self) -> None:
        if self._closed:
            return
        self._refuse_reentry("close")
        t = self._snapshot_thread
        if t is not None:
            t.join()
        self._sm.lock.acquire_write()
        try:
            self._closed = True
        finally:
            self._sm.lock.release_write()
        self._release()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------
    def _check_halted(self) -> None:
        if self._halted is not None:
            raise EngineHaltedError(f"engine {self.path}: {self._halted}; reopen it to rebuild the state")

    def _refuse_reentry(self, call: str) -> None:
        """A call from inside a transaction or a query would wait for the lock its own
        thread holds (a query's too, once a transaction queues behind it): refused."""
        what = getattr(self._inside, "what", None)
        if what:
            raise PrevalenceError(f"engine {self.path}: {call} called from inside {what}: it would wait for the "
                                  "lock this thread holds; return what is needed and call the engine afterwards")

    def _release(self) -> None:
        try:
            if self._journal is not None:
                self._journal.close()
        finally:
            if self._dirlock is not None:
                self._dirlock.release()
                self._dirlock = None

    def _term_at(self, index: int) -> int:
        j = self._journal
        return j.term(index) if j.first_index <= index <= j.last_index else 0

    def _snapshot_due(self) -> bool:
        if self._snapshot_thread is not None:
            return False
        return bool(
            (self._snapshot_every and self._since_entries >= self._snapshot_every)
            or (self._snapshot_bytes and self._since_bytes >= self._snapshot_bytes)
        )

    def _start_auto_snapshot(self) -> None:
        if not self._snapshot_lock.acquire(blocking=False):
            return  # a snapshot is under way: the caller does not wait for it
        try:
            if self._snapshot_thread is not None or self._closed:
                return
            self._snapshot_thread = threading.Thread(target=self._auto_snapshot, name="snapshot", daemon=True)
            self._snapshot_thread.start()
        finally:
            self._snapshot_lock.release()

    def _auto_snapshot(self) -> None:
        try:
            meta = self.snapshot()
            log.info("automatic snapshot at index %d (%d bytes)", meta.index, meta.size)
            self.snapshot_error = None
        except BaseException as exc:  # noqa: BLE001 - reported, and retried at the next threshold
            self.snapshot_error = exc
            log.error("automatic snapshot failed: %r", exc)
        finally:
            self._snapshot_thread = None


def _name(obj: Any) -> str:
    cls = type(obj)
    return getattr(cls, "__prevalence_name__", None) or f"{cls.__module__}.{cls.__qualname__}"


class _Request:
    """One caller's transaction on its way through a combined batch."""

    __slots__ = ("tx", "plain", "result", "exc", "rejected", "done", "taken", "index", "unsynced", "wake")

    def __init__(self, tx: Any, plain: list):
        self.tx = tx
        self.plain = plain
        self.result: Any = None
        self.exc: BaseException | None = None
        self.rejected = False  # by check(): nothing journaled
        self.done = False
        self.taken = False  # in a batch that a leader applies
        self.index = 0  # its journal entry, once appended
        self.unsynced = False  # applied, but its leader did not wait for the disk
        self.wake = threading.Lock()
        self.wake.acquire()

    def outcome(self) -> Any:
        if self.exc is not None:
            raise self.exc
        return self.result

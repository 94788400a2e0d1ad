"""The node's disk lane: Readies' writes in Ready order, and one report path back.

Why a lane of its own (etcd's "async storage writes"): while a write and its fsync are
under way, the core keeps stepping acknowledgements, collecting proposals into the next
batch and sending the next appends. A leader's own entries therefore go to disk in
parallel with their replication, and the leader counts itself toward a commit only when
the lane reports them durable (``RaftNode.persisted``).

Each item (:class:`DiskWork`) is one Ready's writes plus the messages that promise them
(acks, votes), numbered 1, 2, 3... by the node. The lane is one FIFO: items queued while
a write is under way are written together, with one fsync, in order (snapshot, truncate,
append, hard state for each), except that the journal is synced before a term/vote
change is stored, so the hard state never names a commit that the journal does not
hold. After the fsync the lane sends each item's messages (they promise what is now on
disk; sending them here saves a hand-off) and reports the sequence numbers through
``report``, the node's inbox, before it may take the next item or be found idle. That
ordering is what keeps reports in Ready order, whichever thread ran an item.

Which thread runs an item is a strategy, not a path: ``submit(work, inline=True)`` on
an idle lane runs the item on the caller's thread (a follower, whose ack must wait for
the fsync anyway, saves a thread wake-up on the leader's commit path). Its report goes
through ``report`` like any other, after any report the lane thread made before.

A snapshot of the node's own state is published and the journal compacted by an item of
the same lane, in order with the writes: nothing has to wait for the lane to drain. A
full disk is not a failure: :class:`DiskWorker` leaves the batch unwritten, and the lane
tries it again every DISK_FULL_RETRY seconds.

The lane thread blocks on its queue when there is nothing to write: no idle CPU.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable

from prevalence.errors import DiskFull
from replication.journal_storage import JournalStorage
from replication.messages import encode
from replication.runtime.events import DiskWork

__all__ = ["DiskLane", "DiskWork", "DiskWorker", "run_disk_batch", "write_batch"]

log = logging.getLogger("replication.persist")

DISK_FULL_RETRY = 1.0  # seconds between tries of a write the disk had no space for
DISK_STALL = 1.0  # seconds: a write under way this long is reported in the node's status


class DiskLane:
    """Runs :class:`DiskWork` in submission order, on its thread or inline when idle.

    ``report(seqs)`` gets each batch's sequence numbers once written and its messages
    sent; ``on_error(exc)`` once a write failed (the lane then refuses further work,
    so nothing can be acknowledged after a lost write). ``after_batch()`` runs on the
    lane thread once a batch no longer counts as pending (the node steps its core
    there: a combining lock).
    """

    def __init__(
        self,
        storage: JournalStorage,
        send: Callable[[str, bytes], None],
        report: Callable[[list[int]], None],
        on_error: Callable[[BaseException], None],
        name: str,
        after_batch: Callable[[], None] | None = None,
        on_full: Callable[[bool], None] | None = None,
    ) -> None:
        self.storage = storage
        self._send = send
        self._report = report
        self._on_error = on_error
        self._after_batch = after_batch
        self._work = threading.Condition(threading.Lock())  # the lane thread waits here for work
        self._queue: deque[DiskWork] = deque()
        self._busy = False  # a batch is being run (by the lane thread or inline)
        self._stopping = False
        self._failed: BaseException | None = None
        self._worker = DiskWorker(storage, send, report, on_full)
        self._retry_at = 0.0  # monotonic time of the next try while full
        self.batch_started: float | None = None  # monotonic start of the batch under way (None: idle)
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, work: DiskWork, inline: bool = False) -> bool:
        """Queue ``work``; returns whether it already ran here (``inline``, lane idle).

        Raises the lane's failure if a write failed before.
        """
        with self._work:
            if self._failed is not None:
                raise self._failed
            if not inline or self._busy or self._queue or self._worker.full:
                self._queue.append(work)
                self._work.notify()
                return False
            self._busy = True  # every earlier report is in ``report``'s queue already
        try:
            written = self._run([work])
        finally:
            self._done()
        return written

    def stalled_for(self, now: float) -> float:
        """How long the write under way has taken, once that is DISK_STALL or more (else
        0): a node whose disk stalls (an SD card's garbage collection, an antivirus, a
        frozen file system) still answers and looks like a healthy follower, while it can
        acknowledge nothing and its vote waits for the disk."""
        started = self.batch_started
        return 0.0 if started is None or now - started < DISK_STALL else round(now - started, 1)

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, then end the thread."""
        with self._work:
            self._stopping = True
            self._work.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the lane thread ----------------------------------------------------------------
    def _main(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - the lane thread must not die unnoticed
            self._on_error(exc)

    def _loop(self) -> None:
        while True:
            with self._work:
                while not self._stopping:
                    if self._busy or not self._queue:
                        self._work.wait()
                    elif self._worker.full and time.monotonic() < self._retry_at:
                        self._work.wait(self._retry_at - time.monotonic())
                    else:
                        break
                if self._failed is not None or (self._stopping and (not self._queue or self._worker.full)):
                    return
                batch = list(self._queue)
                self._queue.clear()
                self._busy = True
            try:
                self._run(batch)
            except BaseException as exc:  # noqa: BLE001 - reported; the lane is dead now
                self._on_error(exc)
                return
            finally:
                self._done()
            if self._after_batch is not None:
                self._after_batch()

    def _done(self) -> None:
        """A batch ended (its report is out): the lane may be idle now."""
        with self._work:
            self._busy = False
            self.batch_started = None
            if self._queue:  # queued during an inline run; no wake-up otherwise
                self._work.notify()

    def _run(self, batch: list[DiskWork]) -> bool:
        """Write, send what the writes promise, report: in that order, or fail for good.
        False: the disk is full; the batch is back at the head of the queue and the lane
        thread tries it again every DISK_FULL_RETRY seconds."""
        self.batch_started = time.monotonic()  # read by ``report`` (how long it took) and status
        try:
            if self._worker.run(batch):
                return True
        except BaseException as exc:
            log.exception("disk lane failed")
            with self._work:
                self._failed = exc
                self._queue.clear()
            raise
        with self._work:
            self._queue.extendleft(reversed(batch))
            self._retry_at = time.monotonic() + DISK_FULL_RETRY
        return False


class DiskWorker:
    """The disk lane's work, whoever runs it (a lane thread, a simulator).

    ``run(batch)`` writes the batch, sends the messages its writes promise, reports its
    sequence numbers (:func:`run_disk_batch`) and returns True; or finds the disk full
    and returns False: the journal cut the write back, nothing was lost or promised,
    and the caller retries the same batch later. ``state(full)`` hears when the disk
    fills and when a write succeeds again; any other error is raised (fail-stop)."""

    def __init__(self, storage: JournalStorage, send: Callable[[str, bytes], None],
                 report: Callable[[list[int]], None], state: Callable[[bool], None] | None = None) -> None:
        self.storage, self.send, self.report, self.state = storage, send, report, state
        self.full = False

    def run(self, batch: list[DiskWork]) -> bool:
        try:
            run_disk_batch(self.storage, batch, self.send, self.report)
        except DiskFull as exc:
            if not self.full:
                self.full = True
                log.error("disk full: %s; retrying the write until space is freed", exc)
                if self.state is not None:
                    self.state(True)
            return False
        if self.full:
            self.full = False
            log.warning("disk has space again: writes resumed")
            if self.state is not None:
                self.state(False)
        return True


def run_disk_batch(storage: JournalStorage, batch: list[DiskWork], send: Callable[[str, bytes], None],
                   report: Callable[[list[int]], None]) -> None:
    """The disk lane's work, whoever runs it (a lane thread, a simulator): write the
    batch, then send the messages its writes promise (acks, votes), then report its
    sequence numbers. An exception leaves nothing sent or reported."""
    write_batch(storage, batch)
    for work in batch:
        if work.rd is not None:
            for m in work.rd.persisted_messages:
                send(m.dst, encode(m))
    report([work.seq for work in batch])


def write_batch(st: JournalStorage, batch: list[DiskWork]) -> None:
    """Each item's snapshot, truncation, entries and hard state, in order, with one fsync
    at the end; the journal is synced first whenever a term or vote change is stored,
    so the hard state never names a commit the journal does not hold. Then the commit
    kept in memory, when it is due to be stored (JournalStorage.refresh_commit)."""
    dirty = False
    for work in batch:
        rd = work.rd
        if rd is None:  # a snapshot of ours, its file written: publish it, then compact
            if dirty:
                st.sync()
                dirty = False
            if work.publish[0].index >= st.first_index():  # else a leader's snapshot covers it now
                st.publish_snapshot(*work.publish)
                st.compact()
            continue
        if rd.snapshot is not None:
            st.apply_snapshot(rd.snapshot)
        if rd.truncate_from is not None:
            st.truncate(rd.truncate_from)
        if rd.entries:
            st.append(rd.entries)
            dirty = True
        hs = rd.hard_state
        if hs is not None:
            if dirty and st.hard_state_needs_write(hs):
                st.sync()
                dirty = False
            st.set_hard_state(hs)
    if dirty:
        st.sync()
    st.refresh_commit()  # a leader's commits come without writes of their own

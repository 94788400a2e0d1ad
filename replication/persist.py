"""The node's disk writer: persists Readies in order, off the raft thread.

Why a thread of its own (etcd's "async storage writes"): while a write and its fsync are
under way, the raft thread keeps stepping acknowledgements, collecting proposals into the
next batch and sending the next appends. A leader's own entries therefore go to disk in
parallel with their replication, and the leader counts itself toward a commit only when
the writer reports them durable (``RaftNode.persisted``).

Each job is one Ready's writes. Jobs queued while a write is under way are written
together, with one fsync. The order within the batch is the order of the Readies
(snapshot, truncate, append, hard state for each), except that the journal is synced
before a term/vote change is stored, so the hard state never names a commit that the
journal does not hold. After the fsync the writer itself sends the jobs' persisted
messages (acks, votes): they promise what is now on disk, and sending them here saves a
hand-off back to the raft thread. Then it reports the jobs done, in order.

The thread blocks on its queue when there is nothing to write: no idle CPU.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any, Callable

from replication.journal_storage import JournalStorage
from replication.messages import encode
from replication.ready import Ready

log = logging.getLogger("replication.persist")


class WriteJob:
    """One Ready's writes, plus what must wait for them (an apply item, or nothing)."""

    __slots__ = ("rd", "after")

    def __init__(self, rd: Ready, after: Any = None) -> None:
        self.rd = rd
        self.after = after


class Writer:
    """Writes jobs in order on its own thread; ``on_done(jobs)`` or ``on_error(exc)`` after.

    ``after_batch()`` runs once a batch no longer counts as pending, so it may do work that
    waits in :meth:`drain` (the node runs its Raft work there: a combining lock).
    """

    def __init__(
        self,
        storage: JournalStorage,
        send: Callable[[str, bytes], None],
        on_done: Callable[[list[WriteJob]], None],
        on_error: Callable[[BaseException], None],
        name: str,
        after_batch: Callable[[], None] | None = None,
    ) -> None:
        self.storage = storage
        self._send = send
        self._on_done = on_done
        self._on_error = on_error
        self._after_batch = after_batch
        self._cond = threading.Condition()
        self._queue: deque[WriteJob] = deque()
        self._pending = 0  # submitted, persisted messages not yet sent
        self._stopping = False
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def idle(self) -> bool:
        """Nothing queued or being written: a Ready with nothing to write needs no job."""
        return self._pending == 0

    def submit(self, job: WriteJob) -> None:
        with self._cond:
            if self._failed is not None:
                raise self._failed
            self._queue.append(job)
            self._pending += 1
            self._cond.notify()

    def write_now(self, job: WriteJob) -> None:
        """Write ``job`` on the caller's thread; only while idle (order is kept).

        A follower uses it: its ack must wait for this fsync anyway, and a hand-off to
        the writer thread would only add a thread wake-up to the leader's commit path.
        """
        self._write([job])
        self._send_persisted([job])

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every submitted job is written (e.g. before storage is reorganised)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0 or self._failed is not None, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the writer thread ------------------------------------------------------------
    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._queue and not self._stopping:
                    cond.wait()
                if not self._queue:
                    return
                jobs = list(self._queue)
                self._queue.clear()
            try:
                self._write(jobs)
            except BaseException as exc:  # a storage failure: no ack may go out after it
                log.exception("disk writer failed")
                with cond:
                    self._failed = exc
                    self._queue.clear()
                    cond.notify_all()
                self._on_error(exc)
                return
            self._send_persisted(jobs)
            self._on_done(jobs)  # before going idle: reports stay in order with inline writes
            with cond:
                self._pending -= len(jobs)
                cond.notify_all()
            if self._after_batch is not None:
                self._after_batch()  # may do the node's raft work: only once drain() can return

    def _send_persisted(self, jobs: list[WriteJob]) -> None:
        """What promised the disk (acks, votes) may go now that it is written."""
        send = self._send
        for job in jobs:
            for m in job.rd.persisted_messages:
                send(m.dst, encode(m))

    def _write(self, jobs: list[WriteJob]) -> None:
        st = self.storage
        dirty = False
        for job in jobs:
            rd = job.rd
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

"""The node runtime: drives the pure Raft core with a clock, the journal and a transport.

Threads:
- whoever has input steps the core: a combining lock (``_kick``). A transport thread
  that receives a message, a client thread that proposes or reads, the disk lane reporting
  a write: each queues its input and, if no other thread holds the core, drains the queue
  for everyone and handles the Readies: committed entries (durable here already) to the
  applier, messages out at once (the leader's appends go out while its own copy is
  written), writes to the disk lane. A follower's ack made on the receiving thread goes
  back as the transport's reply to the delivery (``receive_batch``).
- ``raft``: ticks from the monotonic clock (heartbeats, elections), and anything queued
  that nobody stepped. No thread waits for it on the commit path.

Every decision is :class:`replication.runtime.machine.NodeMachine`'s: the threads here
move events into it and carry out its effects (messages, disk items, apply items,
answers to callers), choosing only which thread runs what.
- ``write`` (``replication.persist``): the disk lane. Writes Readies in order, one fsync
  per batch, then sends what needed the disk (acks, votes) and reports the writes' sequence
  numbers through the inbox; a leader counts its own entries toward a commit only then.
  A follower's write may run inline on an idle lane; it reports the same way.
- ``apply``: applies committed entries to the state machine in order and completes the
  waiting proposals and reads. Kept off the raft thread so that a slow transaction or a
  snapshot being serialized never delays heartbeats.
  It also captures a snapshot when the machine queues one, and writes its file.

The transport is anything with ``send(to, payload: bytes)`` that never blocks; the
process entry point (``rpc``) supplies the RPyC one, tests the in-memory
:class:`replication.local_network.LocalNetwork`.
"""
from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Protocol

from prevalence.codec import CODEC
from prevalence.entry import Entry
from prevalence.fs import OS
from replication.callers import Callers
from replication.errors import ConfigChangeRefused, NodeHalted, RaftError
from replication.membership import ConfigChange, Membership
from replication.apply import Applier, ApplierMixin, EntryLost
from replication.local_network import LocalNetwork
from replication.persist import DiskLane
from replication.proposals import Proposals
from replication.ready import Role
from replication.reply_capture import ReplyCapture
from replication.runtime.events import (
    ApplyWork, Call, Complete, DiskState, DiskWork, MembershipChanged, PeerMsg, Persisted, Propose, Read, Send,
    SnapshotWritten,
)
from replication.runtime.assemble import NodeOptions, assemble
from replication.runtime.machine import INBOX_BATCH

log = logging.getLogger("replication.node")

# re-exported: EntryLost (apply), LocalNetwork (local_network), NodeOptions (runtime.assemble)
__all__ = ["EntryLost", "LocalNetwork", "Node", "NodeOptions", "Transport"]

STATUS_TIMEOUT = 1.0  # seconds status() waits for the raft loop to answer
SLOW_WRITE = 0.1  # seconds: an inline follower write this slow...
SLOW_WRITE_BACKOFF = 10.0  # ...sends the next ones to the disk lane thread for this long
SLOW_LANE_WRITE = 0.2  # seconds: a lane write this slow keeps them there SLOW_WRITE_BACKOFF longer


def _run_each(node_id: str, steps: tuple[Callable[[], None], ...]) -> BaseException | None:
    """Run every step; return the first one's error (the cause to report), log the rest."""
    first = None
    for step in steps:
        try:
            step()
        except BaseException as exc:  # noqa: BLE001 - raised by the caller once every step ran
            if first is None:
                first = exc
            else:
                log.error("%s: stopping: %s failed too: %s", node_id, step.__name__, exc, exc_info=exc)
    return first


class Transport(Protocol):
    def send(self, to: str, payload: bytes) -> None: ...


class Node(ApplierMixin):
    """One cluster member: Raft core + journal + state machine + leader hooks."""

    def __init__(
        self,
        node_id: str,
        data_dir: str,
        root_factory: Callable[[], Any],
        transport: Transport,
        *,
        membership: Membership,
        options: NodeOptions | None = None,
        on_leader_start: Callable[[], None] | None = None,
        on_leader_stop: Callable[[], None] | None = None,
        on_membership: Callable[[Membership], None] | None = None,
        wall_clock: Callable[[], int] | None = None,
        on_fatal: Callable[[str], None] | None = None,
    ):
        self.id = node_id
        self._wall = wall_clock or (lambda: time.time_ns() // 1000)  # µs since the epoch; tests skew it
        self.on_fatal = on_fatal  # a node process exits here (fail-stop); in-process nodes just halt
        self.options = opts = options or NodeOptions()
        self.transport = transport
        self.on_leader_start = on_leader_start
        self.on_leader_stop = on_leader_stop
        self.on_membership = on_membership
        parts = assemble(node_id, data_dir, root_factory, membership, opts, fs=OS,
                         rng=random.Random(int.from_bytes(os.urandom(8), "big")), now=time.monotonic())
        self.storage, self.sm, self.core, self.machine = parts.storage, parts.sm, parts.core, parts.machine
        self.membership = self.core.membership
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()  # events for the machine
        self._callers = Callers()
        self._apply_q: queue.SimpleQueue = queue.SimpleQueue()
        self.applier = Applier(node_id, self.sm, self.storage, self._callers.complete)
        self._applied_cond = threading.Condition()
        self._stop = threading.Event()
        self._stopped = False  # stop() has answered its waiters: a later caller is answered at once
        self._failed: BaseException | None = None
        self._raft_thread = threading.Thread(target=self._guarded("raft", self._raft_loop), name=f"raft-{node_id}",
                                             daemon=True)
        self._apply_thread = threading.Thread(target=self._guarded("apply", self._apply_loop),
                                              name=f"apply-{node_id}", daemon=True)
        self._core_lock = threading.Lock()  # whoever holds it steps the machine (see _kick)
        self._wake = threading.Event()  # the raft thread's: a tick may be due sooner
        self._sleep_until = 0.0  # when the raft thread next ticks; core lock
        self._capture: ReplyCapture | None = None  # while stepping a delivery (see _kick)
        self._inline_off_until = 0.0  # a slow disk: follower writes go to the disk lane thread until then
        self._disk = DiskLane(self.storage, self._send_out, self._report_persisted, self._write_failed,
                              f"write-{node_id}", after_batch=self._kick, on_full=self._disk_full)

    @property
    def _role(self) -> Role:
        return self.machine.role

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> "Node":
        self._apply_thread.start()
        self._disk.start()
        self._raft_thread.start()
        return self

    def stop(self, transfer: bool = True, timeout: float = 2.0) -> None:
        """Stop; a leader first hands leadership to the most up-to-date voter."""
        if self._stop.is_set():
            return
        if transfer and self._role == Role.LEADER:
            try:
                self._call(self.machine.transfer_to_best).result(timeout)
                deadline = time.monotonic() + timeout
                while self._role == Role.LEADER and time.monotonic() < deadline:
                    time.sleep(self.options.tick_interval)
            except Exception as exc:  # noqa: BLE001 - best effort on the way out
                log.info("%s: no leadership transfer before stopping: %s", self.id, exc)
        self._stop.set()
        self._wake.set()
        # every step runs even when one before it fails (a failing disk): else a thread is
        # left running, the journal open, callers waiting or a leader's side effects going on
        first = _run_each(self.id, (
            self._raft_thread.join,
            self._core_released,
            self._disk.stop,
            self._end_apply_thread,
            self.storage.close,
            self._answer_waiters_at_stop,
            self._leader_stopped,
        ))
        if first is not None:
            raise first

    def _core_released(self) -> None:
        with self._core_lock:  # no other thread is still stepping the core
            pass

    def _end_apply_thread(self) -> None:
        self._apply_q.put(None)
        self._apply_thread.join()

    def _answer_waiters_at_stop(self) -> None:
        self._callers.closed()
        self._stopped = True  # before answering: a caller that comes later answers itself (_kick)
        self._drop_queued()
        self._callers.fail_all(NodeHalted(f"node {self.id!r} is stopped"))

    def _leader_stopped(self) -> None:
        if self.machine.apply_guard.hooks_on and self.on_leader_stop:  # started, and not stopped yet
            self.on_leader_stop()

    # -- inputs from other threads ----------------------------------------------------
    def receive(self, payload: bytes, sender: str | None = None) -> None:
        """A message from a peer (called by the transport's threads); ``sender`` as in
        :meth:`receive_batch`."""
        self._inbox.put(PeerMsg(sender, payload))
        self._kick()

    def receive_batch(self, payloads: list[bytes], reply_to: str | None = None, *,
                      sender: str | None = None) -> list[bytes]:
        """Messages from a peer; with ``reply_to``, returns the messages for that peer
        that stepping them produced at once on this thread (an ack after an inline
        fsync), for the transport to carry back as its reply instead of a message.

        ``sender`` (default: ``reply_to``) is the peer id the transport authenticated:
        a message that does not come from it, or from a peer that is no member, is
        dropped (see :class:`replication.runtime.admission.Admission`)."""
        sender = reply_to if sender is None else sender
        for payload in payloads:
            self._inbox.put(PeerMsg(sender, payload))
        replies: list[bytes] = []
        self._kick((reply_to, replies) if reply_to is not None else None)
        return replies

    def execute(self, tx: Any, timeout: float = 10.0, *, session: tuple[int, int] | None = None) -> Any:
        """Propose ``tx``; return its result once committed and applied here (leader only).

        With ``session=(id, seq)`` the result is the session :data:`Reply` (applied once,
        replayed to retries) and the transaction's own errors come back inside it.
        """
        return self.submit(tx, session=session).result(timeout)

    def submit(self, tx: Any, *, session: tuple[int, int] | None = None) -> Future:
        """Propose ``tx`` without waiting; the future completes as :meth:`execute` returns.

        Proposals queued while another thread steps the core are taken into one batch
        (one Ready, one fsync, one append per follower).
        """
        # checked to read back as every apply lane reads it (as the engine checks): one that
        # does not would stop every node before it for good. May raise: before queueing
        plain = CODEC.journal_copy(tx)[0]
        token, fut = self._callers.take()
        self._inbox.put(Propose(plain, session, token))
        self._kick()
        return fut

    def propose_many(self, items: list[tuple[Any, tuple[int, int] | None]],
                     decisive: type[BaseException] | tuple[type[BaseException], ...] = ()) -> Proposals:
        """:meth:`submit` for several ``(tx, session)`` at once, waited for together:
        they go into one Ready (one fsync, one append per follower) however the threads
        are scheduled, and their outcomes are settled in one :class:`Proposals`
        (``decisive`` as there)."""
        plain = [(CODEC.journal_copy(tx)[0], session) for tx, session in items]  # as submit's
        batch = Proposals(len(plain), decisive)
        put = self._inbox.put
        for token, (p, session) in zip(self._callers.take_batch(batch), plain):
            put(Propose(p, session, token))
        self._kick()
        return batch

    def query(self, q: Any, timeout: float = 10.0, *, linearizable: bool = True) -> Any:
        """Run ``q``; linearizable (ReadIndex) by default, else on the local state."""
        if linearizable:
            token, fut = self._callers.take()
            self._inbox.put(Read(q, token))
            self._kick()
            return fut.result(timeout)
        if (sm := self.sm).unreadable is not None and (self.is_leader or sm.unreadable.snapshot):  # stuck state
            raise self.machine.apply_guard.refusal()
        sm.lock.acquire_read()
        try:
            return q.run(sm.root)
        finally:
            sm.lock.release_read()

    def change_membership(self, change: ConfigChange, timeout: float = 10.0) -> int:
        """Propose ``change`` and return its index once it is committed and applied here.

        Returning on the append alone would let an operator stop a removed node, or count
        on a promoted voter, while the change could still be lost with this leader. A
        refusal that a new leader may lift in a moment (it has not heard every voter yet)
        is asked again until then, within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        done_token, done = self._callers.take()

        def propose() -> int | None:
            try:
                problem = self.core.change_problem(change)
                if problem is not None:
                    raise ConfigChangeRefused(problem)
                index = self.core.propose_config_change(change)
            except ConfigChangeRefused:
                if self.core.change_settling() and time.monotonic() < deadline:
                    return None  # ask again after a tick
                raise
            self.machine.wait_for(index, done_token)
            return index

        try:
            while (index := self._call(propose).result(max(0.0, deadline - time.monotonic()))) is None:
                time.sleep(min(self.options.tick_interval, max(0.0, deadline - time.monotonic())))
            done.result(max(0.0, deadline - time.monotonic()))
        finally:
            self._callers.forget(done_token)
        return index

    def transfer_leadership(self, to: str, timeout: float = 10.0) -> None:
        self._call(lambda: self.core.transfer_leadership(to)).result(timeout)

    def snapshot(self, timeout: float = 60.0) -> int:
        """Take a snapshot now; returns its index."""
        token, fut = self._callers.take()
        try:
            self._call(lambda: self.machine.request_snapshot(token)).result(timeout)
            return fut.result(timeout)
        finally:
            self._callers.forget(token)  # answered, or given up on: nothing waits for it now

    def wait_applied(self, index: int, timeout: float) -> bool:
        """Block until the state machine has applied ``index`` (or ``timeout`` passes)."""
        deadline = time.monotonic() + timeout
        with self._applied_cond:
            while self.sm.applied_index < index and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._applied_cond.wait(min(left, 0.1))
        return self.sm.applied_index >= index

    def committed_log(self, start: int, limit: int) -> tuple[int, list[Entry]]:
        """Applied entries from ``start`` (at most ``limit``), for subscribers.

        Returns ``(first_index, entries)``; when ``start`` was compacted away the
        entries are empty and ``first_index`` says where the log now begins.
        """
        applied = self.sm.applied_index
        # entries a snapshot covers may still be in the journal, but whether they changed
        # anything is known only for entries applied here: subscribers start after them
        first = max(self.storage.first_index(), self.sm.skipped_from)
        if start < first:
            return first, []
        if start > applied:
            return first, []
        try:
            return first, self.storage.entries(start, min(applied, start + limit - 1) + 1, 1 << 20)
        except RaftError:  # compacted meanwhile
            return self.storage.first_index(), []

    def status(self, timeout: float = STATUS_TIMEOUT) -> dict:
        """This node's view, taken by the live Raft loop, never a cache that outlives it.

        Raises :class:`NodeHalted` once the node has failed or stopped (an in-process
        node, or a node process in the moment before it exits) or its raft thread has
        ended, and TimeoutError when the loop does not answer within ``timeout`` (hung):
        a node that cannot step its core never reports itself healthy.
        """
        if self._failed is not None:
            raise NodeHalted(f"node {self.id!r} has stopped: {self._failed}")
        if self._stop.is_set():
            raise NodeHalted(f"node {self.id!r} is stopped")
        if self._raft_thread.ident is not None and not self._raft_thread.is_alive():
            raise NodeHalted(f"node {self.id!r}: its raft thread has ended")
        try:
            return self._call(self._status_now).result(timeout)
        except TimeoutError:
            stalled = self._disk.stalled_for(time.monotonic())  # a write holding the loop (inline) says why
            why = f": a write to its disk has been under way for {stalled:g} s" if stalled else ""
            raise TimeoutError(f"node {self.id!r}: its raft loop did not answer within {timeout:g} s{why}") from None

    def _status_now(self) -> dict:
        """status() on a thread that holds the core lock."""
        st = self.core.status()
        return {
            "id": self.id, "role": st.role, "term": st.term, "leader": st.leader,
            "commit_index": st.commit, "applied_index": self.sm.applied_index,
            "first_index": st.first_index, "last_index": st.last_index,
            "voters": list(st.voters), "learners": list(st.learners),
            "disk_full": self.machine.disk_full, "snapshot_error": self.machine.snapshot_error,
            "apply_blocked": self.machine.apply_guard.status(),
            "disk_stalled": self._disk.stalled_for(time.monotonic()),
        }

    @property
    def is_leader(self) -> bool:
        return self._role == Role.LEADER

    def _call(self, fn: Callable[[], Any]) -> Future:
        token, fut = self._callers.take()
        self._inbox.put(Call(fn, token))
        self._kick()
        return fut

    # -- the shell: whoever has input steps the machine -----------------------------------
    def _kick(self, capture: tuple[str, list[bytes]] | None = None) -> None:
        """Step what is queued, on this thread, unless another thread is doing so.

        A combining lock: each input is queued first, then whoever gets the lock drains
        the queue for everyone, and a thread that finds the lock taken leaves its input
        to the holder, which looks at the queue again after letting go. A message is
        thus stepped by the thread that received it, with no hand-off to a raft thread
        (each hand-off costs a wake-up of 0.1-0.15 ms on the commit path).
        """
        if self._stopped:  # nobody steps the machine any more: this caller's input is refused
            self._drop_queued()
            self._callers.refuse_late(self.id)
            return
        held = None if capture is None else ReplyCapture(*capture)
        while True:
            if not self._core_lock.acquire(blocking=False):
                return
            try:
                self._capture = held  # kept across rounds: one budget, one path once spilled
                running = self._step_locked()
            finally:
                self._capture = None
                self._core_lock.release()
            # a failed node's halt drains the inbox: input queued while it held the lock
            # (its caller found the lock taken) is answered by another round
            if self._inbox.empty() or (not running and self._failed is None):
                return

    def _step_locked(self, tick: bool = False) -> bool:
        """Hand the machine what is queued (and the ticks due), carry out its effects;
        core lock held. False once the node is stopping or has failed (a storage failure
        stops it: no risk to safety)."""
        if self._failed is None and not self._stop.is_set():
            try:
                events = []
                get = self._inbox.get_nowait
                for _ in range(INBOX_BATCH):
                    try:
                        events.append(get())
                    except queue.Empty:
                        break
                now = time.monotonic()
                self._route(self.machine.handle(events, now, self._wall(), tick))
                if not tick and self.machine.next_deadline() < self._sleep_until:
                    self._wake.set()  # e.g. followers learn a new commit within a tick
                return True
            except BaseException as exc:  # noqa: BLE001 - fail-stop: the node halts, its process exits
                self._fatal("the raft loop failed", exc)
        if self._failed is not None:
            self._halt_locked()
        return False

    def _route(self, effects: list) -> None:
        """Carry out the machine's effects in order; which thread runs a disk item is
        the one choice made here."""
        for eff in effects:
            t = type(eff)
            if t is Send:
                self._send_out(eff.dst, eff.payload)
            elif t is DiskWork:
                inline = eff.inline and time.monotonic() >= self._inline_off_until
                started = time.monotonic()
                if self._disk.submit(eff, inline=inline):
                    self._check_inline_write(time.monotonic() - started)
            elif t is ApplyWork:
                item = eff.item
                if item[0] == "hook":
                    hook = self.on_leader_start if item[1] == "start" else self.on_leader_stop
                    if hook is None:
                        continue
                    item = ("hook", hook)
                self._apply_q.put(item)
            elif t is Complete:
                self._callers.complete(eff.token, eff.value, eff.exc)
            elif t is MembershipChanged:
                self.membership = eff.membership
                if self.on_membership is not None:
                    self.on_membership(eff.membership)
            else:
                raise RaftError(f"{self.id}: unknown effect {t.__name__}")

    def _raft_loop(self) -> None:
        """Ticks, and what no other thread stepped (nobody needs to wait for this one)."""
        while True:
            with self._core_lock:
                if not self._step_locked(tick=True):
                    return
                self._sleep_until = self.machine.next_deadline()
            if not self._inbox.empty():
                self._kick()
            timeout = self._sleep_until - time.monotonic()
            if timeout > 0:
                self._wake.wait(timeout)
                self._wake.clear()

    def _guarded(self, what: str, body: Callable[[], None]) -> Callable[[], None]:
        """A thread's body whose death halts the node (fail-stop), never leaves a zombie."""
        def run() -> None:
            try:
                body()
            except BaseException as exc:  # noqa: BLE001 - fail-stop
                self._fatal(f"the {what} thread died", exc)

        return run

    def _fatal(self, what: str, exc: BaseException) -> None:
        """Fail-stop (any thread): the node steps its core no more, so it acknowledges and
        votes no more; a node process exits (``on_fatal``) for its service manager to
        restart it from its disk. Nothing is retried: after a failed write or fsync the
        file's state is unknown (the PostgreSQL fsync lesson)."""
        first = self._failed is None
        if first:
            self._failed = exc
        log.critical("%s: stopping: %s: %s", self.id, what, exc, exc_info=exc)
        self._wake.set()
        if first and self.on_fatal is not None:
            self.on_fatal(f"{what}: {exc}")
        self._kick()  # fail what waits, unless the core lock's holder does

    def _halt_locked(self) -> None:
        """After a failure (core lock held): answer everything that waits or is queued.

        What this node proposed may still commit through the others: "failed" would be
        untrue, so the callers hear a refusal they retry on the new leader."""
        halted = NodeHalted(f"node {self.id!r} stopped ({self._failed}); the command's outcome is decided "
                            "by the other nodes: retry it on the new leader")
        for eff in self.machine.halt(halted):
            self._callers.complete(eff.token, eff.value, eff.exc)
        self._drop_queued()
        self._callers.fail_all(halted)

    def _drop_queued(self) -> None:
        """Empty the inbox of a node that will step no more (its callers are answered
        by token): else each late input stays there as long as the node object lives."""
        while True:
            try:
                self._inbox.get_nowait()
            except queue.Empty:
                break

    def _send_out(self, to: str, payload: bytes) -> None:
        c = self._capture
        if c is None or not c.keep(to, payload, self.transport.send):
            self.transport.send(to, payload)

    def _write_failed(self, exc: BaseException) -> None:
        self._fatal("a journal write failed", exc)

    def _report_persisted(self, seqs: list[int]) -> None:
        """The disk lane's report (any thread): queued like any input, so it reaches the
        machine after every report queued before it. It runs on the thread that wrote, so
        the lane's batch is still the one just written: its duration paces elections."""
        started = self._disk.batch_started
        seconds = 0.0 if started is None else time.monotonic() - started
        if seconds >= SLOW_LANE_WRITE:  # still slow on the lane thread: no inline write may hold the core meanwhile
            self._inline_off_until = max(self._inline_off_until, time.monotonic() + SLOW_WRITE_BACKOFF)
        self._inbox.put(Persisted(seqs, seconds))

    def _disk_full(self, full: bool) -> None:
        """The disk lane's news (any thread): the disk filled up, or has space again."""
        self._inbox.put(DiskState(full))
        self._kick()

    def _check_inline_write(self, seconds: float) -> None:
        """A slow disk must not hold up the thread that received the append: its reply
        (our ack) is what tells the leader this link is alive, and after the transport's
        request timeout (1 s) the leader would drop the link as hung."""
        if seconds >= SLOW_WRITE:
            self._inline_off_until = time.monotonic() + SLOW_WRITE_BACKOFF
            log.warning("%s: a journal write took %.2f s: writing on the disk lane thread for the next %.0f s",
                        self.id, seconds, SLOW_WRITE_BACKOFF)

    def _report_snapshot(self, ev: SnapshotWritten) -> None:
        """The apply thread wrote (or failed to write) a snapshot's file."""
        self._inbox.put(ev)
        self._kick()


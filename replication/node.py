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
- ``write`` (``replication.persist``): the disk lane. Writes Readies in order, one fsync
  per batch, then sends what needed the disk (acks, votes) and reports the writes' sequence
  numbers through the inbox; a leader counts its own entries toward a commit only then.
  A follower's write may run inline on an idle lane; it reports the same way.
- ``apply``: applies committed entries to the state machine in order and completes the
  waiting proposals and reads. Kept off the raft thread so that a slow transaction or a
  snapshot being serialized never delays heartbeats.
- ``snapshot``: serializes the state under the read lock and writes the file.

The transport is anything with ``send(to, payload: bytes)`` that never blocks; the
process entry point (``rpc``) supplies the RPyC one, tests may supply an in-memory one.
"""
from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from prevalence.codec import CODEC
from prevalence.entry import Entry, EntryKind
from prevalence.recovery import recover
from prevalence.errors import CodecError
from prevalence.state import command_stamp, encode_command
from replication.config import RaftConfig
from replication.core import RaftNode
from replication.errors import DecodeError, NodeHalted, NotLeader, RaftError
from replication.journal_storage import JournalStorage
from replication.membership import ConfigChange, Membership
from replication.clock import DEFAULT_MAX_OFFSET_US, JournalClock
from replication.messages import AppendResp, HeartbeatResp, InstallSnapshot, decode, encode
from replication.apply import ApplierMixin, EntryLost
from replication.persist import DiskLane, DiskWork
from replication.ready import Ready, Role

log = logging.getLogger("replication.node")

__all__ = ["EntryLost", "LocalNetwork", "Node", "NodeOptions", "Transport"]

_COMMAND = int(EntryKind.COMMAND)
STATUS_TIMEOUT = 1.0  # seconds status() waits for the raft loop to answer
SLOW_WRITE = 0.1  # seconds: an inline follower write this slow...
SLOW_WRITE_BACKOFF = 10.0  # ...sends the next ones to the disk lane thread for this long
# What goes back as one delivery's reply at most (the transport's batch size): a peer
# frame is bounded (rpc.transport.PEER_MAX_FRAME), and after a probe a leader may send a
# follower a whole window of appends in one step. Past this, the step's messages to
# that peer all go through the transport, in order.
REPLY_BYTES = 1 << 20


_CLOCKED = (AppendResp, HeartbeatResp)  # follower replies that carry the sender's wall clock


def _wall_us() -> int:
    return time.time_ns() // 1000


def _newest_stamp(entries: list[Entry]) -> int:
    """The journal time of the newest command among ``entries`` (0: none)."""
    for e in reversed(entries):
        if e.kind == _COMMAND:
            try:
                return command_stamp(e.data)
            except CodecError:
                return 0  # a malformed entry applies as an error; its stamp is no reference
    return 0


class Transport(Protocol):
    def send(self, to: str, payload: bytes) -> None: ...


@dataclass
class NodeOptions:
    tick_interval: float = 0.025  # seconds per Raft tick
    raft: RaftConfig = field(default_factory=lambda: RaftConfig(election_tick=10, heartbeat_tick=5))
    fsync: str = "always"
    snapshot_every: int = 10_000  # entries applied between automatic snapshots (0: never)
    keep_snapshots: int = 2
    segment_bytes: int = 16 * 1024 * 1024
    max_batch: int = 512  # proposals taken into one Ready at most
    follower_apply_delay: float = 0.002  # seconds a follower lets committed entries gather
    max_clock_offset_us: int = DEFAULT_MAX_OFFSET_US  # a voter's clock further off the median is reported
    # seconds an index may stay committed but not durable on the leader before it hands
    # leadership over (None: one election timeout; 0: never)
    slow_disk_handover: float | None = None
    # a journal entry larger than this is refused when proposed: an Append carries at most
    # raft.max_size_per_msg plus one entry, and must fit a peer frame (16 MiB)
    max_entry_bytes: int = 8 << 20


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
        self._wall = wall_clock or _wall_us  # µs since the epoch; tests skew it
        self.on_fatal = on_fatal  # a node process exits here (fail-stop); in-process nodes just halt
        self.options = opts = options or NodeOptions()
        self.transport = transport
        self.on_leader_start = on_leader_start
        self.on_leader_stop = on_leader_stop
        self.on_membership = on_membership
        self.storage = JournalStorage(
            data_dir, initial_membership=membership, fsync=opts.fsync,
            segment_bytes=opts.segment_bytes, keep_snapshots=opts.keep_snapshots,
        )
        hs, _m = self.storage.initial_state()
        snap_index = self.storage.first_index() - 1
        upto = max(min(hs.commit, self.storage.last_index()), snap_index)
        self.sm, warnings = recover(self.storage.journal, self.storage.snapshots, root_factory, upto=upto, check=True)
        for w in warnings:
            log.warning("%s: %s", node_id, w)
        cfg = RaftConfig(**{f: getattr(opts.raft, f) for f in opts.raft.__slots__})
        cfg.applied = self.sm.applied_index
        cfg.async_storage_writes = True
        self.core = RaftNode(node_id, self.storage, cfg, random.Random(int.from_bytes(os.urandom(8), "big")))
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._apply_q: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting: dict[int, tuple[int, Future]] = {}  # index -> (term, future), raft thread only
        self._apply_waiting: dict[int, tuple[int, Future]] = {}
        self._reads: list[tuple[int, Future, Any]] = []
        self._applied_cond = threading.Condition()
        self._clock = JournalClock(node_id, opts.max_clock_offset_us)
        self._clock.saw_stamp(self.sm.timestamp_us)
        tail = self.storage.last_index()
        if tail > self.sm.applied_index:  # entries not applied yet carry stamps too
            lo = max(self.sm.applied_index + 1, tail - 64)
            self._clock.saw_stamp(_newest_stamp(self.storage.entries(lo, tail + 1, None)))
        self._clock_warned: dict[str, float] = {}  # node -> when its clock was last reported
        self._refused_peers: dict[tuple[str, str], float] = {}  # (sender, why) -> when last logged
        self._snapshot_sent: dict[str, int] = {}  # peer -> index last announced in the log
        self._last_snapshot_index = snap_index
        self._disk_lag: tuple[int, float] | None = None  # see _watch_own_disk
        self._snapshot_retry_at = 0.0  # after a failed automatic snapshot, not before this
        self._snapshot_backoff = 0.0
        self._stop = threading.Event()
        self._failed: BaseException | None = None
        self._role = Role.FOLLOWER
        self.membership = self.core.membership
        self._raft_thread = threading.Thread(target=self._guarded("raft", self._raft_loop), name=f"raft-{node_id}",
                                             daemon=True)
        self._apply_thread = threading.Thread(target=self._guarded("apply", self._apply_loop),
                                              name=f"apply-{node_id}", daemon=True)
        self._core_lock = threading.Lock()  # whoever holds it steps the core (see _kick)
        self._wake = threading.Event()  # the raft thread's: a tick may be due sooner
        self._capture: list | None = None  # [thread, peer, replies, their bytes]; see _send_out
        self._long_sleep = False  # the raft thread sleeps past the next tick
        self._inline_off_until = 0.0  # a slow disk: follower writes go to the disk lane thread until then
        self._checks_due = 0.0  # a leader's periodic checks (clocks, its own disk)
        self._disk = DiskLane(self.storage, self._send_out, self._report_persisted, self._write_failed,
                              f"write-{node_id}", after_batch=self._kick)
        self._disk_seq = 0  # sequence number of the last DiskWork submitted
        self._disk_inflight: deque[DiskWork] = deque()  # submitted, not yet reported; core lock
        self._written_tv = (hs.term, hs.vote)  # term and vote as last handed to the disk lane

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
                self._call(self._transfer_to_best).result(timeout)
                deadline = time.monotonic() + timeout
                while self._role == Role.LEADER and time.monotonic() < deadline:
                    time.sleep(self.options.tick_interval)
            except Exception as exc:  # noqa: BLE001 - best effort on the way out
                log.info("%s: no leadership transfer before stopping: %s", self.id, exc)
        self._stop.set()
        self._wake.set()
        self._raft_thread.join()
        with self._core_lock:  # no other thread is still stepping the core
            pass
        self._disk.stop()
        self._apply_q.put(None)
        self._apply_thread.join()
        self.storage.close()
        if self._role == Role.LEADER and self.on_leader_stop:
            self.on_leader_stop()

    # -- inputs from other threads ----------------------------------------------------
    def receive(self, payload: bytes, sender: str | None = None) -> None:
        """A message from a peer (called by the transport's threads); ``sender`` as in
        :meth:`receive_batch`."""
        self._inbox.put(("msg", (sender, payload), None))
        self._kick()

    def receive_batch(self, payloads: list[bytes], reply_to: str | None = None, *,
                      sender: str | None = None) -> list[bytes]:
        """Messages from a peer; with ``reply_to``, returns the messages for that peer
        that stepping them produced at once on this thread (an ack after an inline
        fsync), for the transport to carry back as its reply instead of a message.

        ``sender`` (default: ``reply_to``) is the peer id the transport authenticated:
        a message that does not come from it, or from a peer that is no member, is
        dropped (see :meth:`_admit`)."""
        sender = reply_to if sender is None else sender
        for payload in payloads:
            self._inbox.put(("msg", (sender, payload), None))
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
        return self.submit_many([(tx, session)])[0]

    def submit_many(self, items: list[tuple[Any, tuple[int, int] | None]]) -> list[Future]:
        """:meth:`submit` for several ``(tx, session)`` at once: they go into one Ready
        (one fsync, one append per follower) however the threads are scheduled."""
        plain = [(CODEC.to_plain(tx), session) for tx, session in items]  # may raise: before queueing
        futures = [Future() for _ in plain]
        for p, fut in zip(plain, futures):
            self._inbox.put(("propose", p, fut))
        self._kick()
        return futures

    def query(self, q: Any, timeout: float = 10.0, *, linearizable: bool = True) -> Any:
        """Run ``q``; linearizable (ReadIndex) by default, else on the local state."""
        if linearizable:
            fut: Future = Future()
            self._inbox.put(("read", q, fut))
            self._kick()
            return fut.result(timeout)
        sm = self.sm
        sm.lock.acquire_read()
        try:
            return q.run(sm.root)
        finally:
            sm.lock.release_read()

    def change_membership(self, change: ConfigChange, timeout: float = 10.0) -> int:
        """Propose ``change`` and return its index once it is committed and applied here.

        Returning on the append alone would let an operator stop a removed node, or count
        on a promoted voter, while the change could still be lost with this leader.
        """
        deadline = time.monotonic() + timeout
        done: Future = Future()

        def propose() -> int:
            index = self.core.propose_config_change(change)
            self._waiting[index] = (self.core.term, done)
            return index

        index = self._call(propose).result(timeout)
        done.result(max(0.0, deadline - time.monotonic()))
        return index

    def transfer_leadership(self, to: str, timeout: float = 10.0) -> None:
        self._call(lambda: self.core.transfer_leadership(to)).result(timeout)

    def snapshot(self, timeout: float = 60.0) -> int:
        """Take a snapshot now; returns its index."""
        fut: Future = Future()
        self._apply_q.put(("snapshot", fut))
        return fut.result(timeout)

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
            raise TimeoutError(f"node {self.id!r}: its raft loop did not answer within {timeout:g} s") from None

    def _status_now(self) -> dict:
        """status() on a thread that holds the core lock."""
        st = self.core.status()
        return {
            "id": self.id, "role": st.role, "term": st.term, "leader": st.leader,
            "commit_index": st.commit, "applied_index": self.sm.applied_index,
            "first_index": st.first_index, "last_index": st.last_index,
            "voters": list(st.voters), "learners": list(st.learners),
        }

    @property
    def is_leader(self) -> bool:
        return self._role == Role.LEADER

    def _call(self, fn: Callable[[], Any]) -> Future:
        fut: Future = Future()
        self._inbox.put(("call", fn, fut))
        self._kick()
        return fut

    def _transfer_to_best(self) -> None:
        st = self.core.status()
        voters = [p for p in st.voters if p != self.id]
        if not voters:
            raise RaftError("no other voter to hand leadership to")
        best = max(voters, key=lambda p: (st.progress[p].match if p in st.progress else -1, p))
        self.core.transfer_leadership(best)

    # -- stepping the core: the raft thread or any thread with input ------------------
    def _kick(self, capture: tuple[str, list[bytes]] | None = None) -> None:
        """Step what is queued, on this thread, unless another thread is doing so.

        A combining lock: each input is queued first, then whoever gets the lock drains
        the queue for everyone, and a thread that finds the lock taken leaves its input
        to the holder, which looks at the queue again after letting go. A message is
        thus stepped by the thread that received it, with no hand-off to a raft thread
        (each hand-off costs a wake-up of 0.1-0.15 ms on the commit path).
        """
        held = None if capture is None else [threading.get_ident(), capture[0], capture[1], 0]
        while True:
            if not self._core_lock.acquire(blocking=False):
                return
            try:
                self._capture = held  # kept across rounds: one budget, one path once spilled
                running = self._step_locked()
            finally:
                self._capture = None
                self._core_lock.release()
            if not running or self._inbox.empty():
                return

    def _step_locked(self, tick: Callable[[], None] | None = None) -> bool:
        """Drain the inbox, run ``tick``, handle the Readies; core lock held. False once
        the node is stopping or has failed (a storage failure stops it: no risk to safety)."""
        if self._failed is None and not self._stop.is_set():
            try:
                self._drain_inbox()
                if tick is not None:
                    tick()
                self._process_ready()
                return True
            except BaseException as exc:  # noqa: BLE001 - fail-stop: the node halts, its process exits
                self._fatal("the raft loop failed", exc)
        if self._failed is not None:
            self._halt_locked()
        return False

    def _raft_loop(self) -> None:
        """Ticks, and what no other thread stepped (nobody needs to wait for this one)."""
        interval = self.options.tick_interval
        cfg = self.core.cfg
        # An idle node need not wake for every tick: a leader wakes when a heartbeat is
        # due, others a few times per election timeout, and each wake-up runs the ticks
        # that fell due meanwhile.
        follower_ticks = max(1, cfg.election_tick // 3)
        next_tick = time.monotonic() + interval

        def run_ticks() -> None:  # the ticks that fell due
            nonlocal next_tick
            now = time.monotonic()
            if now - next_tick > 4 * cfg.election_tick * interval:
                next_tick = now  # we were paused (SIGSTOP, a frozen VM): no burst of ticks
            while now >= next_tick:
                self.core.tick()
                next_tick += interval

        while True:
            with self._core_lock:
                if not self._step_locked(run_ticks):
                    return
                per_wake = cfg.heartbeat_tick if self._role == Role.LEADER else follower_ticks
                if per_wake > 1 and self.core.commit_unsent():
                    per_wake = 1  # followers learn a new commit within a tick
                self._long_sleep = per_wake > 1
            if not self._inbox.empty():
                self._kick()
            timeout = next_tick + (per_wake - 1) * interval - time.monotonic()
            if timeout > 0:
                self._wake.wait(timeout)
                self._wake.clear()

    def _process_ready(self) -> None:
        """Handle the core's Readies; core lock held."""
        while self.core.has_ready():
            rd = self.core.ready()
            self._handle_ready(rd)
            self.core.advance(rd)
        if self._long_sleep and self.core.commit_unsent():
            self._long_sleep = False
            self._wake.set()  # followers learn a new commit within a tick
        now = time.monotonic()
        if now >= self._checks_due:
            self._checks_due = now + 0.1
            if self._role == Role.LEADER:
                self._report_clocks(now)
                self._watch_own_disk(now)
        if self.core.membership is not self.membership:
            self.membership = self.core.membership
            log.info("%s: membership now voters=%s learners=%s", self.id,
                     ",".join(self.membership.voters), ",".join(self.membership.learners))
            if self.on_membership is not None:
                self.on_membership(self.membership)

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
        self._fail_all(NodeHalted(f"node {self.id!r} stopped ({self._failed}); the command's outcome is decided "
                                  "by the other nodes: retry it on the new leader"))
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            fut = item[2]
            if fut is not None and not fut.done():
                fut.set_exception(NodeHalted(f"node {self.id!r} stopped ({self._failed}): retry on the new leader"))

    def _send_out(self, to: str, payload: bytes) -> None:
        c = self._capture
        if c is not None and c[1] == to and c[0] == threading.get_ident():
            if c[3] + len(payload) <= REPLY_BYTES:
                c[2].append(payload)  # goes back as the reply to what the peer delivered
                c[3] += len(payload)
                return
            # over one batch: this step's messages to that peer all take the transport
            for earlier in c[2]:
                self.transport.send(to, earlier)
            c[2].clear()
            c[1] = None
        self.transport.send(to, payload)

    def _write_failed(self, exc: BaseException) -> None:
        self._fatal("a journal write failed", exc)

    def _report_persisted(self, seqs: list[int]) -> None:
        """The disk lane's report (any thread): queued like any input, so it reaches the
        core after every report queued before it."""
        self._inbox.put(("persisted", seqs, None))

    def _drain_inbox(self) -> None:
        proposals: list[tuple[tuple, Future]] = []
        for _ in range(4096):
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item[0] == "propose":
                proposals.append((item[1], item[2]))
                if len(proposals) >= self.options.max_batch:
                    self._propose(proposals)
                    proposals = []
            else:
                self._handle_input(item)
        if proposals:
            self._propose(proposals)

    def _handle_input(self, item: tuple) -> None:
        kind, payload, fut = item
        if kind == "msg":
            sender, payload = payload
            try:
                m = decode(payload)
            except Exception as exc:  # noqa: BLE001 - hostile bytes never stop the loop
                log.warning("%s: dropped a malformed peer message: %s", self.id,
                            exc if isinstance(exc, DecodeError) else type(exc).__name__)
                return
            if sender is not None and not self._admit(sender, m):
                return
            if type(m) in _CLOCKED:
                self._clock.observe(m.src, m.wall_us, time.monotonic())
            self.core.step(m)
        elif kind == "propose":
            self._propose([(payload, fut)])
        elif kind == "read":
            ctx = os.urandom(16)
            try:
                self.core.read_index(ctx)
                self._reads.append((ctx, fut, payload))
            except RaftError as exc:
                fut.set_exception(exc)
        elif kind == "persisted":
            self._persisted(payload)
        elif kind == "call":
            try:
                fut.set_result(payload())
            except BaseException as exc:  # noqa: BLE001 - delivered to the caller
                fut.set_exception(exc)

    def _admit(self, sender: str, m: Any) -> bool:
        """Peers are bound to the membership: ``m`` must come from ``sender``, the peer id
        the transport authenticated, and that peer must be a member (a node being added
        is one as soon as its change is in the log; a node that knows no member yet, one
        joining, takes its first leader from whoever reaches it). Else it is dropped, and
        logged once a minute per sender and reason."""
        if m.src != sender:
            why = "sends messages that claim another sender"
        else:
            ms = self.core.membership
            if ms.is_member(sender) or not (ms.voters or ms.learners):
                return True
            why = "is not a member"
        now = time.monotonic()
        key = (sender, why)
        if now - self._refused_peers.get(key, -120.0) >= 60.0:
            if len(self._refused_peers) > 256:
                self._refused_peers.clear()
            self._refused_peers[key] = now
            src = m.src[:64] if type(m.src) is str else f"<{type(m.src).__name__}>"  # never repr() a hostile value
            log.warning("%s: dropping messages from peer %r: it %s (%s from %r); peers are bound to the membership",
                        self.id, sender[:64], why, type(m).__name__, src)
        return False

    def _propose(self, batch: list[tuple[tuple, Future]]) -> None:
        ts = self._clock.stamp(self.membership.voters, self._wall(), time.monotonic())
        datas, futures = [], []
        limit = self.options.max_entry_bytes
        for (plain, session), fut in batch:
            try:  # one caller's unjournalable command (a session id past 64 bits) is its own error
                data = encode_command(ts, plain, session)
            except (TypeError, ValueError, OverflowError) as exc:
                fut.set_exception(CodecError(f"cannot journal this command: {exc}"))
                continue
            if len(data) > limit:
                fut.set_exception(CodecError(f"cannot journal this command: {len(data)} bytes, over the limit of "
                                             f"{limit} bytes for one entry"))
                continue
            datas.append(data)
            futures.append(fut)
        try:
            first = self.core.propose_batch(datas)
        except RaftError as exc:
            for fut in futures:
                fut.set_exception(exc)
            return
        term = self.core.term
        for k, fut in enumerate(futures):
            self._waiting[first + k] = (term, fut)

    def _handle_ready(self, rd: Ready) -> None:
        if rd.soft_state is not None:
            self._role_changed(rd.soft_state.role, rd.soft_state.leader)
        apply = None
        if rd.snapshot is not None or rd.committed_entries:
            waiting = {}
            for e in rd.committed_entries:
                w = self._waiting.pop(e.index, None)
                if w is not None:
                    waiting[e.index] = w
            apply = ("apply", (rd.snapshot, rd.committed_entries, waiting))
        hs = rd.hard_state
        tv_changed = hs is not None and (hs.term, hs.vote) != self._written_tv
        # What writes, or promises a write (acks, votes), is one disk lane item: its
        # messages leave, and the core hears of it, only in Ready order (etcd's rule).
        to_disk = (rd.entries or rd.snapshot is not None or rd.truncate_from is not None or tv_changed
                   or rd.persisted_messages)
        # A leader writes on the lane thread, in parallel with replicating; a follower,
        # whose ack must wait for the fsync anyway, offers to write right here (the lane
        # runs it here only if idle): a hand-off would only add a wake-up.
        inline = (to_disk and self._role != Role.LEADER and rd.snapshot is None
                  and time.monotonic() >= self._inline_off_until)  # (a snapshot is a large write)
        if apply is not None and rd.snapshot is None and not inline:
            self._apply_q.put(apply)  # durable here already: apply while the rest goes on
        if rd.entries and self._role != Role.LEADER:
            self._clock.saw_stamp(_newest_stamp(rd.entries))  # a leader's stamps: ours never go below
        wall = self._wall()
        for m in rd.persisted_messages:
            if type(m) is AppendResp:
                m.wall_us = wall  # the leader's journal clock reads the voters' clocks
        send = self._send_out
        for m in rd.messages:
            if type(m) is HeartbeatResp:
                m.wall_us = wall
            elif type(m) is InstallSnapshot and m.offset == 0 and self._snapshot_sent.get(m.dst) != m.meta.index:
                self._snapshot_sent[m.dst] = m.meta.index
                log.info("%s: sending snapshot %d to %s", self.id, m.meta.index, m.dst)
            send(m.dst, encode(m))
        if to_disk:
            if tv_changed:
                self._written_tv = (hs.term, hs.vote)
            self._disk_seq += 1
            # a received snapshot is installed in the state machine once it is on disk
            work = DiskWork(self._disk_seq, rd, apply if rd.snapshot is not None else None)
            self._disk_inflight.append(work)
            started = time.monotonic()
            if self._disk.submit(work, inline=inline):
                self._check_inline_write(time.monotonic() - started)
        elif hs is not None:  # a commit only: kept in memory, nothing to wait for
            self.storage.note_commit(hs)
        if inline and apply is not None:
            # the ack is out (or captured for the reply): only now wake the applier,
            # which would otherwise compete with this thread for the interpreter
            self._apply_q.put(apply)
        for rs in rd.read_states:
            for k, (ctx, fut, q) in enumerate(self._reads):
                if ctx == rs.ctx:
                    del self._reads[k]
                    self._apply_q.put(("read", (rs.index, fut, q)))
                    break

    def _persisted(self, seqs: list[int]) -> None:
        """The disk lane's report: the one place the core learns that writes are durable.

        Reports must come in submission order; anything else means two paths or a lost
        write, and the core would count the wrong entries as stored: stop instead.
        """
        inflight = self._disk_inflight
        for seq in seqs:
            expected = inflight[0].seq if inflight else None
            if seq != expected:
                raise RaftError(f"{self.id}: the disk lane reported write {seq} while {expected} was next: "
                                "durability reports out of order, stopping")
            work = inflight.popleft()
            if work.after is not None:
                self._apply_q.put(work.after)
            self.core.persisted(work.rd)

    def _check_inline_write(self, seconds: float) -> None:
        """A slow disk must not hold up the thread that received the append: its reply
        (our ack) is what tells the leader this link is alive, and after the transport's
        request timeout (1 s) the leader would drop the link as hung."""
        if seconds >= SLOW_WRITE:
            self._inline_off_until = time.monotonic() + SLOW_WRITE_BACKOFF
            log.warning("%s: a journal write took %.2f s: writing on the disk lane thread for the next %.0f s",
                        self.id, seconds, SLOW_WRITE_BACKOFF)

    def _watch_own_disk(self, now: float) -> None:
        """A leader whose own disk is ``slow_disk_handover`` seconds behind the commit (the
        followers commit without it) hands leadership to the most up-to-date voter: it
        applies, and so answers, only what its own disk holds, so every client would wait
        for its slowest fsync. Measured on one index at a time: an index committed at t
        and still not durable here at t + limit, so a disk a few ms behind never counts."""
        limit = self.options.slow_disk_handover
        if limit is None:
            limit = self.core.cfg.election_tick * self.options.tick_interval
        core = self.core
        me = core.prs.get(self.id)
        lag = self._disk_lag  # (committed index, when it was seen committed and not durable here)
        if not limit or me is None or core.lead_transferee is not None or (lag is not None and me.match >= lag[0]):
            self._disk_lag = lag = None
        if me is None or me.match >= core.log.committed:
            return
        if lag is None:
            self._disk_lag = (core.log.committed, now)
        elif now - lag[1] >= limit:
            self._disk_lag = None
            try:
                self._transfer_to_best()
            except RaftError as exc:
                log.warning("%s: this node's disk lags the commit, and leadership cannot be handed over: %s",
                            self.id, exc)
                return
            log.warning("%s: this node's disk is more than %.1f s behind the commit (durable %d, committed %d): "
                        "handing leadership to %s", self.id, limit, me.match, core.log.committed,
                        core.lead_transferee)

    def _report_clocks(self, now: float) -> None:
        """A voter whose wall clock is far from the others' is named in the log (once a
        minute): the journal does not follow it, but its operator should fix it."""
        voters = self.membership.voters
        for node, offset in self._clock.outliers(voters, self._wall(), now).items():
            if now - self._clock_warned.get(node, -1e9) >= 60.0:
                self._clock_warned[node] = now
                who = "this node's" if node == self.id else f"node {node!r}'s"
                log.error("%s: %s wall clock is %+.3f s off the voters' median (more than %.3f s): the journal "
                          "time follows the median; fix the clock (NTP / Windows Time)", self.id, who,
                          offset / 1e6, self._clock.max_offset_us / 1e6)

    def _role_changed(self, role: Role, leader: str | None) -> None:
        was, self._role = self._role, role
        self._checks_due = 0.0  # a new leader checks at once
        log.info("%s: %s in term %d (leader %s)", self.id, role, self.core.term, leader)
        if was != Role.LEADER and role == Role.LEADER and self.on_leader_start:
            self._apply_q.put(("hook", self.on_leader_start))
        if was == Role.LEADER and role != Role.LEADER:
            if self.on_leader_stop:
                self._apply_q.put(("hook", self.on_leader_stop))
            for _ctx, fut, _q in self._reads:  # a deposed leader cannot confirm them
                fut.set_exception(NotLeader(self.id, leader))
            self._reads.clear()

    def _fail_all(self, exc: BaseException) -> None:
        for _t, fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(exc)
        self._waiting.clear()

    def _take_snapshot(self) -> int:
        """Serialize the state (apply waits, raft does not), store it, compact."""
        meta, body = self.sm.capture()
        if meta.index <= self._last_snapshot_index:
            return self._last_snapshot_index
        # The file is written here, outside the core lock: whichever thread steps the
        # core next (on a follower, one whose reply to the leader is its ack) must not
        # wait for a large write.
        term, membership = self._call(
            lambda: (self.storage.snapshot_term(meta.index), self.core.snapshot_meta(meta.index).membership)).result()
        self.storage.write_snapshot(meta, body, membership, term)
        index = self._call(lambda: self._publish_snapshot(meta, membership)).result()
        self.sm.forget_skipped(self.storage.first_index())  # here, on the apply thread
        return index

    def _publish_snapshot(self, meta, membership) -> int:
        self._disk.drain()  # the journal is reorganised below: no write under way
        self.storage.publish_snapshot(meta, membership)
        removed = self.storage.compact()
        self.core.compact(meta.index)
        self._last_snapshot_index = meta.index
        log.info("%s: snapshot at %d (%d journal segment(s) removed)", self.id, meta.index, removed)
        return meta.index


class LocalNetwork:
    """An in-process transport between nodes, for tests and single-machine experiments."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.cut: set[tuple[str, str]] = set()

    def transport(self, src: str) -> "LocalNetwork._Port":
        return LocalNetwork._Port(self, src)

    class _Port:
        def __init__(self, net: "LocalNetwork", src: str):
            self.net, self.src = net, src

        def send(self, to: str, payload: bytes) -> None:
            node = self.net.nodes.get(to)
            if node is not None and (self.src, to) not in self.net.cut:
                node.receive(payload, self.src)

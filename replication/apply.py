"""The node's apply lane: committed entries into the state machine, in order.

Kept off the threads that step the Raft core, so that a slow transaction or a snapshot
being serialized never delays heartbeats or acks. A mixin of
:class:`replication.node.Node` (split out for size only); it reads the node's ``sm``,
``storage``, ``_apply_q`` and ``_applied_cond``.
"""
from __future__ import annotations

import logging
import queue
import time
from collections import deque
from typing import Any, Callable

from prevalence.entry import Entry, EntryKind
from prevalence.errors import UnreadableEntry
from prevalence.snapshots import decode_file, deserialize
from prevalence.state import StateMachine
from replication.errors import CannotApply, CommittedUnapplied, ProposalRefused
from replication.membership import Membership, decode_membership
from replication.runtime.events import ApplyBlocked, SnapshotWritten

log = logging.getLogger("replication.node")


class EntryLost(ProposalRefused):
    """A proposal's index was taken by another leader's entry: it was not applied."""


def _plain_apply(item: tuple | None) -> bool:
    """Committed entries with no snapshot to install first."""
    return item is not None and item[0] == "apply" and item[1][0] is None


_CONFIG = int(EntryKind.CONFIG)


def _readable_snapshot(snapshot: Any) -> StateMachine:
    """The state a snapshot from the leader holds, built from the bytes received, not
    the file: a newer snapshot installed or taken meanwhile may have pruned it (the disk
    lane runs ahead of this one). UnreadableEntry when this program cannot read it (its
    root holds a class of a newer release): the state then stays as it was."""
    where = f"snapshot {snapshot.meta.index} from the leader"
    meta, body = decode_file(where, snapshot.data)
    try:
        root = deserialize(body)
    except MemoryError:  # this PC's state, not the snapshot's: the node stops, and reads it again
        raise
    except Exception as exc:  # noqa: BLE001 - anything the unpickler raises
        raise UnreadableEntry(meta.index, f"cannot unpickle the root (from the leader): {exc!r}", snapshot=True) from None
    return StateMachine.from_snapshot(meta, root)


class ApplierMixin:
    #: Called on the apply thread, in log order, with the membership of each CONFIG entry
    #: once it is applied and of each snapshot installed: what is committed for good (the
    #: rpc layer keeps the cluster identity it carries). An exception stops the node.
    on_config_applied: Callable[[Membership], None] | None = None

    def _apply_loop(self) -> None:
        q = self._apply_q
        delay = self.options.follower_apply_delay
        backlog: deque = deque()
        while True:
            item = backlog.popleft() if backlog else q.get()
            if item is None:
                return
            kind, arg = item
            if kind == "apply" and delay > 0 and not self.is_leader and not backlog:
                # A follower is in no hurry to apply, but its acks are: let the entries of
                # the next few appends gather and apply them in one go, instead of taking
                # the interpreter (and on a shared machine a core) after every append.
                time.sleep(delay)
                while True:
                    try:
                        backlog.append(q.get_nowait())
                    except queue.Empty:
                        break
            if kind == "apply" and arg[0] is None and _plain_apply(backlog[0] if backlog else None):
                entries, waiting = list(arg[1]), dict(arg[2])  # consecutive batches: one lock hold
                while _plain_apply(backlog[0] if backlog else None):
                    _s, more, more_waiting = backlog.popleft()[1]
                    entries.extend(more)
                    waiting.update(more_waiting)
                arg = (None, entries, waiting)
            # An entry that cannot be applied stops the node (the thread's guard): going
            # on would leave this replica behind the log it acknowledges.
            if kind == "apply":
                self._apply(*arg)
            elif kind == "read":
                self._serve_read(*arg)
            elif kind == "hook":
                try:
                    arg()
                except Exception:  # noqa: BLE001 - the application's hook, not the replica's state
                    log.exception("%s: a leader hook failed", self.id)
            elif kind == "snapshot":
                self._report_snapshot(self.applier.write_snapshot(*arg))
            elif kind == "forget":
                self.sm.forget_skipped(arg)

    def _apply(self, snapshot, entries: list[Entry], waiting: dict) -> None:
        news = self.applier.apply(snapshot, entries, waiting, self.on_config_applied)
        with self._applied_cond:
            self._applied_cond.notify_all()
        if news is not None:  # to the machine, like every worker's result
            self._inbox.put(news)
            self._kick()

    def _serve_read(self, index: int, token: int, q: Any) -> None:
        self.applier.serve_read(index, token, q)


class Applier:
    """The apply lane's work, whoever runs it (the apply thread, a simulator): committed
    entries into the state machine in order, a received snapshot installed, reads
    served, each caller answered through ``complete(token, value, exc)``. It never
    waits: the machine hands it items in an order where each can be done at once."""

    def __init__(self, node_id: str, sm: StateMachine, storage: Any,
                 complete: Callable[[int, Any, BaseException | None], None]) -> None:
        self.id = node_id
        self.sm = sm
        self.storage = storage
        self.complete = complete

    def apply(self, snapshot: Any, entries: list[Entry], waiting: dict,
              on_config: Callable[[Membership], None] | None = None) -> ApplyBlocked | None:
        """``on_config`` gets the membership of the snapshot and of each CONFIG entry
        applied, in log order, after the state machine's lock is released (it may write
        a file). Returns news for the machine: :class:`ApplyBlocked` when this program
        met an entry or snapshot it cannot read (nothing from there on is applied, the
        state stays exactly before it: a newer program, restarted, applies on from
        there), or when a readable snapshot has carried the state past it."""
        sm, complete = self.sm, self.complete
        was = sm.unreadable
        if snapshot is not None:
            try:
                new = _readable_snapshot(snapshot)
            except UnreadableEntry as exc:
                sm.unreadable = exc
                new = None
            if new is not None:
                self._install(new)
        configs = [snapshot.meta.membership] if snapshot is not None and on_config is not None else []
        sm.lock.acquire_write()
        try:
            for e in entries:
                if e.index <= sm.applied_index:
                    continue
                w = waiting.get(e.index)
                if sm.unreadable is None:
                    try:
                        result, exc = sm.apply_entry(e, check=True)
                    except UnreadableEntry as err:
                        sm.unreadable = err
                if sm.unreadable is not None:  # committed, not applied here: the others tell its outcome
                    if w is not None:
                        complete(w[1], None, self.refusal(committed=w[0] == e.term, index=e.index))
                    continue
                if e.kind == _CONFIG and on_config is not None:
                    configs.append(decode_membership(e.data))  # the core decoded it already
                if w is not None:
                    term, token = w
                    if term != e.term:
                        complete(token, None, EntryLost(f"entry {e.index} was replaced by another leader's entry"))
                    else:
                        complete(token, result, exc)
        finally:
            sm.lock.release_write()
        for membership in configs:
            on_config(membership)
        now = sm.unreadable
        if now is was:
            return None
        return ApplyBlocked(None) if now is None else ApplyBlocked(now.index, str(now), sm.applied_index)

    def _install(self, new: StateMachine) -> None:
        sm = self.sm
        sm.lock.acquire_write()
        try:  # in place: other threads hold this object (the snapshot replaced what it knew)
            sm.root, sm.applied_index, sm.timestamp_us, sm.sessions = new.root, new.applied_index, new.timestamp_us, new.sessions
            sm.skipped, sm.skipped_from = new.skipped, new.skipped_from
            sm.unreadable = None  # the state is the cluster's at the snapshot, past what was unreadable
        finally:
            sm.lock.release_write()
        log.info("%s: installed snapshot %d from the leader", self.id, new.applied_index)

    def refusal(self, committed: bool = False, index: int = 0) -> ProposalRefused:
        """What a caller waiting on this node's state hears while it cannot apply.
        ``committed``: its own entry ``index`` is committed, so the other nodes apply it
        (a caller whose index another leader's entry took was not: EntryLost)."""
        if index and not committed:
            return EntryLost(f"entry {index} was replaced by another leader's entry")
        kind = CommittedUnapplied if committed else CannotApply
        return kind(f"node {self.id!r} cannot apply the log past {self.sm.unreadable}: upgrade this node; "
                    "the command's outcome is decided by the other nodes: retry it on the leader")

    def write_snapshot(self, index: int, term: int, membership: Membership) -> SnapshotWritten:
        """Capture the state, applied exactly to ``index`` (the machine queued this item
        right after that entry), and write its file; failing is an answer, not a crash:
        the journal still holds everything."""
        if self.sm.unreadable is not None and self.sm.applied_index < index:  # asked before the news came
            return SnapshotWritten(index, exc=self.refusal())
        if self.sm.applied_index != index:
            raise RuntimeError(f"{self.id}: a snapshot at {index} reached the apply lane at {self.sm.applied_index}")
        try:
            meta, body = self.sm.capture()
            self.storage.write_snapshot(meta, body, membership, term)
        except Exception as exc:  # noqa: BLE001 - told to the machine, which backs off
            return SnapshotWritten(index, exc=exc)
        return SnapshotWritten(index, meta, membership)

    def serve_read(self, index: int, token: int, q: Any) -> None:
        """A read the machine released: the core hands out a ReadState only once the
        entries up to its index went to this lane, so they are applied by now."""
        sm = self.sm
        if sm.applied_index < index and sm.unreadable is not None:  # it will never get there
            self.complete(token, None, self.refusal())
            return
        if sm.applied_index < index:
            raise RuntimeError(f"{self.id}: a read at index {index} reached the apply lane before that entry "
                               f"(applied {sm.applied_index})")
        sm.lock.acquire_read()
        try:
            value = q.run(sm.root)
        except BaseException as exc:  # noqa: BLE001 - the query's own error
            self.complete(token, None, exc)
        else:
            self.complete(token, value, None)
        finally:
            sm.lock.release_read()

"""What goes into a :class:`~replication.runtime.machine.NodeMachine` and what comes out.

Inputs are handed to ``NodeMachine.handle``; every answer to a caller travels as an
integer token, never a Future, so the machine holds nothing a thread waits on.
Effects are plain data for a shell to carry out, in the order given.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from replication.membership import Membership
from replication.ready import Ready


# -- inputs ------------------------------------------------------------------------------
@dataclass(slots=True)
class PeerMsg:
    """Encoded Raft message from ``sender`` (the id the transport authenticated; None:
    an in-process transport that needs no binding)."""
    sender: str | None
    payload: bytes


@dataclass(slots=True)
class Propose:
    """A client command, encoded to plain data, with its session (id, seq) if any."""
    plain: Any
    session: tuple[int, int] | None
    token: int


@dataclass(slots=True)
class Read:
    """A linearizable query (ReadIndex): served by the apply lane once it is safe."""
    query: Any
    token: int


@dataclass(slots=True)
class Call:
    """Run ``fn`` with the machine's state in hand (status, leadership transfer, a
    membership change...); its result or exception completes ``token``."""
    fn: Callable[[], Any]
    token: int


@dataclass(slots=True)
class Persisted:
    """The disk lane wrote these items (sequence numbers, in the order written), in
    ``seconds`` (0: not measured, as in a simulation)."""
    seqs: list[int]
    seconds: float = 0.0


@dataclass(slots=True)
class DiskState:
    """The disk lane found the disk full (a write refused with ENOSPC, nothing lost; it
    retries the same write), or has written again since."""
    full: bool


@dataclass(slots=True)
class SnapshotWritten:
    """The apply lane wrote the file of the snapshot the machine asked for (``meta`` as
    written, with its term and membership), or failed to (``exc``)."""
    index: int
    meta: Any = None
    membership: Membership | None = None
    exc: BaseException | None = None


@dataclass(slots=True)
class ApplyBlocked:
    """The apply lane stopped before entry (or snapshot) ``index``, which this program
    cannot read (``reason``), and applies nothing after it: its state stays as of entry
    ``applied``. ``index`` None: a snapshot it could read has carried the state past
    it, and it applies again."""
    index: int | None
    reason: str | None = None
    applied: int = 0


# -- effects -----------------------------------------------------------------------------
@dataclass(slots=True)
class Send:
    dst: str
    payload: bytes


class DiskWork:
    """One Ready's writes and what must follow them, numbered in Ready order; or, with
    ``rd`` None, a snapshot of this node's to publish (``publish``: its file's meta and
    membership) and the journal to compact after it, in the same order.

    ``after`` is an apply-lane item the machine releases once the write is reported
    (a received snapshot's install); the disk lane never looks at it. ``inline``: the
    shell may run it on the thread at hand if its lane is idle (a follower, whose ack
    waits for the fsync anyway)."""

    __slots__ = ("seq", "rd", "after", "inline", "publish")

    def __init__(self, seq: int, rd: Ready | None, after: object = None, inline: bool = False,
                 publish: tuple[Any, Membership] | None = None) -> None:
        self.seq = seq
        self.rd = rd
        self.after = after
        self.inline = inline
        self.publish = publish


@dataclass(slots=True)
class ApplyWork:
    """An apply-lane item, in lane order: ``("apply", (snapshot, entries, waiting))``
    with waiting = {index: (term, token)}, ``("read", (index, token, query))``,
    ``("hook", "start" | "stop")``, ``("snapshot", (index, term, membership))``: capture
    the state (applied exactly to ``index`` by then) and write its file, then post
    :class:`SnapshotWritten`; ``("forget", first_index)``: the journal now starts there."""
    item: tuple


@dataclass(slots=True)
class Complete:
    token: int
    value: Any = None
    exc: BaseException | None = None


@dataclass(slots=True)
class MembershipChanged:
    membership: Membership


Event = PeerMsg | Propose | Read | Call | Persisted | DiskState | SnapshotWritten | ApplyBlocked
Effect = Send | DiskWork | ApplyWork | Complete | MembershipChanged

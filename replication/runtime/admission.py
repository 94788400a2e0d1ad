"""Which peer messages reach the Raft core: the trust boundary of the peer protocol.

The decoder (:func:`replication.messages.decode`) checks what a message says on its own:
types, ranges, and that no term or index is past MAX_TERM / MAX_INDEX. What only this
node's state can refute is checked here: the sender is the member the transport
authenticated, and a leader's answers do not acknowledge what the leader never sent.
A refused message is dropped, never stepped, and said once a minute per sender and
reason at WARNING, naming both: the node goes on serving. Pure: times are arguments.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from prevalence.text import one_line
from replication.core import RaftNode
from replication.errors import DecodeError
from replication.messages import AppendResp, HeartbeatResp, Message, ReadIndexResp, decode
from replication.ready import Role

log = logging.getLogger("replication.node")

REPEAT_AFTER = 60.0  # seconds before the same sender's same fault is said again


def impossible(core: RaftNode, m: Message, asked: Callable[[bytes], bool] | None = None) -> str | None:
    """What in ``m`` a correct member cannot have sent to this node as it is now, or None.

    Only answers are refutable here. A follower acknowledges only what its leader sent
    it (an index up to the leader's last; the leader never shortens its log in its term),
    and echoes the tick of the heartbeat it answers; a follower asks its reads of its
    leader only, and an answer comes in the term of the question. Taken, an index past the log pinned that follower's progress there for
    the term (no entry ever reached it again), a tick past the leader's clock made its
    lease last until it stepped down, and another member's read answers for far indexes
    were each kept until the node applied that far.

    ``asked(ctx)``: whether this node still waits for the answer to the read ``ctx``
    (None: not checked). A follower that lost a pre-vote, or a pre-candidate, knows no
    leader in the term it asked in, yet its leader's answer is the one it waits for; an
    answer to a read it is waiting for is then taken from whoever sends it (only the
    leader asked, and the members its heartbeats named the read to, know ``ctx``): one
    answer per read asked, never more.
    """
    if m.term < core.term:
        return None  # stale: the core drops it
    t = type(m)
    if t is ReadIndexResp:  # answered in the term it was asked in, which this node is still in
        if (m.term > core.term or core.role not in (Role.FOLLOWER, Role.PRE_CANDIDATE)
                or (core.leader is not None and m.src != core.leader)
                or (asked is not None and not asked(m.ctx))):
            return (f"ReadIndexResp from {m.src[:64]!r} in term {m.term}: this node asked it nothing (a follower "
                    f"asks its leader of its term only; it is {core.role} in term {core.term}, leader {core.leader!r})")
        return None
    if m.term > core.term or core.role != Role.LEADER:
        return None  # the core acts on these by their term alone
    if t is AppendResp and m.index > core.log.last_index():
        return f"AppendResp.index {m.index} is past the leader's last index {core.log.last_index()}"
    if t is HeartbeatResp and m.seq > core.clock:
        return f"HeartbeatResp.seq {m.seq} is past the leader's clock {core.clock}: no heartbeat of it said that"
    return None


class Admission:
    """Decodes a peer's bytes and decides whether the core may step them."""

    def __init__(self, node_id: str, asked: Callable[[bytes], bool] | None = None) -> None:
        self.id = node_id
        self.asked = asked  # ctx -> does this node wait for that read's answer (impossible)
        self.said: dict[tuple[str, str], float] = {}  # (sender, reason) -> when last logged

    def admit(self, sender: str | None, payload: bytes, core: RaftNode, now: float) -> Message | None:
        """The message to step, or None: dropped (and said, see the module docstring).
        ``sender`` is the peer id the transport authenticated (None: an in-process
        transport that needs no binding)."""
        who = "a peer" if sender is None else f"peer {sender[:64]!r}"
        try:
            m = decode(payload)
        except Exception as exc:  # noqa: BLE001 - hostile bytes never stop the loop
            text = one_line(str(exc)) if isinstance(exc, DecodeError) else type(exc).__name__
            # keyed by its first word (the field named), not by the value that varies
            self._say(sender or "", text.split(" ", 1)[0], now, "dropped a malformed peer message from %s: %s",
                      who, text)
            return None
        if sender is not None and not self._bound(sender, m, core, now):
            return None
        why = impossible(core, m, self.asked)
        if why is not None:
            self._say(sender or "", why.split(" ", 1)[0], now, "dropped a message from %s: %s", who, why)
            return None
        return m

    def _bound(self, sender: str, m: Any, core: RaftNode, now: float) -> bool:
        """Peers are bound to the membership: ``m`` must come from ``sender``, and that
        peer must be a member (a node being added is one as soon as its change is in the
        log; a node that knows no member yet, one joining, takes its first leader from
        whoever reaches it)."""
        if m.src != sender:
            why = "sends messages that claim another sender"
        else:
            ms = core.membership
            if ms.is_member(sender) or not (ms.voters or ms.learners):
                return True
            why = "is not a member"
        src = m.src[:64] if type(m.src) is str else f"<{type(m.src).__name__}>"  # never repr() a hostile value
        self._say(sender, why, now, "dropping messages from peer %r: it %s (%s from %r); peers are bound to the "
                  "membership", sender[:64], why, type(m).__name__, src)
        return False

    def _say(self, sender: str, why: str, now: float, fmt: str, *args: Any) -> None:
        key = (sender, why)
        if now - self.said.get(key, -2 * REPEAT_AFTER) < REPEAT_AFTER:
            return
        if len(self.said) > 256:
            self.said.clear()
        self.said[key] = now
        log.warning("%s: " + fmt, self.id, *args)

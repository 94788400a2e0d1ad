"""A node whose program cannot read a committed entry: what it does meanwhile.

In a rolling upgrade the upgraded leader may journal an entry the older release cannot
decode (a transaction class it lacks, or a newer version of one). The apply lane then
stops before it with the state exactly as it was (:class:`~replication.runtime.events.ApplyBlocked`).
The node stays a full Raft member for what needs no decoding, storing the log and
voting, so the quorum survives the upgrade; but it must not lead, since a leader that
cannot apply answers no command and serves only stale state. So, until a newer program
reads the entry (a restart on the newer release, or a snapshot from the leader that it
can read): it starts no election, refuses commands and reads, hands leadership away if it
has it, says why at ERROR (once, then every ``REPEAT`` seconds) and in its status.

Pure, as the machine is: time comes in as an argument.
"""
from __future__ import annotations

import logging
from typing import Any

from replication.core import RaftNode
from replication.errors import CannotApply, RaftError
from replication.ready import Role
from replication.runtime.events import ApplyBlocked

log = logging.getLogger("replication.node")

REPEAT = 300.0  # seconds between two ERROR lines about the same entry


class ApplyGuard:
    """The machine's view of its apply lane being stuck; see the module docstring."""

    def __init__(self, node_id: str, core: RaftNode, tick_interval: float) -> None:
        self.id = node_id
        self.core = core
        self.lapse = 2 * core.cfg.election_tick * tick_interval  # seconds: an offer of leadership lapsed
        self.index: int | None = None  # the entry (or snapshot) not applied, None: applying
        self.reason: str | None = None
        self.applied = 0  # the entry its state is as of meanwhile
        self.said_at: float | None = None
        self.tried: dict[str, float] = {}  # voter -> when leadership was last offered to it
        self.offered: set[str] = set()  # voters offered it since stuck: each said once, not at every retry
        self.hooks_on = False  # the leader hooks (the application's side effects) run

    @property
    def blocked(self) -> bool:
        return self.index is not None

    def update(self, ev: ApplyBlocked, now: float) -> None:
        """News from the apply lane: stuck before ``ev.index``, or applying again."""
        if ev.index == self.index:
            return
        self.index, self.reason, self.applied = ev.index, ev.reason, ev.applied
        self.core.hold_campaign = self.blocked
        self.said_at, self.tried, self.offered = None, {}, set()
        if not self.blocked:
            log.warning("%s: the state is past the entry it could not read: applying and serving again", self.id)
        self.check(now, self.core.role)

    def check(self, now: float, role: Role) -> None:
        """Periodically, while stuck: say so (rate-limited), and leave no leadership here."""
        if not self.blocked:
            return
        if self.said_at is None or now - self.said_at >= REPEAT:
            self.said_at = now
            log.error("%s: cannot apply %s: upgrade this node (to the release that wrote it); until then its "
                      "state stays as of entry %d, it applies nothing more, stores the log and votes, and neither "
                      "campaigns nor leads", self.id, self.reason, self.applied)
        if role == Role.LEADER and self.core.lead_transferee is None:
            self._hand_over(now)

    def _hand_over(self, now: float) -> None:
        """Offer leadership to the most up-to-date voter not offered it lately: one that
        is stuck too ignores the offer, which lapses after an election timeout."""
        st = self.core.status()
        recent = {p for p, at in self.tried.items() if now - at < self.lapse}
        voters = [p for p in st.voters if p != self.id and p not in recent]
        if not voters:
            self.tried = {}
            return
        best = max(voters, key=lambda p: (st.progress[p].match if p in st.progress else -1, p))
        self.tried[best] = now
        try:
            self.core.transfer_leadership(best)
        except RaftError as exc:
            log.warning("%s: cannot hand leadership to %s: %s", self.id, best, exc)
            return
        if best in self.offered:  # every node stuck: offers go round for as long as it lasts
            return
        self.offered.add(best)
        log.warning("%s: handing leadership to %s: this node cannot apply the log past entry %d",
                    self.id, best, self.applied)

    def hooks(self, role: Role) -> str | None:
        """"start" or "stop" when the leader hooks must: they run while this node leads
        and applies. A stuck leader's would act on a state behind the log (the grid's
        controller pushing it to the PCs), even if no voter can take over."""
        want = role == Role.LEADER and not self.blocked
        if want == self.hooks_on:
            return None
        self.hooks_on = want
        return "start" if want else "stop"

    def refusal(self) -> CannotApply:
        """The answer to a command or linearizable read while stuck."""
        core = self.core
        hint = core.lead_transferee or (core.leader if core.leader != self.id else None)
        return CannotApply(f"node {self.id!r} cannot apply the log past entry {self.applied} ({self.reason}): "
                           "upgrade this node", hint)

    def status(self) -> dict[str, Any] | None:
        """For ``status``: under the node's ``conditions``, None while it applies."""
        return None if not self.blocked else {"index": self.index, "reason": self.reason, "applied": self.applied}


def past_state(node: Any, index: int) -> CannotApply | None:
    """The refusal of a read of the log from ``index`` (a subscription's long poll) on a
    node (``replication.node.Node``) whose state is stuck before it: it will never get
    there, and a poll answered "nothing new" meanwhile freezes its subscriber."""
    sm = node.sm
    if getattr(sm, "unreadable", None) is None or index <= sm.applied_index:
        return None
    return node.machine.apply_guard.refusal()

"""A command committed while its leader cannot apply the log: its outcome is the other
nodes', so a command sent without a session must not be answered as if nothing had
been proposed.

A leader whose apply lane meets an entry its program cannot read (an older release
elected just before the upgraded leader's entry reached its apply lane) still
replicates and commits the commands proposed before it knew: the other nodes apply
them. It answered each waiting caller CannotApply, a ProposalRefused, which the
service turned into ["not_leader", ...]: the reply after which a client retries a
command elsewhere, so a command without a session applied twice, and an admin's
membership change was reported as not made though it was committed."""
from __future__ import annotations

from concurrent.futures import Future

import msgpack

import rpc.service as service
from prevalence.codec import CODEC
from prevalence.entry import Entry, EntryKind
from prevalence.state import StateMachine, encode_command
from replication.apply import Applier
from replication.errors import CannotApply
from tests.prevalence.domain import Put, Store

NEWER = ["test.Put", 9, {"key": "a", "value": 2}]  # a version of Put this program does not know


def _waiter_refusal() -> BaseException:
    """What the apply lane tells the caller of a committed command after the entry it
    cannot read: entry 1 unreadable, entry 2 the caller's, committed."""
    told: dict = {}
    applier = Applier("n1", StateMachine(Store()), None, lambda token, value, exc: told.__setitem__(token, exc))
    entries = [Entry(1, 1, int(EntryKind.COMMAND), encode_command(1, NEWER)),
               Entry(2, 1, int(EntryKind.COMMAND), encode_command(2, CODEC.to_plain(Put("b", 1))))]
    applier.apply(None, entries, {2: (1, 7)})
    assert isinstance(told[7], CannotApply)
    return told[7]


class _StuckLeader:
    """A node whose proposals commit, then come back as the apply lane answers them."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def _failed(self) -> Future:
        f: Future = Future()
        f.set_exception(self.exc)
        return f

    def submit(self, tx, session=None) -> Future:
        return self._failed()

    def change_membership(self, change, timeout=10.0):
        raise self.exc


class _Host:
    def __init__(self, node) -> None:
        self.node = node

    def address_of(self, node_id):
        return f"{node_id}:1" if node_id else None


def test_a_command_without_a_session_committed_on_a_stuck_leader_is_unknown_not_retryable():
    svc = service.ClientService(_Host(_StuckLeader(_waiter_refusal())), "client")
    reply = msgpack.unpackb(svc.exposed_execute(CODEC.dumps(Put("b", 1))))
    assert reply[0] not in ("not_leader", "unavailable"), reply  # a retry would apply it twice
    assert reply[0] == "error" and "unknown" in reply[1], reply


def test_a_session_command_is_still_sent_to_the_leader_where_its_number_finds_the_outcome():
    svc = service.ClientService(_Host(_StuckLeader(_waiter_refusal())), "client")
    reply = msgpack.unpackb(svc.exposed_execute(CODEC.dumps(Put("b", 1)), 1 << 62, 1))
    assert reply[0] == "not_leader", reply


def test_a_membership_change_committed_on_a_stuck_leader_may_have_taken_effect():
    svc = service.ClientService(_Host(_StuckLeader(_waiter_refusal())), "admin", admin=True)
    reply = msgpack.unpackb(svc.exposed_change_membership("add_learner", "n4", "127.0.0.1:7104"))
    assert reply[0] == "unavailable" and "may still take effect" in reply[1], reply


def test_a_command_refused_before_it_was_proposed_is_still_retryable():
    """The machine refuses a proposal outright once it knows it is stuck: nothing was
    proposed, so "not_leader" (retry at the hint) stays the answer."""
    from replication.runtime.unreadable import ApplyGuard

    class _Core:
        lead_transferee, leader = "n2", "n1"

    guard = ApplyGuard.__new__(ApplyGuard)
    guard.id, guard.core, guard.applied, guard.reason = "n1", _Core(), 0, "entry 1: newer"
    svc = service.ClientService(_Host(_StuckLeader(guard.refusal())), "client")
    reply = msgpack.unpackb(svc.exposed_execute(CODEC.dumps(Put("b", 1))))
    assert reply[0] == "not_leader" and reply[1] == "n2", reply


def test_a_caller_whose_index_another_leaders_entry_took_hears_it_was_lost():
    """Not committed, so retryable: the entry at its index is another term's."""
    from replication.apply import EntryLost

    told: dict = {}
    applier = Applier("n1", StateMachine(Store()), None, lambda token, value, exc: told.__setitem__(token, exc))
    entries = [Entry(1, 2, int(EntryKind.COMMAND), encode_command(1, NEWER)),
               Entry(2, 2, int(EntryKind.COMMAND), encode_command(2, CODEC.to_plain(Put("b", 1))))]
    applier.apply(None, entries, {2: (1, 7)})
    assert isinstance(told[7], EntryLost)

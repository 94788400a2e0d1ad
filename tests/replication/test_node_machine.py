"""NodeMachine fed events by hand: its decisions, with no thread, clock or disk.

Each test plays the shell: it hands the machine events with the time, and carries out
(or inspects) the effects, as the threaded Node and a simulator do.
"""
from __future__ import annotations

import random

import pytest

from prevalence.codec import CODEC
from replication.clock import JournalClock
from replication.config import RaftConfig
from replication.core import RaftNode
from replication.errors import NotLeader, RaftError
from replication.membership import Membership
from replication.messages import Append, AppendResp, Heartbeat, PreVote, PreVoteResp, Vote, VoteResp, decode, encode
from replication.ready import Role
from replication.runtime.events import (
    ApplyWork, Call, Complete, DiskWork, MembershipChanged, PeerMsg, Persisted, Propose, Read, Send,
)
from replication.runtime.machine import NodeMachine
from replication.storage import MemoryStorage
from tests.prevalence.domain import Add

TICK = 0.025
WALL = 1_700_000_000_000_000


def machine(node_id: str = "n1", voters: tuple[str, ...] = ("n1",), **kw) -> NodeMachine:
    storage = MemoryStorage(Membership(voters))
    cfg = RaftConfig(election_tick=10, heartbeat_tick=5)
    cfg.async_storage_writes = True
    core = RaftNode(node_id, storage, cfg, random.Random(1))
    opts = dict(tick_interval=TICK, max_batch=512, max_entry_bytes=1 << 20, slow_disk_handover=None)
    opts.update(kw)
    return NodeMachine(node_id, core, clock=JournalClock(node_id, 500_000), rng=random.Random(2), now=0.0, **opts)


class Shell:
    """Carries out a machine's disk work at once (a perfect disk) and keeps the rest."""

    def __init__(self, m: NodeMachine) -> None:
        self.m, self.now = m, 0.0
        self.sent: list = []
        self.applied: list = []
        self.done: dict[int, Complete] = {}
        self.disk: list[DiskWork] = []

    def step(self, events=(), *, tick: bool = False, write: bool = True) -> list:
        effects = self.m.handle(list(events), self.now, WALL + int(self.now * 1e6), tick)
        self._take(effects)
        while write and self.disk:
            self.write()
        return effects

    def _take(self, effects: list) -> None:
        for eff in effects:
            if type(eff) is Send:
                self.sent.append(decode(eff.payload))
            elif type(eff) is DiskWork:
                self.disk.append(eff)
            elif type(eff) is ApplyWork:
                self.applied.append(eff.item)
            elif type(eff) is Complete:
                self.done[eff.token] = eff

    def write(self) -> None:
        """The disk lane: write the oldest item, send what it promises, report it."""
        work = self.disk.pop(0)
        st, rd = self.m.storage, work.rd
        if rd.snapshot is not None:  # as replication.persist.write_batch, in its order
            st.apply_snapshot(rd.snapshot)
        if rd.truncate_from is not None:
            st.truncate(rd.truncate_from)
        if rd.entries:
            st.append(rd.entries)
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)
        self.sent.extend(rd.persisted_messages)
        self._take(self.m.handle([Persisted([work.seq])], self.now, WALL, False))

    def elect_with(self, voter: str) -> None:
        """Win an election of three with ``voter`` granting every (pre)vote by hand."""
        me = self.m.id
        while self.m.role != Role.LEADER:
            self.now += TICK
            self.step(tick=True)
            while self.sent:
                msg = self.sent.pop(0)
                if type(msg) in (Vote, PreVote) and msg.dst == voter:
                    resp = VoteResp if type(msg) is Vote else PreVoteResp
                    self.step([PeerMsg(voter, encode(resp(voter, me, msg.term, False)))])
            assert self.now < 5.0, "no election"

    def elect(self) -> None:
        while self.m.role != Role.LEADER:
            self.now += TICK
            self.step(tick=True)
            assert self.now < 5.0, "no election"


def test_proposals_queued_together_are_one_batch_one_disk_item_and_one_apply():
    m = machine()
    sh = Shell(m)
    sh.elect()
    applied_before = len(sh.applied)
    tokens = list(range(100, 110))
    sh.step([Propose(CODEC.to_plain(Add("x", 1)), (7, k + 1), t) for k, t in enumerate(tokens)], write=False)
    assert len(sh.disk) == 1 and len(sh.disk[0].rd.entries) == 10
    assert not sh.disk[0].inline  # a leader writes on the lane thread, in parallel with replicating
    sh.write()
    applies = [it for it in sh.applied[applied_before:] if it[0] == "apply"]
    assert len(applies) == 1
    _snap, entries, waiting = applies[0][1]
    assert [e.index for e in entries][-10:] == sorted(waiting)
    assert sorted(tok for _term, tok in waiting.values()) == tokens


def test_a_command_that_cannot_be_journaled_is_answered_alone():
    m = machine()
    sh = Shell(m)
    sh.elect()
    sh.step([Propose(CODEC.to_plain(Add("x", 1)), (2**64, 1), 1), Propose(CODEC.to_plain(Add("x", 1)), (5, 1), 2),
             Propose(CODEC.to_plain(Add("y" * 5000, 1)), None, 3)])
    assert "cannot journal this command" in str(sh.done[1].exc)
    assert "over the limit" not in str(sh.done[1].exc)
    assert 2 not in sh.done  # the valid one is on its way
    m2 = machine(max_entry_bytes=1000)
    sh2 = Shell(m2)
    sh2.elect()
    sh2.step([Propose(CODEC.to_plain(Add("y" * 5000, 1)), None, 3)])
    assert "over the limit of 1000 bytes" in str(sh2.done[3].exc)


def test_a_follower_writes_inline_and_applies_only_after_that_write():
    m = machine("n2", ("n1", "n2", "n3"))
    sh = Shell(m)
    from prevalence.entry import Entry, EntryKind
    e1 = Entry(1, 1, int(EntryKind.NOOP), b"")
    sh.step([PeerMsg("n1", encode(Append("n1", "n2", 1, 0, 0, [e1], 0)))], write=False)
    assert len(sh.disk) == 1 and sh.disk[0].inline
    assert not sh.sent  # the ack waits for the write
    sh.write()
    assert [type(x) for x in sh.sent] == [AppendResp] and sh.sent[0].index == 1
    e2 = Entry(2, 1, int(EntryKind.NOOP), b"")
    effects = sh.step([PeerMsg("n1", encode(Append("n1", "n2", 1, 1, 1, [e2], 2)))], write=False)
    kinds = [type(e) for e in effects]
    assert kinds.index(DiskWork) < kinds.index(ApplyWork), kinds  # apply after the write it follows


def test_durability_reports_out_of_sequence_stop_the_machine():
    m = machine()
    sh = Shell(m)
    sh.elect()
    sh.step([Propose(CODEC.to_plain(Add("x", 1)), None, 1)], write=False)
    seq = sh.disk[0].seq
    with pytest.raises(RaftError, match="out of order"):
        m.handle([Persisted([seq + 1])], sh.now, WALL)


def test_messages_are_admitted_only_from_the_authenticated_member_they_claim():
    m = machine("n2", ("n1", "n2", "n3"))
    sh = Shell(m)
    forged = encode(Heartbeat("evil", "n2", 50, 0))
    sh.step([PeerMsg("evil", forged)])
    assert m.core.term == 0  # a non-member moves nobody
    claims = encode(Heartbeat("n1", "n2", 50, 0))
    sh.step([PeerMsg("n3", claims)])
    assert m.core.term == 0  # n3 speaking as n1
    sh.step([PeerMsg("n1", claims)])
    assert m.core.term == 50 and m.core.leader == "n1"
    sh.step([PeerMsg("n1", b"\xc1 not a message")])  # dropped, the machine goes on
    assert m.core.term == 50


def test_a_read_is_released_after_its_entries_and_a_deposed_leader_fails_its_reads():
    m = machine()
    sh = Shell(m)
    sh.elect()
    sh.step([Read("q", 41)])
    reads = [it for it in sh.applied if it[0] == "read"]
    assert reads and reads[-1][1][1] == 41
    position = sh.applied.index(reads[-1])
    applied_upto = max((e.index for it in sh.applied[:position] if it[0] == "apply" for e in it[1][1]), default=0)
    assert reads[-1][1][0] <= applied_upto  # never ahead of the apply lane

    m3 = machine("n1", ("n1", "n2", "n3"))
    sh3 = Shell(m3)
    sh3.elect_with("n2")
    sh3.step([Read("q", 42)])
    assert 42 not in sh3.done  # waits for a quorum's heartbeat answers
    sh3.step([PeerMsg("n2", encode(Heartbeat("n2", "n1", m3.core.term + 1, 0)))])
    assert m3.role != Role.LEADER
    assert isinstance(sh3.done[42].exc, NotLeader)
    assert ("hook", "stop") in sh3.applied


def test_calls_run_in_the_machine_and_answer_their_token():
    m = machine()
    sh = Shell(m)
    sh.step([Call(lambda: m.core.term + 1, 5), Call(lambda: 1 / 0, 6)])
    assert sh.done[5].value == 1 and sh.done[5].exc is None
    assert isinstance(sh.done[6].exc, ZeroDivisionError)


def test_an_idle_leader_wakes_per_heartbeat_and_sooner_when_a_commit_is_unsent():
    m = machine()
    sh = Shell(m)
    sh.elect()
    assert m.next_deadline() == pytest.approx(m.next_tick + 4 * TICK)  # heartbeat_tick 5
    f = machine("n2", ("n1", "n2", "n3"))
    assert f.next_deadline() == pytest.approx(f.next_tick + 2 * TICK)  # election_tick // 3
    sh.now += 10.0  # paused (a frozen VM): the ticks due are not run as a burst
    sh.step(tick=True)
    assert m.next_tick == pytest.approx(sh.now + TICK)


def test_halting_answers_every_waiting_caller():
    m = machine()
    sh = Shell(m)
    sh.elect()
    sh.step([Propose(CODEC.to_plain(Add("x", 1)), None, 1)], write=False)
    stopped = RuntimeError("stopped")
    done = {e.token: e for e in m.halt(stopped)}
    assert done[1].exc is stopped


def test_a_membership_change_is_published_once_applied_to_the_log():
    m = machine()
    sh = Shell(m)
    sh.elect()
    from replication.membership import ConfigChange
    effects = sh.step([Call(lambda: m.core.propose_config_change(ConfigChange.add_learner("n4")), 9)])
    assert sh.done[9].exc is None
    changed = [e for e in effects if type(e) is MembershipChanged]
    assert changed and "n4" in changed[-1].membership.learners


def test_the_machine_imports_no_clock_thread_file_or_socket():
    """Time, randomness and I/O reach the machine only as arguments (RUNTIME.md rule 7):
    what it imports is what a simulator can drive."""
    import ast
    import pathlib

    import replication.runtime as pkg

    forbidden = {"threading", "time", "os", "socket", "rpyc", "queue", "concurrent", "subprocess", "select"}
    for path in pathlib.Path(pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"


def test_a_full_disk_refuses_commands_hands_leadership_over_and_resumes():
    from replication.errors import NoDiskSpace
    from replication.runtime.events import DiskState

    m3 = machine("n1", ("n1", "n2", "n3"))
    sh = Shell(m3)
    sh.elect_with("n2")
    sh.step([PeerMsg("n2", encode(AppendResp("n2", "n1", m3.core.term, m3.core.log.last_index())))])
    sh.step([DiskState(True), Propose(CODEC.to_plain(Add("x", 1)), (3, 1), 7)])
    assert isinstance(sh.done[7].exc, NoDiskSpace) and "disk is full" in str(sh.done[7].exc)
    assert m3.core.lead_transferee == "n2"  # handed to a voter that can write, at once
    sh.step([DiskState(False), Propose(CODEC.to_plain(Add("x", 1)), (3, 1), 8)])
    assert 8 not in sh.done or not isinstance(sh.done[8].exc, NoDiskSpace)


def test_a_received_snapshot_is_installed_from_its_bytes_even_once_its_file_was_pruned(tmp_path):
    """The disk lane runs ahead of the apply lane: by the time an install is applied, a
    newer snapshot may have pruned its file (keep_snapshots=1). The runtime simulator met
    this as a missing file; the bytes received are what the state is built from."""
    from prevalence.snapshots import SnapshotMeta as FileMeta, encode_file, serialize
    from prevalence.state import StateMachine
    from replication.apply import Applier
    from replication.journal_storage import JournalStorage
    from replication.messages import SnapshotMeta
    from replication.storage import Snapshot
    from tests.prevalence.domain import Store

    st = JournalStorage(str(tmp_path / "n2"), initial_membership=Membership(("n1", "n2", "n3")), keep_snapshots=1)
    root = Store()
    root.values["x"] = 41
    body, serializer = serialize(root)

    def snap(index: int) -> Snapshot:
        meta = FileMeta(index=index, term=1, timestamp_us=5, serializer=serializer,
                        extra={"membership": Membership(("n1", "n2", "n3")).to_wire()})
        return Snapshot(SnapshotMeta(index, 1, Membership(("n1", "n2", "n3"))), b"".join(encode_file(meta, body)))

    first, newer = snap(31), snap(40)
    st.apply_snapshot(first)
    st.apply_snapshot(newer)  # keep_snapshots=1: the file of 31 is gone
    assert 31 not in st.snapshots.indexes()
    sm = StateMachine(Store())
    done = []
    Applier("n2", sm, st, lambda *a: done.append(a)).apply(first, [], {})
    assert sm.applied_index == 31 and sm.root.values["x"] == 41

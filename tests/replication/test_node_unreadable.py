"""A node whose program cannot read a committed entry (a newer release wrote it, in a
rolling upgrade): it stops applying before it with its state unchanged, does not stop
or crash-loop, keeps storing and voting, neither campaigns nor leads, refuses commands
and reads, says so, and applies on once a program that can read the entry runs it.

The older release is played by entries naming a version, or a class, that the test
domain does not have."""
from __future__ import annotations

import logging
import random
import sys
import types

import pytest

from prevalence.codec import CODEC
from prevalence.entry import Entry, EntryKind
from prevalence.state import StateMachine, encode_command
from replication.apply import Applier
from replication.errors import CannotApply
from replication.journal_storage import JournalStorage
from replication.membership import Membership
from replication.messages import AppendResp, HardState, Heartbeat, HeartbeatResp, PreVote, TimeoutNow, Vote, encode
from replication.ready import Role
from replication.runtime.assemble import NodeOptions, assemble
from replication.runtime.events import ApplyBlocked, Propose, Read
from prevalence.fs import OS
from tests.prevalence.domain import Add, Get, Put, Store
from tests.replication.test_node_machine import TICK, PeerMsg, Shell, machine

TS = 1_700_000_000_000_000
NEWER = ["test.Put", 9, {"key": "a", "value": 2}]  # a version of Put this program does not know
UNKNOWN = ["upgrade.Future", 1, {"key": "a"}]      # a class this program does not have


def cmd(index: int, plain: list, term: int = 1) -> Entry:
    return Entry(index, term, int(EntryKind.COMMAND), encode_command(TS + index, plain))


def test_the_applier_stops_before_an_entry_it_cannot_read_with_the_state_unchanged():
    sm = StateMachine(Store())
    done: dict = {}
    applier = Applier("n2", sm, None, lambda token, value, exc: done.__setitem__(token, (value, exc)))
    entries = [cmd(1, CODEC.to_plain(Put("a", 1))), cmd(2, NEWER), cmd(3, CODEC.to_plain(Put("b", 3)))]
    news = applier.apply(None, entries, {2: (1, 20), 3: (1, 30)})
    assert sm.applied_index == 1 and sm.root.values == {"a": 1} and sm.timestamp_us == TS + 1
    assert isinstance(news, ApplyBlocked) and news.index == 2
    assert "test.Put version 9" in news.reason and "only knows versions up to 1" in news.reason
    assert isinstance(done[20][1], CannotApply) and isinstance(done[30][1], CannotApply)
    # later entries are skipped, whatever they are, and it is no news
    assert applier.apply(None, [cmd(4, UNKNOWN), cmd(5, CODEC.to_plain(Put("c", 5)))], {}) is None
    assert sm.applied_index == 1 and sm.root.values == {"a": 1}
    # a read or a snapshot asked before the machine heard of it is refused, not a crash
    applier.serve_read(3, 40, Get("a"))
    assert isinstance(done[40][1], CannotApply)
    assert isinstance(applier.write_snapshot(3, 1, Membership(("n1",))).exc, CannotApply)


def test_an_unknown_class_names_itself_in_the_news():
    sm = StateMachine(Store())
    news = Applier("n2", sm, None, lambda *a: None).apply(None, [cmd(1, UNKNOWN)], {})
    assert news.index == 1 and "upgrade.Future version 1" in news.reason and "unknown type" in news.reason
    assert sm.applied_index == 0


def _journal(path, entries: list[Entry], commit: int) -> None:
    st = JournalStorage(str(path), initial_membership=Membership(("n1", "n2", "n3")))
    st.append(entries)
    st.set_hard_state(HardState(1, "n1", commit))
    st.close()


def test_a_node_restarted_on_the_older_release_starts_stuck_before_the_entry_instead_of_crash_looping(tmp_path):
    entries = [cmd(1, CODEC.to_plain(Put("a", 1))), cmd(2, NEWER), cmd(3, CODEC.to_plain(Add("a", 1)))]
    _journal(tmp_path / "n2", entries, commit=3)
    parts = assemble("n2", str(tmp_path / "n2"), Store, Membership(("n1", "n2", "n3")), NodeOptions(),
                     fs=OS, rng=random.Random(1), now=0.0)
    try:
        assert parts.sm.applied_index == 1 and parts.sm.root.values == {"a": 1}
        assert parts.machine.apply_guard.status()["index"] == 2
        assert parts.core.hold_campaign
        assert parts.core.log.last_index() == 3  # the log is kept whole, for the newer release
    finally:
        parts.storage.close()


def test_the_newer_release_applies_on_from_where_the_older_one_stopped(tmp_path):
    """What the older release left is plain journal: a program that knows the class
    replays it all. Played here by registering the class the entry names."""
    import dataclasses

    entries = [cmd(1, CODEC.to_plain(Put("a", 1))), cmd(2, ["test.Later", 1, {"n": 7}])]
    _journal(tmp_path / "n2", entries, commit=2)
    args = ("n2", str(tmp_path / "n2"), Store, Membership(("n1", "n2", "n3")), NodeOptions())
    parts = assemble(*args, fs=OS, rng=random.Random(1), now=0.0)
    assert parts.sm.applied_index == 1
    parts.storage.close()

    @dataclasses.dataclass(frozen=True)
    class Later(__import__("prevalence").Transaction, name="test.Later"):
        n: int

        def execute(self, root, ctx):
            root.values["later"] = self.n

    try:
        parts = assemble(*args, fs=OS, rng=random.Random(1), now=0.0)
        assert parts.sm.applied_index == 2 and parts.sm.root.values == {"a": 1, "later": 7}
        assert parts.machine.apply_guard.status() is None and not parts.core.hold_campaign
        parts.storage.close()
    finally:
        del CODEC._classes["test.Later"]


def _blocked_follower(caplog):
    m = machine("n2", ("n1", "n2", "n3"))
    sh = Shell(m)
    with caplog.at_level(logging.ERROR, logger="replication.node"):
        sh.step([ApplyBlocked(7, "entry 7 (upgrade.Label version 2): written as version 2", 6)])
    return m, sh


def test_a_stuck_node_votes_but_never_campaigns_and_refuses_commands_and_reads(caplog):
    m, sh = _blocked_follower(caplog)
    for _ in range(200):  # 5 s: many election timeouts
        sh.now += TICK
        sh.step(tick=True)
    assert m.role == Role.FOLLOWER
    assert not [x for x in sh.sent if type(x) in (PreVote, Vote)]
    sh.step([PeerMsg("n1", encode(TimeoutNow("n1", "n2", m.core.term)))])  # a transfer to it
    assert m.role == Role.FOLLOWER and not [x for x in sh.sent if type(x) in (PreVote, Vote)]
    sh.step([PeerMsg("n3", encode(Vote("n3", "n2", m.core.term + 1, 0, 0)))])
    assert any(type(x).__name__ == "VoteResp" and not x.reject for x in sh.sent)  # it still votes
    sh.step([Propose(CODEC.to_plain(Add("x", 1)), (3, 1), 5), Read(Get("x"), 6)])
    for token in (5, 6):
        assert isinstance(sh.done[token].exc, CannotApply) and "upgrade this node" in str(sh.done[token].exc)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors  # rate-limited: once, then every REPEAT s
    assert "entry 7" in errors[0] and "upgrade.Label version 2" in errors[0] and "upgrade this node" in errors[0]
    assert m.apply_guard.status() == {"index": 7, "reason": "entry 7 (upgrade.Label version 2): written as version 2",
                                      "applied": 6}
    assert "as of entry 6" in errors[0]


def test_it_campaigns_again_once_past_the_entry(caplog):
    m, sh = _blocked_follower(caplog)
    sh.step([ApplyBlocked(None)])
    assert not m.core.hold_campaign and m.apply_guard.status() is None
    for _ in range(40):  # 1 s: an election timeout at least
        sh.now += TICK
        sh.step(tick=True)
    assert [x for x in sh.sent if type(x) is PreVote]


def test_a_stuck_leader_hands_leadership_to_another_voter_and_offers_it_round(caplog):
    m = machine("n1", ("n1", "n2", "n3"))
    sh = Shell(m)
    sh.elect_with("n2")
    for p in ("n2", "n3"):
        sh.step([PeerMsg(p, encode(AppendResp(p, "n1", m.core.term, m.core.log.last_index())))])
    sh.step([ApplyBlocked(3, "entry 3 (upgrade.Label version 2): ...", 2)])
    first = m.core.lead_transferee
    assert first in ("n2", "n3")
    while m.core.lead_transferee is not None:  # the offer lapses: that voter is stuck too
        sh.now += TICK
        sh.step(tick=True)
    sh.now += 0.2
    sh.step(tick=True)
    assert m.core.lead_transferee not in (None, first)  # the other voter next
    assert len([r for r in caplog.records if "handing leadership" in r.getMessage()]) == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="replication.node"):
        for _ in range(200):  # 5 s of offers going round, every voter stuck
            sh.now += TICK
            sh.sent.clear()
            sh.step(tick=True)
            beats = [x for x in sh.sent if type(x) is Heartbeat]  # answered: the voters are up
            sh.step([PeerMsg(x.dst, encode(HeartbeatResp(x.dst, "n1", x.term, x.ctx, x.seq))) for x in beats])
    assert m.role == Role.LEADER
    assert not [r for r in caplog.records if "handing leadership" in r.getMessage()]  # said once per voter


def _newer_snapshot(index: int):
    """A snapshot from the leader whose root holds a class this program does not have."""
    from prevalence.snapshots import SnapshotMeta as FileMeta, encode_file, serialize
    from replication.messages import SnapshotMeta
    from replication.storage import Snapshot

    mod = types.ModuleType("release_gone")
    exec("class Thing:\n    pass\n", mod.__dict__)
    sys.modules["release_gone"] = mod
    try:
        root = Store()
        root.values["t"] = mod.Thing()
        body, serializer = serialize(root)
    finally:
        del sys.modules["release_gone"]
    meta = FileMeta(index=index, term=1, timestamp_us=5, serializer=serializer,
                    extra={"membership": Membership(("n1", "n2", "n3")).to_wire()})
    return Snapshot(SnapshotMeta(index, 1, Membership(("n1", "n2", "n3"))), b"".join(encode_file(meta, body)))


def test_a_snapshot_from_the_leader_that_this_program_cannot_unpickle_leaves_the_state_as_it_was():
    snap = _newer_snapshot(40)
    sm = StateMachine(Store(), applied_index=12)
    sm.root.values["x"] = 1
    news = Applier("n2", sm, None, lambda *a: None).apply(snap, [cmd(41, CODEC.to_plain(Put("y", 1)))], {})
    assert news.index == 40 and news.applied == 12 and "cannot unpickle" in news.reason
    assert sm.applied_index == 12 and sm.root.values == {"x": 1}


def test_restarted_on_the_older_release_over_such_a_snapshot_it_starts_stuck_with_no_state(tmp_path):
    """The journal before that snapshot is gone (it replaced the log), so no state this
    program can read exists: the node starts anyway, stuck before the snapshot, to keep
    storing and voting, rather than refuse to start at every restart."""
    st = JournalStorage(str(tmp_path / "n2"), initial_membership=Membership(("n1", "n2", "n3")))
    st.apply_snapshot(_newer_snapshot(40))
    st.append([cmd(41, CODEC.to_plain(Put("y", 1)))])
    st.set_hard_state(HardState(1, "n1", 41))
    st.close()
    parts = assemble("n2", str(tmp_path / "n2"), Store, Membership(("n1", "n2", "n3")), NodeOptions(),
                     fs=OS, rng=random.Random(1), now=0.0)
    try:
        assert parts.sm.applied_index == 0 and parts.sm.unreadable.snapshot
        assert parts.machine.apply_guard.status()["index"] == 40 and parts.core.hold_campaign
        assert parts.core.log.last_index() == 41 and parts.storage.first_index() == 41
    finally:
        parts.storage.close()


def _wait(what: str, check, timeout: float = 5.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"no {what} within {timeout} s")


def test_when_every_node_is_stuck_nothing_is_lost_and_the_first_upgraded_node_takes_over(tmp_path):
    """In-process nodes share one program, so an entry it cannot read stops all of them:
    the case where every node runs the older release. Nobody fails, nobody applies past
    it, the stuck leader refuses what it cannot answer (a "leader" read too), nobody else
    campaigns; the first node restarted on a program that reads the entry applies it
    and is handed the leadership."""
    import dataclasses

    import prevalence
    from tests.replication.test_node import Cluster

    c = Cluster(tmp_path)
    try:
        lead = c.leader()
        lead.execute(Put("a", 1))
        token, fut = lead._callers.take()
        lead._inbox.put(Propose(["test.Later2", 1, {"n": 7}], None, token))  # as a newer release would
        lead._kick()
        with pytest.raises(CannotApply, match="upgrade this node"):
            fut.result(5)
        index = lead.status()["last_index"]
        for n in c.net.nodes.values():
            _wait("stuck status", lambda: n.status()["apply_blocked"])
            st = n.status()
            assert st["apply_blocked"]["index"] == index and st["applied_index"] == index - 1
        # a voter that had not met the entry yet may have taken an offer of leadership:
        # once all are stuck, nobody campaigns and the leader's offers lapse
        import time
        time.sleep(0.6)
        lead = c.leader()
        with pytest.raises(CannotApply):
            lead.execute(Put("b", 1), timeout=5)
        with pytest.raises(CannotApply):
            lead.query(Get("a"), linearizable=False)  # its state is stuck: no "leader" read
        follower = next(n for n in c.net.nodes.values() if n is not lead)
        assert follower.query(Get("a"), linearizable=False) == 1  # a local read: behind, as documented
        assert all(n._failed is None for n in c.net.nodes.values())
        assert [n for n in c.net.nodes.values() if n.is_leader] == [lead]

        @dataclasses.dataclass(frozen=True)
        class Later2(prevalence.Transaction, name="test.Later2"):
            n: int

            def execute(self, root, ctx):
                root.values["later"] = self.n

        c.kill(follower.id)  # restarted on a program that reads the entry
        upgraded = c.start(follower.id)
        assert upgraded.status()["apply_blocked"] is None
        _wait("the upgraded node to lead", lambda: upgraded.is_leader)
        assert upgraded.execute(Put("b", 2)) == 2
        assert upgraded.query(Get("later")) == 7
    finally:
        c.stop()
        CODEC._classes.pop("test.Later2", None)


def test_a_stuck_leader_stops_its_side_effects_until_it_applies_again():
    """The leader's hooks (the application's controller pushing the state to the PCs)
    would push a state that is behind the log: they stop while it is stuck, even when
    no voter can take over, and start again once it applies."""
    m = machine("n1", ("n1", "n2", "n3"))
    sh = Shell(m)
    sh.elect_with("n2")
    assert ("hook", "start") in sh.applied
    sh.applied.clear()
    sh.step([ApplyBlocked(3, "entry 3 (upgrade.Label version 2): ...", 2)])
    assert sh.applied == [("hook", "stop")]
    sh.step([ApplyBlocked(None)])
    assert sh.applied == [("hook", "stop"), ("hook", "start")]

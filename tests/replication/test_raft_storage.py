"""MemoryStorage, the unstable log, progress and membership bookkeeping."""
from __future__ import annotations

import pytest

from prevalence.entry import Entry, EntryKind
from replication.errors import CompactedError, ConfigChangeRefused, DecodeError, RaftError, UnavailableError
from replication.membership import ConfigChange, ConfigHistory, Membership, apply_change, decode_membership, encode_membership
from replication.messages import HardState, SnapshotMeta
from replication.progress import Inflights, Progress, ProgressState, committed_index, vote_result
from replication.raft_log import RaftLog
from replication.storage import MemoryStorage

M = Membership(("a", "b", "c"))


def ents(lo, hi, term=1, size=1):
    return [Entry(i, term, 1, b"x" * size) for i in range(lo, hi + 1)]


def test_memory_storage_ranges_and_errors():
    st = MemoryStorage(M)
    assert (st.first_index(), st.last_index(), st.term(0)) == (1, 0, 0)
    st.append(ents(1, 10))
    assert st.entries(3, 6, None) == ents(3, 5)
    assert st.entries(3, 6, 1) == ents(3, 3)  # max bytes, but at least one
    assert len(st.entries(3, 6, 2)) == 2
    with pytest.raises(UnavailableError):
        st.entries(5, 12, None)
    with pytest.raises(UnavailableError):
        st.term(11)
    st.create_snapshot(SnapshotMeta(6, 1, M), b"s")
    st.compact(6)
    assert (st.first_index(), st.last_index(), st.term(6)) == (7, 10, 1)
    with pytest.raises(CompactedError) as exc:
        st.term(5)
    assert exc.value.first_index == 7
    with pytest.raises(CompactedError):
        st.entries(6, 8, None)
    with pytest.raises(RaftError):
        st.compact(9)  # past the snapshot
    st.truncate(9)
    assert st.last_index() == 8
    st.append(ents(8, 9, term=2))  # overlap replaces
    assert [e.term for e in st.entries(7, 10, None)] == [1, 2, 2]
    with pytest.raises(RaftError, match="gap"):
        st.append(ents(20, 21))


def test_memory_storage_apply_snapshot_replaces_log():
    st = MemoryStorage(M)
    st.append(ents(1, 5))
    snap_m = Membership(("a", "b"), ("c",))
    from replication.messages import Snapshot
    st.apply_snapshot(Snapshot(SnapshotMeta(20, 3, snap_m), b"data"))
    assert (st.first_index(), st.last_index(), st.term(20)) == (21, 20, 3)
    assert st.initial_state() == (HardState(), snap_m)


def test_raft_log_unstable_shadows_storage_and_reports_truncation():
    st = MemoryStorage(M)
    st.append(ents(1, 5))
    log = RaftLog(st)
    assert log.offset == 6 and log.last_index() == 5
    log.append(ents(4, 6, term=2))  # conflicting suffix from 4
    assert log.offset == 4 and log.term(4) == 2 and log.term(3) == 1
    assert [e.term for e in log.slice(2, 7, None)] == [1, 1, 2, 2, 2]
    log.stable_to(6, 1)  # stale term: ignored
    assert log.unstable
    st.truncate(4)
    st.append(log.unstable)
    log.stable_to(6, 2)
    assert not log.unstable and log.offset == 7


def test_raft_log_find_conflict_by_term():
    st = MemoryStorage(M)
    st.append([Entry(i + 1, t, 1, b"") for i, t in enumerate([1, 1, 2, 2, 4, 4, 4])])
    log = RaftLog(st)
    assert log.find_conflict_by_term(7, 3) == (4, 2)
    assert log.find_conflict_by_term(7, 4) == (7, 4)
    assert log.find_conflict_by_term(7, 0) == (0, 0)


def test_raft_log_refuses_to_overwrite_committed():
    st = MemoryStorage(M)
    st.append(ents(1, 5))
    log = RaftLog(st)
    log.commit_to(4)
    with pytest.raises(RaftError, match="committed"):
        log.append(ents(3, 4, term=2))
    with pytest.raises(RaftError):
        log.commit_to(9)


def test_inflights_window():
    inf = Inflights(3)
    for i in (2, 4, 6):
        inf.add(i)
    assert inf.full()
    inf.free_le(4)
    assert inf.count() == 1 and not inf.full()


def test_progress_probe_and_replicate_transitions():
    pr = Progress(11, 4)
    assert pr.state == ProgressState.PROBE and not pr.is_paused()
    pr.sent_entries(3, 13)
    assert pr.is_paused()  # one probe at a time
    assert pr.maybe_decr_to(10, 4)  # rejected at 10, follower hints 4
    assert pr.next == 5 and not pr.is_paused()
    assert not pr.maybe_decr_to(10, 4)  # stale rejection
    assert pr.maybe_update(8)
    pr.become_replicate()
    for last in (10, 12, 14, 16):
        pr.sent_entries(2, last)
    assert pr.is_paused() and pr.next == 17
    pr.maybe_update(12)
    pr.inflights.free_le(12)
    assert not pr.is_paused()


def test_quorum_arithmetic_counts_only_voters():
    assert committed_index(("a", "b", "c"), {"a": 5, "b": 3, "c": 1, "learner": 9}) == 3
    assert committed_index(("a", "b", "c", "d"), {"a": 5, "b": 4, "c": 3, "d": 1}) == 3
    assert vote_result(("a", "b", "c"), {"a": True, "x": True}) == 0
    assert vote_result(("a", "b", "c"), {"a": True, "b": True}) == 1
    assert vote_result(("a", "b", "c"), {"a": True, "b": False, "c": False}) == -1


def test_membership_changes_validate():
    m = apply_change(M, ConfigChange.add_learner("d"))
    assert m.learners == ("d",)
    m = apply_change(m, ConfigChange.promote_learner("d"))
    assert m.voters == ("a", "b", "c", "d") and not m.learners
    with pytest.raises(ConfigChangeRefused):
        apply_change(m, ConfigChange.add_voter("a"))
    with pytest.raises(ConfigChangeRefused):
        apply_change(m, ConfigChange.promote_learner("a"))
    with pytest.raises(ConfigChangeRefused, match="last voter"):
        apply_change(Membership(("a",)), ConfigChange.remove_voter("a"))
    assert decode_membership(encode_membership(m)) == m
    with pytest.raises(DecodeError):
        decode_membership(b"\x93\x01\x02\x03")


def test_config_history_truncate_and_compact():
    h = ConfigHistory(0, M)
    m2 = Membership(("a", "b"))
    h.observe([Entry(3, 1, int(EntryKind.CONFIG), encode_membership(m2)), Entry(4, 1, 1, b"")])
    assert h.current == m2 and h.latest_index == 3 and h.at(2) == M
    assert h.truncate(3) and h.current == M
    h.observe([Entry(5, 2, int(EntryKind.CONFIG), encode_membership(m2))])
    h.compact(6)
    assert h.base == m2 and not h.changes and h.base_index == 6

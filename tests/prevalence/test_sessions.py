"""Exactly-once sessions in the replicated state: dedupe, expiry by journaled time, snapshots."""
from __future__ import annotations

import prevalence
from prevalence.codec import CODEC
from prevalence.recovery import recover
from prevalence.sessions import IDLE_EXPIRY_US, RegisterSession
from prevalence.state import StateMachine, encode_command
from tests.prevalence.domain import Add, HalfThenFail, Store

HOUR = 3600 * 1_000_000


def entry(index, ts, tx, session=None):
    return prevalence.Entry(index, 1, prevalence.EntryKind.COMMAND, encode_command(ts, CODEC.to_plain(tx), session))


def test_retry_returns_first_reply_and_applies_once():
    sm = StateMachine(Store())
    assert sm.apply_entry(entry(1, HOUR, RegisterSession()), check=True) == (1, None)
    first, _ = sm.apply_entry(entry(2, HOUR, Add("x", 5), (1, 1)), check=True)
    retry, _ = sm.apply_entry(entry(3, HOUR, Add("x", 5), (1, 1)), check=True)  # the same command again
    assert first == retry == ("ok", 5)
    assert sm.root.values == {"x": 5} and sm.applied_index == 3
    rejected, _ = sm.apply_entry(entry(4, HOUR, Add("x", -50), (1, 2)), check=True)
    assert rejected[0] == "rejected" and rejected[1].endswith("Rejected")
    failed, _ = sm.apply_entry(entry(5, HOUR, HalfThenFail("h"), (1, 3)), check=True)
    assert failed[0] == "failed" and sm.root.values["h"] == 1
    again, _ = sm.apply_entry(entry(6, HOUR, HalfThenFail("h"), (1, 3)), check=True)
    assert again == failed and sm.root.values["h"] == 1  # not a second partial change
    old, _ = sm.apply_entry(entry(7, HOUR, Add("x", 1), (1, 1)), check=True)
    assert old[0] == "expired" and sm.root.values["x"] == 5


def test_sessions_expire_by_journaled_time_not_the_wall_clock():
    sm = StateMachine(Store())
    sm.apply_entry(entry(1, HOUR, RegisterSession()), check=True)
    sm.apply_entry(entry(2, HOUR, RegisterSession()), check=True)
    sm.apply_entry(entry(3, HOUR + 10, Add("x", 1), (2, 1)), check=True)
    later = HOUR + IDLE_EXPIRY_US + 2 * 60_000_000
    sm.apply_entry(entry(4, HOUR + IDLE_EXPIRY_US - 1000, Add("x", 1), (2, 2)), check=True)  # session 2 stays active
    reply, _ = sm.apply_entry(entry(5, later, Add("x", 1), (1, 1)), check=True)
    assert reply[0] == "expired"  # session 1 idle past the expiry: refused, never applied
    assert sm.root.values == {"x": 2}
    assert sm.apply_entry(entry(6, later, Add("x", 1), (2, 3)), check=True)[0] == ("ok", 3)


def test_sessions_survive_snapshot_and_replay(tmp_path):
    log = [entry(1, HOUR, RegisterSession()), entry(2, HOUR, Add("x", 5), (1, 1))]
    with prevalence.Journal(tmp_path / "journal") as j:
        j.extend(log)
        j.sync()
    from prevalence.snapshots import SnapshotStore

    store = SnapshotStore(tmp_path / "snapshots")
    with prevalence.Journal(tmp_path / "journal") as j:
        sm, _ = recover(j, store, Store, check=True)
        meta, body = sm.capture()
        store.write(meta, body)
        retry_after_restart = sm.apply_entry(entry(3, HOUR, Add("x", 5), (1, 1)), check=True)[0]
    assert retry_after_restart == ("ok", 5) and sm.root.values == {"x": 5}
    with prevalence.Journal(tmp_path / "journal") as j:
        sm2, _ = recover(j, store, Store, check=True)  # from the snapshot: sessions included
    assert sm2.apply_entry(entry(3, HOUR, Add("x", 5), (1, 1)), check=True)[0] == ("ok", 5)
    assert sm2.root.values == {"x": 5}


def test_the_idle_expiry_is_a_replicated_setting_kept_by_snapshots(tmp_path):
    from prevalence.sessions import SetSessionExpiry
    from prevalence.snapshots import SnapshotStore

    minute = 60_000_000
    sm = StateMachine(Store())
    sm.apply_entry(entry(1, HOUR, RegisterSession()), check=True)
    reply, _ = sm.apply_entry(entry(2, HOUR, SetSessionExpiry(5), (1, 1)), check=True)
    assert reply[0] == "rejected" and "from 60 s to 366 days, got 5 s" in reply[2]
    assert sm.apply_entry(entry(3, HOUR, SetSessionExpiry(600), (1, 2)), check=True)[0] == ("ok", 600)
    sm.apply_entry(entry(4, HOUR, RegisterSession()), check=True)
    # 11 minutes of journaled silence: past 600 s, far below the 24 h default
    reply, _ = sm.apply_entry(entry(5, HOUR + 11 * minute, Add("x", 1), (4, 1)), check=True)
    assert reply[0] == "expired" and "x" not in sm.root.values
    store = SnapshotStore(tmp_path / "snapshots")
    sm.apply_entry(entry(6, HOUR + 11 * minute, RegisterSession()), check=True)
    meta, body = sm.capture()
    store.write(meta, body)
    with prevalence.Journal(tmp_path / "journal") as j:
        j.extend([entry(k, HOUR, RegisterSession()) for k in range(1, 7)])  # the snapshot covers them
        j.sync()
        restored, _ = recover(j, store, Store, check=True)
    assert restored.sessions.idle_expiry_us == 600 * 1_000_000  # travels in the snapshot
    later = HOUR + 11 * minute + 12 * minute
    reply, _ = restored.apply_entry(entry(7, later, Add("x", 1), (6, 1)), check=True)
    assert reply[0] == "expired"

"""Recovery: live state == reopened state == state from a snapshot plus journal."""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prevalence
from tests.prevalence.domain import Add, Boom, HalfThenFail, Put, Rejected, Snapshot, Stamp, Store, Tags

keys = st.sampled_from(["a", "b", "c"])
transactions = st.one_of(
    st.builds(Put, keys, st.integers(-100, 100)),
    st.builds(Add, keys, st.integers(-50, 50)),
    st.builds(Stamp, st.text(max_size=5)),
    st.builds(HalfThenFail, keys),
    st.builds(Tags, keys, st.lists(st.text(max_size=3), max_size=3).map(tuple)),
)


def run_all(db, txs):
    for tx in txs:
        try:
            db.execute(tx)
        except (Boom, Rejected):
            pass


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(txs=st.lists(transactions, max_size=60), cut=st.integers(0, 60), segment=st.sampled_from([4096, 1 << 20]))
def test_live_equals_reopen_equals_snapshot_plus_journal(txs, cut, segment):
    d = tempfile.mkdtemp(prefix="recovery-")
    try:
        cut = min(cut, len(txs))
        with prevalence.open(d, Store, segment_bytes=segment) as db:
            run_all(db, txs[:cut])
            db.snapshot()
            run_all(db, txs[cut:])
            live, index = db.query(Snapshot()), db.last_index
        with prevalence.open(d, Store, segment_bytes=segment) as db:
            assert db.query(Snapshot()) == live and db.last_index == index
        shutil.rmtree(os.path.join(d, "snapshots"))  # journal alone, where it was not compacted
        if prevalence.Journal(os.path.join(d, "journal"), read_only=True).first_index == 1:
            with prevalence.open(d, Store, segment_bytes=segment) as db:
                assert db.query(Snapshot()) == live
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _fill(path, n, every=None, **kw):
    with prevalence.open(path, Store, segment_bytes=4096, **kw) as db:
        for i in range(n):
            db.execute(Add("n", 1))
            if every and (i + 1) % every == 0:
                db.snapshot()
        return db.query(Snapshot())


def test_damaged_newest_snapshot_falls_back_to_older_plus_journal(tmp_path, caplog):
    live = _fill(tmp_path, 300, every=100)
    snaps = sorted((tmp_path / "snapshots").iterdir())
    assert len(snaps) == 2  # keep_snapshots=2
    data = bytearray(snaps[-1].read_bytes())
    data[len(data) // 2] ^= 0xFF
    snaps[-1].write_bytes(bytes(data))
    with prevalence.open(tmp_path, Store) as db:
        assert db.query(Snapshot()) == live
        assert any("skipping damaged snapshot" in w and "checksum mismatch" in w for w in db.warnings)


def test_no_snapshot_can_rebuild_is_a_clear_error(tmp_path):
    _fill(tmp_path, 300, every=100)
    for snap in (tmp_path / "snapshots").iterdir():
        snap.write_bytes(snap.read_bytes()[:50])  # both truncated
    with pytest.raises(prevalence.SnapshotError, match="cannot rebuild the state: the journal starts at index"):
        prevalence.open(tmp_path, Store)


def test_compaction_keeps_journal_for_the_oldest_kept_snapshot(tmp_path):
    _fill(tmp_path, 600, every=150)
    kept = sorted(int(p.name[9:29]) for p in (tmp_path / "snapshots").iterdir())
    assert kept == [450, 600]
    j = prevalence.Journal(tmp_path / "journal", read_only=True)
    assert j.first_index <= 451 and j.first_index > 1  # older segments are gone


def test_snapshot_of_unpicklable_root_uses_dill(tmp_path):
    class Funky(Store):
        def __init__(self):
            super().__init__()
            self.rule = lambda x: x * 2  # plain pickle refuses lambdas

    with prevalence.open(tmp_path, Funky) as db:
        db.execute(Put("a", 1))
        meta = db.snapshot()
    assert meta.serializer == "dill"
    with prevalence.open(tmp_path, Funky) as db:
        assert db.query(Snapshot())[0] == {"a": 1}


def test_automatic_snapshots_by_entries_and_bytes(tmp_path):
    with prevalence.open(tmp_path / "n", Store, snapshot_every=50) as db:
        for _ in range(120):
            db.execute(Add("n", 1))
    assert len(list((tmp_path / "n" / "snapshots").iterdir())) >= 1
    with prevalence.open(tmp_path / "b", Store, snapshot_bytes=2000) as db:
        for _ in range(120):
            db.execute(Add("n", 1))
    assert len(list((tmp_path / "b" / "snapshots").iterdir())) >= 1
    with prevalence.open(tmp_path / "b", Store) as db:
        assert db.query(Snapshot())[0] == {"n": 120}


def test_unknown_type_in_journal_names_entry(tmp_path):
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Ephemeral(prevalence.Transaction, name="test.Ephemeral"):
        def execute(self, root, ctx):
            root.values["e"] = 1

    with prevalence.open(tmp_path, Store) as db:
        db.execute(Put("a", 1))
        db.execute(Ephemeral())
    from prevalence.codec import CODEC

    del CODEC._classes["test.Ephemeral"]  # the release that defined it is gone
    with pytest.raises(prevalence.CodecError, match="cannot replay journal entry 2: unknown type 'test.Ephemeral'"):
        prevalence.open(tmp_path, Store)
    with pytest.raises(prevalence.CodecError):  # the same error again: the failed open released its lock
        prevalence.open(tmp_path, Store)


def test_a_replica_replays_up_to_an_entry_it_cannot_read_and_stops_there_unchanged(tmp_path):
    """A node of a cluster, not the engine: an entry written by a newer release ends the
    replay before it (``stop_unreadable``), so that the node can keep its place in the
    cluster instead of failing at every start."""
    import dataclasses

    from prevalence.codec import CODEC
    from prevalence.journal import Journal
    from prevalence.recovery import recover
    from prevalence.snapshots import SnapshotStore

    @dataclasses.dataclass(frozen=True)
    class Newer(prevalence.Transaction, name="test.Newer", version=3):
        def execute(self, root, ctx):
            root.values["n"] = 1

    with prevalence.open(tmp_path, Store) as db:
        db.execute(Put("a", 1))
        db.execute(Newer())
        db.execute(Put("b", 2))
    del CODEC._classes["test.Newer"]  # the release that defined it is not this one
    journal = Journal(str(tmp_path / "journal"), read_only=True)
    try:
        sm, _w = recover(journal, SnapshotStore(str(tmp_path / "snapshots"), read_only=True), Store,
                         stop_unreadable=True)
    finally:
        journal.close()
    assert sm.applied_index == 1 and sm.root.values == {"a": 1}
    assert sm.unreadable.index == 2 and sm.unreadable.what == "test.Newer version 3"
    assert "unknown type 'test.Newer'" in str(sm.unreadable)


def test_leftover_temporary_snapshot_is_ignored_and_removed(tmp_path):
    live = _fill(tmp_path, 20)
    tmp = tmp_path / "snapshots" / "snapshot-00000000000000000020.snap.tmp"
    tmp.write_bytes(b"half written")
    with prevalence.open(tmp_path, Store) as db:
        assert db.query(Snapshot()) == live
    assert not tmp.exists()


def test_snapshot_file_travels_whole_and_damage_is_refused(tmp_path):
    from prevalence.snapshots import SnapshotStore

    _fill(tmp_path / "a", 30, every=30)
    src = SnapshotStore(tmp_path / "a" / "snapshots")
    data = src.read_encoded(30)
    dst = SnapshotStore(tmp_path / "b" / "snapshots")
    with pytest.raises(prevalence.SnapshotError, match="checksum mismatch"):
        dst.write_encoded(data[:-10] + bytes(10))
    assert dst.indexes() == []
    meta = dst.write_encoded(data)
    assert meta.index == 30 and dst.load(30)[1].values == {"n": 30}

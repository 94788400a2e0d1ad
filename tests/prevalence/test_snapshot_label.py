"""A snapshot file whose name and content disagree on the index is not trusted: recovery
from it would skip the entries between the two without a word."""
from __future__ import annotations

from dataclasses import dataclass

import prevalence
from tests.prevalence.domain import Add, Store


@dataclass(frozen=True)
class _N(prevalence.Query, name="test.label.N"):
    def run(self, root: Store) -> int:
        return root.values.get("n", 0)


def test_a_snapshot_holding_another_index_than_its_name_is_refused(tmp_path):
    """Seen: snapshot-150.snap replaced by the bytes of snapshot 60 (a hand restore), the
    journal compacted to start at 129: the engine opened at index 180 with n=112, the
    entries 61..128 skipped silently (the journal read clamped to its first entry)."""
    snaps = tmp_path / "snapshots"
    with prevalence.open(tmp_path, Store, segment_bytes=4096, keep_snapshots=1) as db:
        for k in range(180):
            db.execute(Add("n", 1))
            if k + 1 == 60:
                old = db.snapshot()
                old_bytes = (snaps / old.path.split("/")[-1]).read_bytes()
            if k + 1 == 150:
                new = db.snapshot()
        assert db.journal.first_index > 61
    (snaps / new.path.split("/")[-1]).write_bytes(old_bytes)
    try:
        with prevalence.open(tmp_path, Store) as db:
            got = (db.last_index, db.query(_N()))
    except prevalence.SnapshotError as exc:
        assert "holds index 60" in str(exc), exc
    else:
        raise AssertionError(f"opened with (last index, n) = {got}; the state is 180 entries")


def test_verify_reports_the_mislabelled_snapshot(tmp_path, capsys):
    from prevalence.cli import main

    with prevalence.open(tmp_path, Store) as db:
        db.execute(Add("n", 1))
        a = db.snapshot()
        db.execute(Add("n", 1))
        b = db.snapshot()
    (tmp_path / "snapshots" / b.path.split("/")[-1]).write_bytes((tmp_path / "snapshots" / a.path.split("/")[-1]).read_bytes())
    assert main(["journal", "verify", str(tmp_path)]) == 1
    assert "named for index 2 but holds index 1" in capsys.readouterr().out

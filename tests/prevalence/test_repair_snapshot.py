"""journal repair never throws away entries that a snapshot makes usable again."""
from __future__ import annotations

import prevalence
from prevalence.cli import main
from tests.prevalence.domain import Add, Store


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _total(path) -> tuple[int, int]:
    with prevalence.open(path, Store) as db:
        return db.query(_Total()), db.last_index


from dataclasses import dataclass  # noqa: E402


@dataclass(frozen=True)
class _Total(prevalence.Query, name="test.repair.Total"):
    def run(self, root: Store) -> int:
        return root.values.get("n", 0)


def _three_segments_two_snapshots(path) -> list:
    with prevalence.open(path, Store, segment_bytes=4096) as db:
        for k in range(180):
            db.execute(Add("n", 1))
            if k + 1 in (60, 150):
                db.snapshot()
    segs = sorted((path / "journal").iterdir())
    assert len(segs) >= 3 and len(list((path / "snapshots").iterdir())) == 2
    return segs


def test_damage_in_a_segment_the_newest_snapshot_covers_loses_nothing(tmp_path, capsys):
    """Seen: record 3 of the oldest segment damaged, snapshots at 60 and 150, 180 entries
    acknowledged. repair cut the oldest segment at record 3 and deleted the two newer
    ones; the next open resumed after the snapshot at 150: entries 151..180 were gone,
    though snapshot 150 plus the newer segments held all of them."""
    segs = _three_segments_two_snapshots(tmp_path)
    _flip(segs[0], 200)
    assert main(["journal", "repair", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "backup copy" in out and f"removed {segs[0]}" in out and "now ends at index 180" in out
    assert segs[-1].exists()
    assert _total(tmp_path) == (180, 180)


def test_a_missing_segment_the_snapshot_covers_keeps_every_later_segment(tmp_path, capsys):
    segs = _three_segments_two_snapshots(tmp_path)
    first_of = [int(s.name.split(".")[0]) for s in segs]
    assert first_of[1] > 61 and first_of[2] <= 151  # only the snapshot at 150 reaches the third segment
    segs[1].unlink()
    assert main(["journal", "repair", str(tmp_path)]) == 0
    capsys.readouterr()
    assert segs[2].exists() and segs[-1].exists()
    assert _total(tmp_path) == (180, 180)


def test_a_middle_segment_cut_short_is_named_with_where_it_ends(tmp_path):
    """Seen: a middle segment cut at a record boundary was reported as the *next* file at
    byte offset 8, 'a segment is missing': the file that lost its end went unnamed."""
    segs = _three_segments_two_snapshots(tmp_path)
    with prevalence.Journal(str(tmp_path / "journal"), read_only=True) as j:
        seg = j._segments[1]
        cut = seg.offsets[10]  # keep records first..first+9
        last_kept = seg.first + 9
    data = segs[1].read_bytes()[:cut]
    segs[1].write_bytes(data)
    try:
        prevalence.open(tmp_path, Store).close()
    except prevalence.JournalCorruptError as exc:
        assert exc.path == str(segs[1]) and exc.offset == cut, exc
        assert f"ends at index {last_kept}" in str(exc) and "a segment is missing" in str(exc)
    else:
        raise AssertionError("opened a journal with a hole")

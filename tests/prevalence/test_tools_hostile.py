"""The offline tools against a failing disk and a careless operator: one line on stderr,
an exit code that says so, nothing acknowledged lost, no traceback."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

import prevalence
from prevalence import segment
from prevalence.cli import main
from tests.prevalence.domain import Add, Put, Store

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make(path, n=30):
    with prevalence.open(path, Store) as db:
        for i in range(n):
            db.execute(Add("n", 1) if i % 2 else Put("p", i))
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "rpc.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def verify_in_2_gib(directory) -> subprocess.CompletedProcess:
    """`journal verify` in a process that may use 2 GiB of address space at most: a
    hostile size read whole ends in MemoryError there, not in the machine's memory."""
    return subprocess.run(
        [sys.executable, "-c", "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30));"
         "from rpc.cli import main; sys.exit(main(sys.argv[1:]))", "journal", "verify", str(directory)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_an_unreadable_segment_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    make(tmp_path)
    seg = next((tmp_path / "journal").iterdir())
    real = os.open

    def denied(path, *a, **k):
        if os.fspath(path) == str(seg):
            raise PermissionError(errno.EACCES, "Permission denied", str(seg))
        return real(path, *a, **k)

    monkeypatch.setattr(os, "open", denied)  # root reads any file: chmod 000 proves nothing here
    for argv in (["journal", "verify", str(tmp_path)], ["journal", "dump", str(tmp_path)],
                 ["state", str(tmp_path), "--root", "tests.prevalence.domain:Store"]):
        assert main(argv) == 1, argv
        line = one_line_error(capsys)
        assert str(seg) in line and "Permission denied" in line


def test_a_directory_named_like_a_segment_is_one_line(tmp_path, capsys):
    make(tmp_path)
    (tmp_path / "journal" / segment.segment_name(31)).mkdir()
    assert main(["journal", "verify", str(tmp_path)]) == 1
    assert segment.segment_name(31) in one_line_error(capsys)


def test_a_huge_segment_file_is_refused_without_reading_it(tmp_path, capsys):
    make(tmp_path)
    seg = next((tmp_path / "journal").iterdir())
    end = seg.stat().st_size
    with open(seg, "r+b") as f:  # sparse: no disk used, but reading it would take 64 GiB of memory
        f.truncate(64 << 30)
    code = verify_in_2_gib(tmp_path)
    assert code.returncode == 1 and "Traceback" not in code.stderr, code.stderr
    assert f"DAMAGED: {seg} at byte offset {end}: the file is {64 << 30} bytes, longer than any segment" in code.stdout


@pytest.mark.parametrize("argv", [
    ["journal", "dump", "{d}"],
    ["journal", "repair", "{d}"],
    ["state", "{d}", "--root", "tests.prevalence.domain:Store"],
])
def test_a_directory_without_a_journal_is_refused_and_left_alone(tmp_path, capsys, argv):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8")
    assert main([a.format(d=other) for a in argv]) == 1
    assert one_line_error(capsys) == f"error: no journal in {other}"
    assert sorted(p.name for p in other.iterdir()) == ["cat.jpg"]  # no LOCK, no journal/ made


@pytest.mark.parametrize("bounds, problem", [
    (["--from", "10", "--to", "5"], "--from 10 is after --to 5"),
    (["--from", "31"], "--from 31 is beyond the end of the journal (30)"),
    (["--from", "-1"], "--from -1: an index is at least 1"),
    (["--to", "-1"], "--to -1: an index is at least 1"),
])
def test_dump_refuses_a_range_it_cannot_show(tmp_path, capsys, bounds, problem):
    make(tmp_path)
    assert main(["journal", "dump", str(tmp_path), *bounds]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: {problem}\n"


def test_state_refuses_a_negative_index(tmp_path, capsys):
    make(tmp_path)
    assert main(["state", str(tmp_path), "--root", "tests.prevalence.domain:Store", "--at", "-1"]) == 1
    assert one_line_error(capsys) == "error: --at -1: an index is at least 0"


def test_a_root_factory_that_fails_is_one_line(tmp_path):
    make(tmp_path)
    res = run_cli("state", str(tmp_path), "--root", "tests.prevalence.domain:Put")  # a transaction, not a root
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith("error: the root factory tests.prevalence.domain:Put failed: TypeError")
    assert len(res.stderr.strip().splitlines()) == 1


def test_repair_of_a_torn_tail_keeps_a_backup_and_says_what_it_cut(tmp_path, capsys):
    make(tmp_path)
    seg = next((tmp_path / "journal").iterdir())
    whole = seg.read_bytes()
    seg.write_bytes(whole[:-5])  # the last record torn, as a crash mid-write leaves it
    assert main(["journal", "repair", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "nothing to repair" not in out and "torn tail" in out and "now ends at index 29" in out
    backups = [p for p in tmp_path.iterdir() if p.name.startswith("journal.backup-")]
    assert len(backups) == 1 and (backups[0] / seg.name).read_bytes() == whole[:-5]
    assert main(["journal", "repair", str(tmp_path)]) == 0
    assert "nothing to repair: the journal is sound up to index 29" in capsys.readouterr().out
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("journal.backup-")]) == 1


def damage_record(seg, n):
    """Flip a payload byte of the ``n``-th record (0-based) of a segment file."""
    from prevalence.segment import RECORD_HEADER, SEGMENT_HEADER

    data = bytearray(seg.read_bytes())
    at = SEGMENT_HEADER.size
    for _ in range(n):
        at += RECORD_HEADER.size + int.from_bytes(data[at:at + 4], "little")
    data[at + RECORD_HEADER.size + 1] ^= 0x55
    seg.write_bytes(bytes(data))
    return at


def test_repair_removes_only_segments_never_another_programs_files(tmp_path, capsys):
    make(tmp_path)
    seg = next((tmp_path / "journal").iterdir())
    damage_record(seg, 10)
    other = tmp_path / "journal" / "rsync-errors.log"  # sorts after every segment name
    other.write_text("not ours\n")
    assert main(["journal", "repair", str(tmp_path)]) == 0
    assert "now ends at index 10" in capsys.readouterr().out
    assert other.read_text() == "not ours\n"


def test_two_repairs_in_one_second_keep_two_backup_copies(tmp_path, capsys, monkeypatch):
    import time

    make(tmp_path)
    seg = next((tmp_path / "journal").iterdir())
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20260101-000000")
    damage_record(seg, 20)
    assert main(["journal", "repair", str(tmp_path)]) == 0
    first = seg.read_bytes()
    damage_record(seg, 5)  # the disk fails again at once
    assert main(["journal", "repair", str(tmp_path)]) == 0, capsys.readouterr().err
    assert "now ends at index 5" in capsys.readouterr().out
    copies = sorted(p for p in tmp_path.iterdir() if p.name.startswith("journal.backup-"))
    assert len(copies) == 2 and (copies[1] / seg.name).read_bytes() != first


def test_verify_checks_a_huge_snapshot_without_holding_it(tmp_path):
    make(tmp_path)
    with prevalence.open(tmp_path, Store) as db:
        db.snapshot()
    snap = next((tmp_path / "snapshots").iterdir())
    with open(snap, "r+b") as f:  # sparse: no disk used, 64 GiB of memory if read whole
        f.truncate(64 << 30)
    code = verify_in_2_gib(tmp_path)
    assert code.returncode == 1 and "Traceback" not in code.stderr, code.stderr
    assert f"DAMAGED: {snap}: truncated or padded ({64 << 30} bytes" in code.stdout


def test_the_chunked_snapshot_check_judges_as_the_whole_file_decode(tmp_path):
    from prevalence.errors import SnapshotError
    from prevalence.snapshots import check_file, decode_file

    make(tmp_path)
    with prevalence.open(tmp_path, Store) as db:
        db.snapshot()
    snap = next((tmp_path / "snapshots").iterdir())
    good = snap.read_bytes()
    damaged = [good, b"", good[:3], good[:10], good[:-1], good + b"\0", b"XXXX" + good[4:],
               good[:4] + b"\x02" + good[5:], good[:8] + b"\xff\xff\xff\xff" + good[12:]]
    damaged += [good[:i] + bytes([good[i] ^ 0x10]) + good[i + 1:] for i in range(12, len(good), 7)]
    for data in damaged:
        snap.write_bytes(data)

        def verdict(judge):
            try:
                return judge().index
            except SnapshotError as exc:
                return str(exc)

        assert verdict(lambda: check_file(str(snap), chunk=5)) == verdict(lambda: decode_file(str(snap), data)[0])


def test_state_skips_a_padded_huge_snapshot_without_reading_it(tmp_path):
    make(tmp_path)
    with prevalence.open(tmp_path, Store) as db:
        db.snapshot()
    snap = next((tmp_path / "snapshots").iterdir())
    with open(snap, "r+b") as f:
        f.truncate(64 << 30)
    code = subprocess.run(
        [sys.executable, "-c", "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30));"
         "from rpc.cli import main; sys.exit(main(sys.argv[1:]))", "state", str(tmp_path), "--root",
         "tests.prevalence.domain:Store", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert code.returncode == 0 and "Traceback" not in code.stderr, code.stderr
    assert "skipping damaged snapshot" in code.stderr and '"index": 30' in code.stdout  # rebuilt from the journal


def test_verify_fails_when_no_snapshot_reaches_the_journals_start(tmp_path, capsys):
    with prevalence.open(tmp_path, Store, segment_bytes=4096) as db:
        for i in range(300):
            db.execute(Add("n", 1))
            if i == 150:
                db.snapshot()
    segments = sorted((tmp_path / "journal").iterdir())
    assert main(["journal", "verify", str(tmp_path)]) == 0
    capsys.readouterr()
    for seg in segments[:-1]:  # lost, or deleted by hand to make room: the journal now starts later
        seg.unlink()
    first = int(segments[-1].name[:20])
    assert first > 152
    assert main(["journal", "verify", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"DAMAGED: entries 152..{first - 1} are in no snapshot and no longer in the journal" in out
    assert out.endswith("damage found\n") and "repair" not in out  # a repair cannot bring them back
    for snap in (tmp_path / "snapshots").iterdir():  # no snapshot at all: the same
        snap.unlink()
    assert main(["journal", "verify", str(tmp_path)]) == 1
    assert f"DAMAGED: entries 1..{first - 1} are in no snapshot" in capsys.readouterr().out


def test_repair_refuses_a_cluster_nodes_data(tmp_path, capsys):
    from replication.journal_storage import HARD_STATE_FILE, IDENTITY_FILE

    for marker in (HARD_STATE_FILE, IDENTITY_FILE):
        node = tmp_path / marker
        make(node)
        (node / marker).write_bytes(b"")
        seg = next((node / "journal").iterdir())
        damage_record(seg, 10)
        before = seg.read_bytes()
        assert main(["journal", "repair", str(node)]) == 1
        line = one_line_error(capsys)
        assert line.startswith(f"error: {node} holds a cluster node's data ({marker}): ") and "rebuil" in line
        assert seg.read_bytes() == before and not [p for p in node.iterdir() if "backup" in p.name]
        assert main(["journal", "verify", str(node)]) == 1  # inspecting it is fine
        capsys.readouterr()


def test_the_node_files_repair_looks_for_are_the_ones_nodes_write():
    from prevalence.tools import _NODE_FILES
    from replication.journal_storage import HARD_STATE_FILE, IDENTITY_FILE

    assert set(_NODE_FILES) == {HARD_STATE_FILE, IDENTITY_FILE}


def test_dump_of_a_range_before_the_journals_start_says_where_it_went(tmp_path, capsys):
    with prevalence.open(tmp_path, Store, segment_bytes=4096) as db:
        for i in range(300):
            db.execute(Add("n", 1))
            if i == 150:
                db.snapshot()
    first = int(sorted((tmp_path / "journal").iterdir())[0].name[:20])
    assert first > 1
    assert main(["journal", "dump", str(tmp_path), "--to", "5"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == (f"error: --to 5 is before the journal's first entry ({first}): "
                                 "the entries before it are only in a snapshot now\n")


@pytest.mark.parametrize("source, problem", [
    ('raise RuntimeError("no database configured")\n', "RuntimeError: no database configured (brokenapp.py, line 1)"),
    ("def f(:\n", "SyntaxError: invalid syntax (brokenapp.py, line 1)"),
])
def test_a_root_module_that_fails_to_import_is_one_line_with_its_place(tmp_path, source, problem):
    data = make(tmp_path / "data")
    (tmp_path / "brokenapp.py").write_text(source)
    for argv in (["--root", "brokenapp:Root"], ["--root", "tests.prevalence.domain:Store", "--import", "brokenapp"]):
        res = subprocess.run([sys.executable, "-m", "rpc.cli", "state", str(data), *argv], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        assert res.stderr.startswith("error: cannot import module 'brokenapp'") and problem in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1

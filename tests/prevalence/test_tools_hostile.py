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
    code = subprocess.run(
        [sys.executable, "-c", "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30));"
         "from rpc.cli import main; sys.exit(main(sys.argv[1:]))", "journal", "verify", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert code.returncode == 1 and "Traceback" not in code.stderr, code.stderr
    assert f"DAMAGED: {seg} at byte offset {end}: the file is {64 << 30} bytes, longer than any segment" in code.stdout

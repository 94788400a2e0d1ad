"""backup verify and restore on files a careless operator or a failing disk hands them:
one 'error:' line, exit 1, nothing written, bounded time and memory."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys

import pytest
from prevalence.snapshots import SnapshotMeta, encode_file
from rpc.backup import MAGIC
from rpc.cli import main
from tests.prevalence.domain import Store

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


HEADER = {"format": 1, "cluster": "c0ffee", "epoch": 0, "index": 7, "term": 2,
          "root": "tests.prevalence.domain:Store", "imports": [], "created": "2026-01-01T00:00:00Z", "node": "n1"}


def backup_file(path, header=None):
    """A backup made offline, as the leader would send it (with a digest that matches)."""
    snap = b"".join(encode_file(SnapshotMeta(7, 2, 0, "pickle"), pickle.dumps(Store())))
    head = header if isinstance(header, bytes) else json.dumps(header or HEADER, sort_keys=True).encode()
    blob = MAGIC + head + b"\n" + snap
    path.write_bytes(blob + hashlib.sha256(blob).digest())
    return path


def test_backup_verify_of_an_endless_stream_stops_at_the_magic():
    limited = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30));"
               "from rpc.cli import main; sys.exit(main(sys.argv[1:]))")  # a failure must not eat the machine
    code = subprocess.run([sys.executable, "-c", limited, "backup", "verify", "/dev/zero"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert code.returncode == 1 and code.stderr == "error: /dev/zero: not a prevalence backup (bad magic)\n"


def test_restore_over_a_file_names_it_and_writes_nothing(tmp_path, capsys):
    bak = backup_file(tmp_path / "b.bak")
    assert main(["backup", "verify", str(bak)]) == 0
    capsys.readouterr()
    target = tmp_path / "notes.txt"
    target.write_text("mine\n")
    assert main(["restore", str(bak), "--data", str(target)]) == 1
    out, err = capsys.readouterr()
    assert err == f"error: {target} is a file: a backup is restored into a new directory\n"
    assert target.read_text() == "mine\n"


@pytest.mark.parametrize("change", [
    {"imports": "abc"},  # would become the imports a, b, c of every restored node
    {"index": 7.0},
    {"epoch": "0"},
    {"root": "a\nb:c"},  # a line break into the restored nodes' configs
    {"root": 5},
    {"node": None},
    b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than the JSON decoder recurses
])
def test_a_header_of_the_wrong_shape_is_not_a_valid_backup(tmp_path, capsys, change):
    header = change if isinstance(change, bytes) else {**HEADER, **change}
    bak = backup_file(tmp_path / "b.bak", header)
    assert main(["backup", "verify", str(bak)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {bak}: damaged backup header: ") and err.count("\n") == 1, err


@pytest.mark.parametrize("port", ["70000", "-5", "65534"])  # 65534: the third node's port would be 65536
def test_restore_refuses_a_port_out_of_range_before_writing_anything(tmp_path, capsys, port):
    bak = backup_file(tmp_path / "b.bak")
    target = tmp_path / "restored"
    assert main(["restore", str(bak), "--data", str(target), "--port", port]) == 1
    out, err = capsys.readouterr()
    assert err == f"error: --port {port}: the ports of 3 nodes from there are not all in 1..65535\n"
    assert not target.exists()  # a retry with the right port finds no half-made directory


@pytest.mark.parametrize("existed", [False, True])
def test_a_restore_that_fails_midway_leaves_no_half_made_cluster(tmp_path, capsys, monkeypatch, existed):
    import errno

    from prevalence.snapshots import SnapshotStore

    bak = backup_file(tmp_path / "b.bak")
    target = tmp_path / "restored"
    if existed:
        target.mkdir()
    written = []
    real = SnapshotStore.write

    def fills_up(self, *a, **k):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device", self.directory)
        written.append(real(self, *a, **k))
        return written[-1]

    monkeypatch.setattr(SnapshotStore, "write", fills_up)
    assert main(["restore", str(bak), "--data", str(target)]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert (sorted(target.iterdir()) == []) if existed else not target.exists()  # the retry is not refused
    monkeypatch.undo()
    assert main(["restore", str(bak), "--data", str(target)]) == 0


def test_backup_verify_of_a_huge_padded_file_does_not_read_it(tmp_path):
    bak = backup_file(tmp_path / "b.bak")
    size = bak.stat().st_size
    with open(bak, "r+b") as f:  # sparse: 64 GiB of memory if read whole
        f.truncate(64 << 30)
    limited = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30));"
               "from rpc.cli import main; sys.exit(main(sys.argv[1:]))")
    code = subprocess.run([sys.executable, "-c", limited, "backup", "verify", str(bak)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert code.returncode == 1 and code.stderr == (
        f"error: {bak}: damaged backup (truncated or altered: {64 << 30} bytes, its headers say {size}); "
        "nothing restored\n"), code.stderr

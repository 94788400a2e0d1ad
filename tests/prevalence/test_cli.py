"""The offline tools, run as a user would run them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import prevalence
from prevalence.cli import main
from prevalence.segment import RECORD_HEADER, SEGMENT_HEADER
from tests.prevalence.domain import Add, Put, Store

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make(tmp_path, n=30):
    with prevalence.open(tmp_path, Store) as db:
        for i in range(n):
            db.execute(Add("n", 1) if i % 2 else Put("p", i))
    return tmp_path


def test_verify_ok_and_json(tmp_path, capsys):
    make(tmp_path)
    assert main(["journal", "verify", str(tmp_path)]) == 0
    assert "entries 1..30" in capsys.readouterr().out
    assert main(["journal", "verify", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["last_index"] == 30


def test_dump_lines_and_json(tmp_path, capsys):
    make(tmp_path)
    assert main(["journal", "dump", str(tmp_path), "--from", "2", "--to", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    index, when, kind, fields = lines[0].split("\t")
    assert (index, kind, json.loads(fields)) == ("2", "test.Add", {"key": "n", "amount": 1})
    assert when.endswith("+00:00")
    assert main(["journal", "dump", str(tmp_path / "journal"), "--json", "--from", "30"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["index"] == 30 and row["type"] == "test.Add" and row["term"] == 0


def test_dump_from_before_the_first_kept_entry_says_where_it_starts(tmp_path, capsys):
    """An operator who asks for entries from 1 of a compacted journal got them from 251
    without a word, as if 1-250 had never happened."""
    with prevalence.open(tmp_path, Store, segment_bytes=4096) as db:
        for i in range(300):
            db.execute(Add("n", i))
        db.snapshot()
        db.execute(Add("n", 1))
    with prevalence.open(tmp_path, Store, segment_bytes=4096) as db:
        db.execute(Add("n", 1))  # compaction runs on open/snapshot: only the snapshot holds the start
    assert main(["journal", "dump", str(tmp_path), "--from", "1"]) == 0
    out, err = capsys.readouterr()
    first = int(out.splitlines()[0].split("\t")[0])
    assert first > 1
    assert err.strip() == (f"note: the journal starts at index {first}: the entries before it are only in a "
                           "snapshot now")
    assert main(["journal", "dump", str(tmp_path), "--from", str(first)]) == 0
    assert capsys.readouterr().err == ""


def test_verify_reports_damage_and_repair_cuts_after_backup(tmp_path, capsys):
    make(tmp_path)
    seg = next((tmp_path / "journal").iterdir())
    data = bytearray(seg.read_bytes())
    bad = SEGMENT_HEADER.size
    for _ in range(10):  # walk to the 11th record, then damage its payload
        bad += RECORD_HEADER.size + int.from_bytes(data[bad : bad + 4], "little")
    data[bad + RECORD_HEADER.size + 1] ^= 0x55
    seg.write_bytes(bytes(data))

    assert main(["journal", "verify", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"{seg} at byte offset {bad}" in out and "DAMAGED" in out

    # the engine refuses to start and modifies nothing
    before = seg.read_bytes()
    code = subprocess.run(
        [sys.executable, "-c", "import prevalence; from tests.prevalence.domain import Store; prevalence.open(%r, Store)" % str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert code.returncode != 0 and "JournalCorruptError" in code.stderr and f"offset {bad}" in code.stderr
    assert seg.read_bytes() == before

    assert main(["journal", "repair", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "backup copy" in out and "now ends at index 10" in out
    backups = [p for p in tmp_path.iterdir() if p.name.startswith("journal.backup-")]
    assert len(backups) == 1 and (backups[0] / seg.name).read_bytes() == before
    with prevalence.open(tmp_path, Store) as db:
        assert db.last_index == 10
    assert main(["journal", "repair", str(tmp_path)]) == 0
    assert "nothing to repair" in capsys.readouterr().out


def test_state_as_of_an_index(tmp_path):
    make(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "prevalence.cli", "state", str(tmp_path), "--root", "tests.prevalence.domain:Store", "--at", "4", "--json"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    state = json.loads(out)
    assert state["index"] == 4
    assert state["root"]["values"] == {"p": 2, "n": 2}


def test_errors_are_one_line_not_tracebacks(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "prevalence.cli", "state", str(tmp_path), "--root", "no.such:Thing"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert res.returncode == 1 and res.stderr.startswith("error: cannot import module 'no.such'")
    assert "Traceback" not in res.stderr


def test_verify_of_a_directory_without_a_journal_says_so_and_fails(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["journal", "verify", str(tmp_path / "empty")]) == 1
    assert f"error: no journal in {tmp_path / 'empty'}" in capsys.readouterr().err


def test_state_prints_a_readable_form_and_json_only_when_asked(tmp_path):
    make(tmp_path)
    args = [sys.executable, "-m", "prevalence.cli", "state", str(tmp_path), "--root", "tests.prevalence.domain:Store"]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.startswith("state as of index 30\n")
    assert "values:" in out and "  p: 28" in out  # one field a line, nested by indentation
    assert not out.lstrip().startswith("{")


def test_every_option_has_help_text():
    from argparse import _HelpAction, _SubParsersAction

    from prevalence.cli import build_parser  # the cluster commands' options: rpc.cli

    missing = []

    def walk(parser, where):
        for action in parser._actions:
            if isinstance(action, _SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{where} {name}")
            elif not isinstance(action, _HelpAction) and not action.help:
                missing.append(f"{where} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "prevalence")
    from app.cli import build_parser as grid_parser
    from rpc.cli import build_parser as cluster_parser

    walk(cluster_parser(), "prevalence")
    walk(grid_parser(), "grid")
    assert not missing, "no help text: " + ", ".join(missing)
    assert "offline tools for a data directory (more come with the cluster)" not in build_parser().description


def test_an_error_reaches_the_terminal_as_one_printable_line(capsys):
    """Error texts carry words from elsewhere (a node's refusal, a file name, a module's
    message): printed raw, an escape sequence in one could rewrite the operator's screen
    and a line break split the one line scripts read."""
    import argparse

    from prevalence.cli import run
    from prevalence.errors import PrevalenceError

    def fails(_args):
        raise PrevalenceError("node n2 says: \x1b[2J\x1b[31mall is fine\nerror: fake second line\x07")

    assert run(argparse.Namespace(func=fails, verbose=False), configure_logging=False) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "\x07" not in err, repr(err)
    assert "all is fine error: fake second line" in err

    def unreadable(_args):
        raise PermissionError(13, "Permission denied", "/data/\x1b[2Jjournal")

    assert run(argparse.Namespace(func=unreadable, verbose=False), configure_logging=False) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err, repr(err)


@dataclass(frozen=True)
class _Mixed(prevalence.Transaction, name="test.cli.Mixed"):
    table: dict

    def execute(self, root: Store, ctx: prevalence.Context) -> None:
        root.values["mixed"] = len(self.table)


def test_dump_shows_an_entry_whose_map_mixes_key_types(tmp_path, capsys):
    """Keys of several types in one map (1 and "a") made `journal dump` end in a
    traceback: json's sort_keys compares them. The entry is shown, its keys as JSON
    writes them (text)."""
    with prevalence.open(tmp_path, Store) as db:
        db.execute(_Mixed({1: 10, "a": 20, None: 30}))
    for extra in ([], ["--json"]):
        assert main(["journal", "dump", str(tmp_path), *extra]) == 0
        out = capsys.readouterr().out.strip()
        fields = json.loads(out)["fields"] if extra else json.loads(out.split("\t")[-1])
        assert fields == {"table": {"1": 10, "a": 20, "null": 30}}, out


def test_dump_shows_an_entry_whose_map_has_bytes_keys(tmp_path, capsys):
    """A map keyed by bytes (a client may send one where a field is a plain ``dict``) is
    no JSON key at all: sorted or not, json.dumps raised and the dump ended in a
    traceback at that entry. Such a key is written as a bytes value is (hex)."""
    with prevalence.open(tmp_path, Store) as db:
        db.execute(_Mixed({b"\x01k": 10, "a": 20}))
        db.execute(_Mixed({"b": 1}))
    for extra in ([], ["--json"]):
        assert main(["journal", "dump", str(tmp_path), *extra]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 2, lines
        fields = json.loads(lines[0])["fields"] if extra else json.loads(lines[0].split("\t")[-1])
        assert fields == {"table": {"016b": 10, "a": 20}}, lines[0]

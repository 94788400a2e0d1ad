"""A grid command whose answer was lost after it was sent: the operator is told it may
have been applied, never that no master answered (which reads as "not done")."""
from __future__ import annotations

import pytest

import app.cli
from app.cli import main
from app.local import write_grid
from rpc.subscription import ClusterUnavailable, CommandUnanswered


class _Client:
    def __init__(self, error: Exception):
        self.error = error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def execute(self, tx):
        raise self.error


@pytest.mark.parametrize("argv", [["set", "n1", "volume=3"], ["preset", "apply", "p", "all"],
                                  ["preset", "define", "p", "volume=3"]])
def test_a_command_sent_but_unanswered_is_reported_as_maybe_applied(tmp_path, monkeypatch, capsys, argv):
    write_grid(str(tmp_path), 2, 2, base_port=47400)
    error = CommandUnanswered("no leader answered within 10 s; tried 127.0.0.1:47400: hung; the command was "
                              "sent and may have been applied: look at the state before sending it again", sent=True)
    monkeypatch.setattr(app.cli, "open_client", lambda *a, **k: _Client(error))
    assert main([*argv[:1], "--cluster", str(tmp_path), *argv[1:]] if argv[0] == "set"
                else [*argv[:2], "--cluster", str(tmp_path), *argv[2:]]) == 1
    err = capsys.readouterr().err
    assert "may have been applied" in err and "grid show" in err, err
    assert "no master" not in err and err.count("\n") == 1, err


def test_a_command_never_sent_still_says_no_master_answered(tmp_path, monkeypatch, capsys):
    write_grid(str(tmp_path), 2, 2, base_port=47400)
    monkeypatch.setattr(app.cli, "open_client", lambda *a, **k: _Client(ClusterUnavailable("no leader")))
    assert main(["set", "--cluster", str(tmp_path), "n1", "volume=3"]) == 1
    err = capsys.readouterr().err
    assert "no master of" in err and "may have been applied" not in err, err


@pytest.mark.parametrize("argv, message", [
    (["--rows", "0"], "rows must be from 1 to 32, got 0"),
    (["--rows", "-1"], "rows must be from 1 to 32, got -1"),
    (["--rows", "33"], "rows must be from 1 to 32, got 33"),
    (["--columns", "100000"], "columns must be from 1 to 32, got 100000"),
    (["--port", "70000"], "--port 70000: the grid's 9 ports must be from 1 to 65535"),
    (["--port", "65530"], "--port 65530: the grid's 9 ports must be from 1 to 65535"),
    (["--port", "-5"], "--port -5: the grid's 9 ports must be from 1 to 65535"),
])
def test_grid_up_refuses_a_size_or_port_it_cannot_run_before_writing_anything(tmp_path, capsys, argv, message):
    data = tmp_path / "g"
    assert main(["up", "--data", str(data), *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not list(data.glob("*.toml"))  # a later grid up there starts clean


def test_grid_up_refuses_the_directory_of_a_cluster_that_is_not_a_grid(tmp_path, capsys):
    from rpc.cluster import write_cluster

    write_cluster(str(tmp_path), 3, 47500, "examples.bank:Bank", ["examples.bank"])
    assert main(["up", "--data", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "is not a grid" in err and "n1.toml runs examples.bank:Bank" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("argv, message", [
    (["--rows", "0"], "rows must be from 1 to 32, got 0"),
    (["--rows", "1", "--columns", "2"], "a failover needs at least 3 nodes, the grid has 2"),
])
def test_grid_demo_refuses_a_size_it_cannot_show_before_starting(tmp_path, capsys, argv, message):
    data = tmp_path / "d"
    assert main(["demo", "--data", str(data), *argv]) == 1
    captured = capsys.readouterr()
    assert message in captured.err and captured.err.count("\n") == 1, captured.err
    assert "GridError" not in captured.err and "[1/6]" not in captured.out
    assert not data.exists()


def test_a_grid_command_that_got_no_master_never_names_the_old_epochs_one(tmp_path, monkeypatch):
    """The diagnosis after "no master answered" named the master an old epoch elected
    (its nodes left out of grid recover, in a higher term) as the grid's."""
    import argparse

    import rpc.cluster
    from rpc.status_report import FIELDS

    def row(nid, role, term, epoch):
        r = dict.fromkeys(FIELDS)
        r.update(id=nid, address=f"127.0.0.1:{7100 + int(nid[1:])}", role=role, term=term, commit_index=9,
                 applied_index=9, reachable=True, leader=nid if role == "leader" else None,
                 voters=["n1"] if epoch else ["n1", "n2", "n3"], cluster="a1a1a1a1", epoch=epoch)
        return r

    rows = [row("n1", "leader", 3, 1), row("n2", "leader", 9, 0), row("n3", "follower", 9, 0)]
    monkeypatch.setattr(rpc.cluster, "cluster_status", lambda directory: rows)
    args = argparse.Namespace(cluster=str(tmp_path), secret_file=None, cluster_from="--cluster")
    said = app.cli._why_no_master(args)
    assert said.startswith("n1 leads (term 3)") and "n2 leads" not in said, said

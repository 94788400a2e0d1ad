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

"""The client rebuilds a node's error reply only as a registered or builtin exception,
never by importing a module the node named (issue 15, item 4)."""
from __future__ import annotations

import sys

import pytest

import rpc
from rpc.remote_errors import RemoteTransactionError, remote_exception
from tests.prevalence.domain import Boom, Rejected


def test_a_module_named_by_the_node_is_never_imported(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "planted_by_node.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nclass Err(Exception):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    exc = remote_exception("failed", "planted_by_node.Err", "boom")
    assert not marker.exists(), "the client imported a module a server named"
    assert "planted_by_node" not in sys.modules
    assert isinstance(exc, RemoteTransactionError) and "planted_by_node.Err: boom" in str(exc)


@pytest.mark.parametrize("name", ["os.system", "builtins.SystemExit", "builtins.KeyboardInterrupt",
                                  "builtins.print", "json.JSONDecodeError", "subprocess.CalledProcessError",
                                  "builtins.__import__", "", ".", "builtins.", "x" * 10_000],
                         ids=lambda name: name[:30] or "empty")
def test_anything_but_a_registered_or_builtin_exception_is_a_remote_error(name):
    exc = remote_exception("failed", name, "m")
    assert type(exc) is RemoteTransactionError
    assert len(str(exc)) < 400


def test_builtin_and_application_exceptions_come_back_as_themselves():
    exc = remote_exception("failed", "builtins.ValueError", "bad value")
    assert type(exc) is ValueError and str(exc) == "bad value" and exc.rejected is False
    exc = remote_exception("rejected", "tests.prevalence.domain.Rejected", "no")
    assert type(exc) is Rejected and exc.rejected is True  # defined beside registered transactions
    assert type(remote_exception("failed", "tests.prevalence.domain.Boom", "b")) is Boom


def test_an_exception_defined_elsewhere_comes_back_once_registered():
    class Elsewhere(Exception):
        pass

    name = f"{Elsewhere.__module__}.{Elsewhere.__qualname__}"
    assert type(remote_exception("failed", name, "m")) is RemoteTransactionError
    rpc.register_exception(Elsewhere)
    exc = remote_exception("failed", name, "m")
    assert type(exc) is Elsewhere and str(exc) == "m"


@pytest.mark.parametrize("type_name, message", [(5, "m"), ("builtins.ValueError", 5), (None, None)])
def test_a_malformed_error_reply_is_still_an_error(type_name, message):
    exc = remote_exception("failed", type_name, message)
    assert isinstance(exc, RemoteTransactionError)

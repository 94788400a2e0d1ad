"""An engine call made from inside a transaction or a query is refused at once: it
would wait for the lock its own thread holds, and hang every caller of the engine."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

import prevalence

ENGINE: list = []


class Counter:
    def __init__(self) -> None:
        self.n = 0


@dataclass(frozen=True)
class Count(prevalence.Query, name="reentrant.Count"):
    def run(self, root: Counter) -> int:
        return root.n


@dataclass(frozen=True)
class Bump(prevalence.Transaction, name="reentrant.Bump"):
    def execute(self, root: Counter, ctx: prevalence.Context) -> int:
        root.n += 1
        return root.n


def _call(what: str):
    db = ENGINE[0]
    return {"query": lambda: db.query(Count()), "execute": lambda: db.execute(Bump()),
            "snapshot": db.snapshot, "close": db.close}[what]()


@dataclass(frozen=True)
class CallsTheEngine(prevalence.Transaction, name="reentrant.CallsTheEngine"):
    what: str
    where: str = "execute"

    def check(self, root: Counter) -> None:
        if self.where == "check":
            _call(self.what)

    def execute(self, root: Counter, ctx: prevalence.Context) -> None:
        _call(self.what)


@dataclass(frozen=True)
class QueryCallsTheEngine(prevalence.Query, name="reentrant.QueryCallsTheEngine"):
    what: str

    def run(self, root: Counter) -> None:
        _call(self.what)


def _in_thread(fn) -> BaseException | None:
    out: list = []

    def run() -> None:
        try:
            fn()
            out.append(None)
        except BaseException as exc:  # noqa: BLE001 - what the call raised
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "the call hung: it waits for a lock its own thread holds"
    return out[0]


@pytest.mark.parametrize("what", ["query", "execute", "snapshot", "close"])
@pytest.mark.parametrize("where", ["check", "execute", "query"])
def test_a_call_from_inside_is_a_clear_error_not_a_hang(tmp_path, what, where):
    """Seen: db.query, db.execute or db.snapshot called inside a transaction's execute, or
    db.execute inside a query's run, blocked forever, and with it every other caller."""
    db = prevalence.open(tmp_path, Counter)
    ENGINE[:] = [db]
    outer = QueryCallsTheEngine(what) if where == "query" else CallsTheEngine(what, where)
    call = (lambda: db.query(outer)) if where == "query" else (lambda: db.execute(outer))
    exc = _in_thread(call)  # a hang fails here and leaves the engine unclosed: closing would hang too
    try:
        assert isinstance(exc, prevalence.PrevalenceError) and "from inside" in str(exc), exc
        assert db.execute(Bump()) >= 1  # the engine carries on
        db.snapshot()
    finally:
        db.close()

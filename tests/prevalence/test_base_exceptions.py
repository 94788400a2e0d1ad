"""A transaction that raises a BaseException (its own subclass, or sys.exit) is an
outcome like any other: journaled, durable before the caller hears of it, and replayed."""
from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest

import prevalence


class Counter:
    def __init__(self) -> None:
        self.n = 0


class Stop(BaseException):
    pass


@dataclass(frozen=True)
class HalfThenStop(prevalence.Transaction, name="base.HalfThenStop"):
    how: str

    def execute(self, root: Counter, ctx: prevalence.Context) -> None:
        root.n += 1
        if self.how == "exit":
            sys.exit(3)
        raise Stop("halfway")


@dataclass(frozen=True)
class RefuseWithStop(prevalence.Transaction, name="base.RefuseWithStop"):
    def check(self, root: Counter) -> None:
        raise Stop("not this one")

    def execute(self, root: Counter, ctx: prevalence.Context) -> None:
        root.n += 100


@dataclass(frozen=True)
class Count(prevalence.Query, name="base.Count"):
    def run(self, root: Counter) -> int:
        return root.n


@pytest.mark.parametrize("how, exc", [("stop", Stop), ("exit", SystemExit)])
def test_base_exception_from_execute_is_durable_and_replays(tmp_path, how, exc):
    """Seen: the caller got Stop while the entry was still only in memory (durable index
    0), and the next prevalence.open raised Stop itself: the directory could not be opened."""
    with prevalence.open(tmp_path, Counter) as db:
        with pytest.raises(exc):
            db.execute(HalfThenStop(how))
        assert db.journal.durable_index == 1
        with pytest.raises(Stop):
            db.execute(RefuseWithStop())  # refused by check: nothing journaled
        assert db.last_index == 1 and db.query(Count()) == 1
    with prevalence.open(tmp_path, Counter) as db:
        assert db.last_index == 1 and db.query(Count()) == 1

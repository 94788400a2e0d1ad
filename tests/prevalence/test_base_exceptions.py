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


INTERRUPTS = [1]


@dataclass(frozen=True)
class TwoSteps(prevalence.Transaction, name="base.TwoSteps"):
    def execute(self, root: Counter, ctx: prevalence.Context) -> None:
        root.n += 1
        if INTERRUPTS[0]:  # Ctrl-C arrives between the two steps, once
            INTERRUPTS[0] -= 1
            raise KeyboardInterrupt
        root.n += 10


def test_a_transaction_interrupted_halfway_halts_the_engine_until_reopened(tmp_path):
    """Seen: after Ctrl-C between two steps of execute, the engine went on with n=1 in
    memory while its journal rebuilds n=11, and a snapshot then made n=1 permanent."""
    INTERRUPTS[0] = 1
    with prevalence.open(tmp_path, Counter) as db:
        with pytest.raises(KeyboardInterrupt):
            db.execute(TwoSteps())
        for call in (lambda: db.query(Count()), db.snapshot, lambda: db.execute(TwoSteps())):
            with pytest.raises(prevalence.EngineHaltedError, match="interrupted"):
                call()
    with prevalence.open(tmp_path, Counter) as db:
        assert db.query(Count()) == 11 and db.last_index == 1

"""What a transaction's first run sees is what every replay sees: the engine applies the
transaction as the journal will give it back, and refuses one that cannot come back."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prevalence
from prevalence import CodecError


class Log:
    def __init__(self) -> None:
        self.items: list = []


@dataclass(frozen=True)
class When(prevalence.Transaction, name="fidelity.When"):
    at: datetime

    def execute(self, root: Log, ctx: prevalence.Context) -> str:
        root.items.append(self.at)
        return self.at.isoformat()


@dataclass(frozen=True)
class Pairs(prevalence.Transaction, name="fidelity.Pairs"):
    cells: dict[tuple[int, int], str]

    def execute(self, root: Log, ctx: prevalence.Context) -> None:
        root.items.append(dict(self.cells))


@dataclass(frozen=True)
class Big(prevalence.Transaction, name="fidelity.Big"):
    n: int

    def execute(self, root: Log, ctx: prevalence.Context) -> None:
        root.items.append(self.n)


@dataclass(frozen=True)
class Money(prevalence.Transaction, name="fidelity.Money"):
    amount: Decimal

    def execute(self, root: Log, ctx: prevalence.Context) -> None:
        root.items.append(self.amount)


def _items(path) -> list:
    with prevalence.open(path, Log) as db:
        return list(db.query(_All()))


@dataclass(frozen=True)
class _All(prevalence.Query, name="fidelity.All"):
    def run(self, root: Log) -> list:
        return list(root.items)


def test_first_run_sees_the_datetime_replay_sees(tmp_path):
    """A datetime in +02:00 came back from the journal in UTC: the first run stored
    hour 3 at +02:00, every replay hour 1 at UTC, so the state differed after a restart."""
    at = datetime(2026, 1, 2, 3, 4, 5, 123457, tzinfo=timezone(timedelta(hours=2)))
    with prevalence.open(tmp_path, Log) as db:
        db.execute(When(at))
        first = db.query(_All())
    assert repr(first) == repr(_items(tmp_path))


@pytest.mark.parametrize("tx, what", [
    (Pairs({(1, 2): "a"}), "fidelity.Pairs"),  # tuple keys come back as lists: unhashable
    (When(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc)), "fidelity.When"),  # past datetime.max
    (Big(2**70), "fidelity.Big"),  # past msgpack's 64 bits
    (Big(1.5), "fidelity.Big"),  # a float in an int field: dataclasses do not check, the decoder does
    (Big("3"), "fidelity.Big"),
])
def test_a_transaction_the_journal_cannot_give_back_is_refused_before_it_applies(tmp_path, tx, what):
    """These were acknowledged, and the next open failed on them: the directory could
    no longer be opened at all (or execute raised a bare OverflowError)."""
    with prevalence.open(tmp_path, Log) as db:
        db.execute(Big(1))
        with pytest.raises(CodecError, match=what):
            db.execute(tx)
        assert db.query(_All()) == [1] and db.last_index == 1
        db.execute(Big(2))
    assert _items(tmp_path) == [1, 2]


def test_a_field_type_without_a_plain_form_is_a_codec_error(tmp_path):
    with prevalence.open(tmp_path, Log) as db:
        with pytest.raises(CodecError, match="fidelity.Money"):
            db.execute(Money(Decimal("1.10")))
        assert db.last_index == 0


@dataclass(frozen=True)
class Mixed(prevalence.Transaction, name="fidelity.Mixed"):
    at: datetime | None
    ratio: float
    grid: dict[str, list[int]]
    fail_after: bool

    def execute(self, root: Log, ctx: prevalence.Context) -> None:
        root.items.append((self.at, self.ratio, self.grid))
        self.grid.setdefault("seen", []).append(ctx.index)  # mutates its own field: the copy's
        if self.fail_after:
            raise ValueError("halfway")


_zones = st.sampled_from([None, timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))])
_mixed = st.builds(
    Mixed,
    at=st.one_of(st.none(), st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2250, 1, 1), timezones=_zones)),
    ratio=st.floats(allow_nan=True, allow_infinity=True),
    grid=st.dictionaries(st.text(max_size=3), st.lists(st.integers(-(2**63), 2**64 - 1), max_size=3), max_size=3),
    fail_after=st.booleans(),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_mixed, min_size=1, max_size=6))
def test_property_the_state_after_a_reopen_is_the_state_the_first_run_left(tmp_path_factory, txs):
    path = tmp_path_factory.mktemp("replay")
    with prevalence.open(path, Log) as db:
        for tx in txs:
            try:
                db.execute(tx)
            except ValueError:
                pass
        first = repr(db.query(_All()))
    assert repr(_items(path)) == first


@dataclass(frozen=True)
class Blob(prevalence.Transaction, name="fidelity.Blob"):
    data: bytes

    def execute(self, root: Log, ctx: prevalence.Context) -> None:
        root.items.append(len(self.data))


def test_a_transaction_larger_than_a_journal_record_is_refused_before_it_applies(tmp_path, monkeypatch):
    """Seen (with the record limit lowered to 4 KiB; it is 256 MiB): a 5000-byte transaction
    was acknowledged, and the next open refused the journal: 'record length 5043 is
    implausible'. The journal wrote records that its own scan calls damage."""
    from prevalence import segment

    monkeypatch.setattr(segment, "MAX_RECORD", 4096)
    with prevalence.open(tmp_path, Log) as db:
        db.execute(Blob(b"x" * 100))
        with pytest.raises(CodecError, match="fidelity.Blob: .* more than a journal record holds"):
            db.execute(Blob(b"x" * 5000))
        assert db.last_index == 1
    assert _items(tmp_path) == [100]

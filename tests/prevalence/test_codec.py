"""The codec: round trips, clear errors for what does not fit, schema upgrades."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

import prevalence
from prevalence import CODEC, CodecError
from prevalence.codec import Codec
from tests.prevalence.domain import Add, Get, Put, Tags

text = st.text(max_size=20)
tags = st.builds(
    Tags,
    key=text,
    tags=st.lists(text, max_size=5).map(tuple),
    meta=st.dictionaries(text, st.integers(-(2**63), 2**63 - 1), max_size=5),
    blob=st.binary(max_size=50),
    ratio=st.floats(allow_nan=False),
    flag=st.booleans(),
    note=st.one_of(st.none(), text),
)


@given(st.one_of(tags, st.builds(Put, text, st.integers(-(2**63), 2**63 - 1)), st.builds(Get, text)))
def test_round_trip(obj):
    assert CODEC.loads(CODEC.dumps(obj)) == obj


def test_plain_form_names_type_and_version():
    assert CODEC.to_plain(Put("a", 1)) == ["test.Put", 1, {"key": "a", "value": 1}]


def test_default_name_is_module_and_qualified_name():
    @dataclass(frozen=True)
    class Local(prevalence.Query):
        def run(self, root):
            return None

    assert CODEC.to_plain(Local())[0] == f"{__name__}.test_default_name_is_module_and_qualified_name.<locals>.Local"


def test_unknown_type_is_named():
    with pytest.raises(CodecError, match="unknown type 'shop.Missing'"):
        CODEC.from_plain(["shop.Missing", 1, {}])


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"key": "a", "value": "5"}, r"test\.Put\.value"),
        ({"key": 1, "value": 5}, r"test\.Put\.key"),
        ({"key": "a", "value": True}, r"test\.Put\.value"),
        ({"key": "a"}, r"required field missing at test\.Put\.value"),
        ({"key": "a", "value": 1, "extra": 2}, r"extra fields found \(extra\)"),
        ({"key": "a", "value": 1.5}, r"test\.Put\.value"),
    ],
)
def test_fields_that_do_not_fit_name_type_and_field(fields, problem):
    with pytest.raises(CodecError, match=problem):
        CODEC.from_plain(["test.Put", 1, fields])


@pytest.mark.parametrize(
    "plain, problem",
    [
        ("nope", "expected \\[type, version, fields\\]"),
        ([1, 1, {}], "type name must be a string"),
        (["test.Put", "1", {}], "malformed version"),
        (["test.Put", 1, []], "fields must be a mapping"),
    ],
)
def test_malformed_shapes(plain, problem):
    with pytest.raises(CodecError, match=problem):
        CODEC.from_plain(plain)


@given(st.binary(max_size=200))
def test_garbage_bytes_give_codec_errors_only(data):
    try:
        CODEC.loads(data)
    except CodecError:
        pass


def test_nested_collections_and_datetime_round_trip():
    @dataclass(frozen=True)
    class Rich(prevalence.Transaction, name="test.Rich"):
        when: datetime
        grid: tuple[tuple[int, ...], ...]
        names: frozenset[str]

        def execute(self, root, ctx):
            return None

    obj = Rich(datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=timezone.utc), ((1, 2), (3,)), frozenset({"a", "b"}))
    assert CODEC.loads(CODEC.dumps(obj)) == obj


def test_name_clash_is_refused():
    with pytest.raises(CodecError, match="already used by"):

        @dataclass(frozen=True)
        class Other(prevalence.Transaction, name="test.Put"):
            def execute(self, root, ctx):
                return None


def test_upgrade_hook_reads_version_1_with_version_2(tmp_path):
    """A journal written by version 1 of a class is replayed by version 2."""
    from tests.prevalence.domain import Store

    codec = CODEC

    @dataclass(frozen=True)
    class Credit(prevalence.Transaction, name="test.Credit"):
        account: str
        cents: int

        def execute(self, root, ctx):
            root.values[self.account] = root.values.get(self.account, 0) + self.cents

    with prevalence.open(tmp_path, Store) as db:
        db.execute(Credit("a", 150))

    @dataclass(frozen=True)
    class Credit(prevalence.Transaction, name="test.Credit", version=2):  # noqa: F811 - the new release
        account: str
        amount: int
        currency: str

        @classmethod
        def upgrade(cls, fields: dict, version: int) -> dict:
            assert version == 1
            return {"account": fields["account"], "amount": fields["cents"], "currency": "EUR"}

        def execute(self, root, ctx):
            root.values[self.account] = root.values.get(self.account, 0) + self.amount

    with prevalence.open(tmp_path, Store) as db:
        assert db.query(type("Q", (), {"run": lambda self, r: dict(r.values)})()) == {"a": 150}
        db.execute(Credit("a", 50, "EUR"))
        assert codec.to_plain(Credit("a", 1, "EUR"))[1] == 2


def test_version_without_upgrade_and_newer_version_are_clear_errors():
    c = Codec()

    @dataclass(frozen=True)
    class V2(prevalence.Query, name="test.V2", version=2):
        x: int

        def run(self, root):
            return None

    c.register(V2)
    with pytest.raises(CodecError, match="version 1, the class is version 2 and defines no upgrade"):
        c.from_plain(["test.V2", 1, {"x": 1}])
    with pytest.raises(CodecError, match="written as version 3"):
        c.from_plain(["test.V2", 3, {"x": 1}])


def test_msgpack_bytes_are_compact():
    assert len(CODEC.dumps(Add("alice", 10))) < 40
    assert msgpack.unpackb(CODEC.dumps(Add("alice", 10))) == ["test.Add", 1, {"key": "alice", "amount": 10}]

"""rpc.brine_shape: a request's shape, read from its brine tags before RPyC decodes it."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rpyc.core import brine

from rpc.brine_shape import MAX_DEPTH, MAX_OBJECTS, check_request

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.binary(max_size=300),
    st.text(max_size=50), st.floats(allow_nan=False), st.complex_numbers(allow_nan=False),
    st.just(Ellipsis), st.just(NotImplemented),
)
_hashable = st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), st.binary(max_size=20), st.text(max_size=5))
_values = st.recursive(
    st.one_of(_scalars, st.frozensets(_hashable, max_size=5),
              st.builds(slice, st.integers(-5, 5), st.integers(-5, 5), st.integers(-5, 5))),
    lambda inner: st.lists(inner, max_size=40).map(tuple),
    max_leaves=80,
)


def _count(value) -> int:
    """The objects brine builds for ``value`` (one per tag)."""
    if type(value) is tuple:
        return 1 + sum(_count(v) for v in value)
    if type(value) is frozenset:
        return 2 + sum(_count(v) for v in value)  # the frozenset and its tuple
    if type(value) is slice:
        return 5  # the slice, a tuple of three
    if type(value) is str:
        return 2  # the string and its UTF-8 bytes
    return 1


@settings(max_examples=300, deadline=None)
@given(_values)
def test_every_value_brine_encodes_passes_with_its_object_count(value):
    data = brine.dump(value)
    assert check_request(data, max_objects=10**6) == _count(value)
    assert check_request(b"\x01" + data, 1, max_objects=10**6) == _count(value)  # after RPyC's message type


@settings(max_examples=300, deadline=None)
@given(_values, st.data())
def test_a_damaged_request_is_refused_or_decodes_to_no_more_than_it_said(value, data):
    encoded = bytearray(brine.dump(value))
    cut = data.draw(st.integers(0, len(encoded)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, max(0, len(encoded) - 1)), st.integers(0, 255)),
                               max_size=3))
    for pos, byte in flips:
        if encoded:
            encoded[pos] = byte
    damaged = bytes(encoded[:cut] + encoded[len(encoded) if cut == len(encoded) else cut + 1:])
    try:
        objects = check_request(damaged, max_objects=100_000)
    except ValueError:
        return  # refused, one line naming why
    try:
        decoded = brine.load(damaged)
    except (TypeError, ValueError, AttributeError):
        return  # well shaped, not a value (a string of an int...): the connection ends as before
    assert _count(decoded) <= objects


def test_more_objects_than_any_call_needs_are_refused_before_any_is_built():
    data = brine.dump((frozenset(),) * (MAX_OBJECTS + 1))
    with pytest.raises(ValueError, match="more than 8,192 values"):
        check_request(data)
    assert check_request(brine.dump((frozenset(),) * 4000)) == 8001  # a large legitimate call still fits


def test_nesting_deeper_than_any_call_needs_is_refused():
    deep = b"\x10" * MAX_DEPTH + b"\x00"  # a tuple in a tuple ... around None
    with pytest.raises(ValueError, match="nests deeper"):
        check_request(deep)
    assert check_request(b"\x10" * (MAX_DEPTH - 1) + b"\x00") == MAX_DEPTH


@pytest.mark.parametrize("data, why", [
    (b"", "ends inside a value"),
    (b"\x15\xff\xff\xff\xff\x00", "a tuple of 4,294,967,295 values in 1 bytes"),
    (b"\x0f\x00\x10\x00\x00abc", "ends inside a value"),  # 1 MiB of bytes announced, 3 sent
    (b"\x0f\x00", "ends inside a length"),
    (b"\x07", "unknown brine tag 0x07"),
    (b"\xff", "unknown brine tag 0xff"),
    (b"\x00\x00", "1 bytes after its value"),
    (b"\x08", "ends inside a value"),  # a string tag and nothing
])
def test_malformed_requests_are_named(data, why):
    with pytest.raises(ValueError, match=why):
        check_request(data)


@pytest.mark.parametrize("data, why", [
    # a frozenset of a string is a set of its characters: 4 MiB of distinct 4-byte
    # characters counted 3 values and decoded to 120 MiB (a million strings)
    (b"\x1a\x08\x0f\x00\x00\x00\x04" + "\U0001F600".encode(), "frozenset of a str"),
    (b"\x1a\x0e\x05abcde", "frozenset of a bytes"),
    (b"\x19\x08\x0b\x61\x62", "slice of a str"),  # brine's slice is always a tuple of three
    (b"\x19\x11\x00\x00", "slice of a tuple of 2"),
    (b"\x08\x11\x00\x00", "str of a tuple"),  # a str is always its UTF-8 bytes
    (b"\x08\x20", "str of an int"),
])
def test_a_tag_is_followed_only_by_what_brine_puts_after_it(data, why):
    with pytest.raises(ValueError, match=why):
        check_request(data)


def test_a_frozenset_of_a_string_of_distinct_characters_is_refused_before_it_is_built():
    text = "".join(chr(c) for c in range(0x10000, 0x10000 + 100_000)).encode()  # 400 kB
    data = b"\x1a\x08\x0f" + len(text).to_bytes(4, "big") + text
    assert len(brine.load(data)) == 100_000  # what it would build: 100,000 strings
    with pytest.raises(ValueError, match="frozenset of a str"):
        check_request(data)


def test_a_frozenset_of_values_of_one_hash_is_refused_before_it_stalls_the_process():
    """brine builds a frozenset in one C call holding the GIL, and values of one hash
    compare with every item before them: 8,000 complex numbers of one hash (136 kB)
    stalled every thread of the process for 0.6 s, a leader past its election timeout."""
    from rpc.brine_shape import MAX_SET_ITEMS

    colliding = [complex(5_000_000_000 - 1_000_003 * k, k) for k in range(8000)]
    assert len({hash(v) for v in colliding}) == 1
    with pytest.raises(ValueError, match=f"frozenset of more than {MAX_SET_ITEMS} items"):
        check_request(brine.dump(frozenset(colliding)))
    assert check_request(brine.dump(frozenset(colliding[:MAX_SET_ITEMS]))) == MAX_SET_ITEMS + 2
    with pytest.raises(ValueError, match="more than"):
        check_request(brine.dump(frozenset(colliding[:MAX_SET_ITEMS + 1])))

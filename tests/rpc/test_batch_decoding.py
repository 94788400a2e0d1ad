"""A client's execute_batch arrives as one msgpack value (rpc.requests.unpack_batch).
Its size is bounded before decoding; what it decodes to must be bounded too: a small
value can be made of millions of tiny objects."""
from __future__ import annotations

import tracemalloc

import msgpack
import pytest

from prevalence.errors import PrevalenceError
from rpc.requests import DEFAULT_MAX_REQUEST, MAX_BATCH_ITEMS, unpack_batch as _unpack_batch

LIMIT = DEFAULT_MAX_REQUEST


def _nested_one_item_arrays() -> bytes:
    """1,024 arrays of 1,024 arrays of one small int: 2 MB of tuples from 2 bytes each."""
    inner = b"\x91\x00"  # [0]
    row = b"\xdc" + (1024).to_bytes(2, "big") + inner * 1024
    return b"\xdc" + (480).to_bytes(2, "big") + row * 480  # just under the size limit


def _rows_of_bytes() -> bytes:
    """Rows of 1,024 one-byte binaries (3 bytes each, a 34-byte object each)."""
    row = b"\xdc" + (1024).to_bytes(2, "big") + b"\xc4\x01x" * 1024
    return b"\xdc" + (340).to_bytes(2, "big") + row * 340


def _deep() -> bytes:
    return b"\x91" * 400_000 + b"\x00"  # [[[[...0...]]]]


@pytest.mark.parametrize("make", [_nested_one_item_arrays, _rows_of_bytes, _deep])
def test_a_batch_that_is_not_one_of_commands_is_refused_before_it_grows(make):
    data = make()
    assert len(data) <= LIMIT + 64 * MAX_BATCH_ITEMS  # passes the size check: the shape must stop it
    tracemalloc.start()
    try:
        with pytest.raises(Exception) as info:
            _unpack_batch(data, LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not isinstance(info.value, MemoryError)
    assert peak < 1 << 20, f"decoding {len(data)} bytes took {peak / 1e6:.1f} MB before it was refused"


def test_a_full_batch_of_commands_decodes_as_sent():
    items = [(b"c" * 900, 1 + k, 2**62 + k) for k in range(MAX_BATCH_ITEMS)]
    assert _unpack_batch(msgpack.packb(items, use_bin_type=True), LIMIT) == tuple(items)
    assert _unpack_batch(msgpack.packb([], use_bin_type=True), LIMIT) == ()


@pytest.mark.parametrize("value", [
    [(b"x", 1)],
    [(b"x", 1, 1, 1)],
    [(b"x", (1,), 1)],              # an array inside a command
    [[(b"x", 1, 1)] * 3] * 2,       # batches of batches
])
def test_misshapen_batches_are_refused_by_their_shape(value):
    """(A lone command, not in a batch, decodes: the batch check refuses it, as
    test_validation's real node shows.)"""
    with pytest.raises(ValueError, match="a batch is an array of"):
        _unpack_batch(msgpack.packb(value, use_bin_type=True), LIMIT)


def test_an_oversized_batch_is_refused_from_its_length():
    with pytest.raises(PrevalenceError, match="over the limit"):
        _unpack_batch(b"\x90" * (LIMIT + 64 * MAX_BATCH_ITEMS + 1), LIMIT)

"""Arrays that never complete: msgpack allocates each at its header and a list_hook sees
it only once it is complete, so nesting 1,000 arrays of 1,024 items, each filled with
empty maps ({} passes max_map_len=0) and ending before any completes, took ~70 MB from
1 MB, on each client connection (and peer link) at once."""
from __future__ import annotations

import tracemalloc

import pytest

from rpc.requests import DEFAULT_MAX_REQUEST, MAX_BATCH_ITEMS, unpack_batch as _unpack_batch
from rpc.wire import MAX_BATCH_FRAMES, BatchError, decode_batch


def _bomb(per: int, filler: bytes, limit: int) -> bytes:
    level = b"\xdc" + per.to_bytes(2, "big") + filler * (per - 1)
    return level * min(1000, limit // len(level))


FILLERS = [b"\x80", b"\xcd\x10\x00", b"\xa2ab", b"\xc7\x00\x05"]  # {}, 4096, "ab", ExtType(5, b"")


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        with pytest.raises(Exception) as info:
            fn()
        return tracemalloc.get_traced_memory()[1], info.value
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("filler", FILLERS)
def test_a_client_batch_of_unfinished_arrays_is_refused_before_it_grows(filler):
    data = _bomb(MAX_BATCH_ITEMS, filler, DEFAULT_MAX_REQUEST + 64 * MAX_BATCH_ITEMS)
    peak, exc = _peak(lambda: _unpack_batch(data, DEFAULT_MAX_REQUEST))
    assert not isinstance(exc, MemoryError)
    assert peak < 1 << 20, f"{len(data)} bytes took {peak / 1e6:.1f} MB before the refusal"


@pytest.mark.parametrize("filler", FILLERS)
def test_a_peer_batch_of_unfinished_arrays_is_refused_before_it_grows(filler):
    blob = _bomb(MAX_BATCH_FRAMES, filler, 4 << 20)
    for form in (blob, memoryview(blob)):
        peak, exc = _peak(lambda: decode_batch(form))
        assert isinstance(exc, BatchError)
        assert peak < 1 << 20, f"{len(blob)} bytes took {peak / 1e6:.1f} MB before the refusal"


def test_a_client_batch_holds_no_maps_or_extension_types():
    for data in (b"\x91\x93\x80\x01\x01", b"\x91\x93\xc7\x00\x05\x01\x01"):
        with pytest.raises(ValueError, match="a batch is an array of"):
            _unpack_batch(data, DEFAULT_MAX_REQUEST)

"""A node's reply reads back as it was made, or is that call's error: never a reply the
client takes for a lost connection."""
from __future__ import annotations

from rpc.client import _read_reply
from rpc.requests import reply as _reply


def test_a_result_with_int_keys_reads_back_and_one_no_reader_takes_is_the_calls_error():
    """A query's result {1: 'one'} packed, and the client, which read replies with
    msgpack's defaults (map keys str or bytes only), failed to read it: it blamed the
    node's connection and retried every node until its deadline. Int keys now read back,
    as they do in commands; a tuple key (packed as an array, read back as an unhashable
    list) is the call's error reply."""
    for result in ({1: "one"}, [{"ok": {3.5: 1}}], {"a": [1, b"x"]}):
        assert _read_reply(_reply("ok", result)) == ["ok", result]
    reply = _read_reply(_reply("ok", {(1, 2): "pair"}))
    assert reply[0] == "error" and "cannot be read" in reply[1], reply

"""A reply a client cannot read is an error reply, not a broken connection."""
from __future__ import annotations

import msgpack

from rpc.service import _reply


def test_a_result_with_map_keys_a_client_refuses_is_answered_as_an_error():
    """A query's result {1: 'one'} packed, and the client, whose msgpack refuses map keys
    other than str or bytes, failed to read it: it blamed the node's connection and
    retried every node until its deadline."""
    for result in ({1: "one"}, {(1, 2): "pair"}, [{"ok": {3.5: 1}}]):
        reply = msgpack.unpackb(_reply("ok", result), raw=False)
        assert reply[0] == "error" and "cannot be sent as plain data" in reply[1], reply
    assert msgpack.unpackb(_reply("ok", {"a": [1, b"x"]}), raw=False) == ["ok", {"a": [1, b"x"]}]

"""Connections still in their handshake, per source address: one host that opens
connections and never authenticates holds a few of the listener's slots, not all of
them, and a party from another address still gets in."""
from __future__ import annotations

import logging
import socket
import time

import rpc.pending as pending
from rpc.auth import client_handshake

from .conftest import SECRET
from tests.cluster.attack import closed_within


def _from(address: str, server) -> socket.socket:
    return socket.create_connection(server.address, timeout=2.0, source_address=(address, 0))


def test_one_address_holds_a_few_handshake_slots_and_others_get_in(make_server, monkeypatch, caplog):
    """Before, 8 stalled connections from one host held all 8 slots of the listener until
    their handshake timed out, and a node from another address was closed at once: a
    stranger with no key kept every node and client out for as long as it kept going."""
    caplog.set_level(logging.WARNING, logger="rpc.transport")
    monkeypatch.setattr(pending, "MAX_PENDING_PER_ADDRESS", 3)
    monkeypatch.setattr(pending, "exempt", lambda host: False)  # the test's hosts are all loopback
    server = make_server(max_connections=8)
    flood = [_from("127.0.0.1", server) for _ in range(8)]
    try:
        time.sleep(0.3)
        held = [s for s in flood if not closed_within(s, 0.3)]
        assert len(held) == 3, f"{len(held)} stalled connections from one address held"
        sock = _from("127.0.0.2", server)  # another host, while the flood holds its three
        try:
            client_handshake(sock, SECRET, "peer", "n3", timeout=2.0)
        finally:
            sock.close()
    finally:
        for s in flood:
            s.close()
    lines = [r.getMessage() for r in caplog.records if "handshakes pending from 127.0.0.1" in r.getMessage()]
    assert len(lines) == 1, caplog.text


def test_loopback_is_not_limited_per_address(make_server):
    """Programs on the node's own PC (a local cluster, tests, tools) all come from one
    loopback address: only the listener's cap applies to them."""
    assert pending.exempt("127.0.0.1") and pending.exempt("::1")
    assert not pending.exempt("10.0.0.7") and not pending.exempt("not an ip")


def test_a_mapped_loopback_address_is_loopback():
    """A node listening on "::" (dual stack) sees a program on its own PC that dials
    127.0.0.1 as ::ffff:127.0.0.1: it was counted per address like a stranger's, and
    ::ffff:10.0.0.7 apart from 10.0.0.7."""
    assert pending.exempt("::ffff:127.0.0.1") and pending.exempt("::ffff:127.1.2.3")
    assert not pending.exempt("::ffff:10.0.0.7")
    table = pending.PendingHandshakes()
    socks = [object() for _ in range(3)]
    assert table.admit(socks[0], "10.0.0.7", 2)[0]
    assert table.admit(socks[1], "::ffff:10.0.0.7", 2)[0]
    assert table.admit(socks[2], "::ffff:10.0.0.7", 2) == (False, True)  # one host, whichever form
    for s in socks:
        table.settled(s, 2)
    assert table.admit(socks[2], "::ffff:10.0.0.7", 2)[0]

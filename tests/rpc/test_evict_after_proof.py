"""At its connection limit a node closes its longest-silent client connection to make
room, but only for a newcomer that has proven a key: a stranger's bare connection
must not cost an authenticated client its connection."""
from __future__ import annotations

import socket
import time

import rpc.peer_server as peer_server
from rpc.auth import client_handshake

from .conftest import CLIENT_SECRET, SECRET
from tests.cluster.attack import closed_within


def _client(server, ident: str) -> socket.socket:
    sock = socket.create_connection(server.address, timeout=2.0)
    client_handshake(sock, CLIENT_SECRET, "client", ident, timeout=2.0)
    return sock


def test_a_stranger_at_the_limit_does_not_evict_an_authenticated_client(make_server, monkeypatch):
    """Red before: every bare TCP connection made at the limit closed one silent client
    before it said a word; a party with no key, reconnecting, took every silent
    client's slot in turn."""
    monkeypatch.setattr(peer_server, "IDLE_CLIENT_EVICT", 0.2)
    server = make_server(max_connections=3)
    honest = [_client(server, f"c{k}") for k in range(3)]
    strangers = []
    try:
        time.sleep(0.4)  # all three silent past IDLE_CLIENT_EVICT
        for _ in range(3):
            strangers.append(socket.create_connection(server.address, timeout=2.0))
            time.sleep(0.1)
        assert not any(closed_within(s, 0.3) for s in honest), "a stranger evicted an authenticated client"
        for s in strangers:
            s.close()
        strangers.clear()
        newcomer = socket.create_connection(server.address, timeout=2.0)
        strangers.append(newcomer)
        client_handshake(newcomer, SECRET, "peer", "n2", timeout=2.0)  # proven: room is made
        assert sum(closed_within(s, 1.0) for s in honest) == 1
        assert not closed_within(newcomer, 0.3)
    finally:
        for s in honest + strangers:
            s.close()

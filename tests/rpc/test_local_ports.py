"""Ports for local clusters: outside the range the OS gives outgoing connections."""
from __future__ import annotations

import socket

import rpc.cluster
from prevalence._platform import ephemeral_ports
from rpc.cluster import free_port_block


def _bindable(base: int, n: int) -> bool:
    for port in range(base, base + n):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def test_a_block_lies_outside_the_ports_outgoing_connections_take():
    # Inside that range, the other nodes dialling a node that is still starting can get
    # its port as their source port (a connection to oneself included), and the node
    # then fails with "address already in use".
    low, high = ephemeral_ports()
    assert 1024 <= low <= high <= 65535
    for _ in range(20):
        base = free_port_block(9)
        assert base + 8 < low or base > high, (base, low, high)
        assert _bindable(base, 9)


def test_an_os_that_uses_every_port_still_gets_a_free_block(monkeypatch):
    monkeypatch.setattr(rpc.cluster, "ephemeral_ports", lambda: (1024, 65535))
    base = free_port_block(4)
    assert 1024 <= base <= 65535 - 4 and _bindable(base, 4)

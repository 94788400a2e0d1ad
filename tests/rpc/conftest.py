"""Shared helpers for the rpc tests: real sockets on 127.0.0.1 only, ports from the OS."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from rpc import PeerServer, PeerTransport

HOST = "127.0.0.1"
SECRET = b"0123456789abcdef0123456789abcdef"  # the peer key
CLIENT_SECRET = b"1032547698badcfe1032547698badcfe"
ADMIN_SECRET = b"23016745ab89efcd23016745ab89efcd"
KEYS = {"peer": SECRET, "client": CLIENT_SECRET, "admin": ADMIN_SECRET}  # what a node holds
OTHER_SECRET = b"fedcba9876543210fedcba9876543210"


def free_port() -> int:
    """A port nothing listens on (bound by the OS, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class Inbox:
    """on_message callback that records (from, payload) and lets tests wait for counts."""

    def __init__(self):
        self.messages: list[tuple[str, bytes]] = []
        self.cond = threading.Condition()

    def __call__(self, sender: str, payload: bytes) -> None:
        with self.cond:
            self.messages.append((sender, payload))
            self.cond.notify_all()

    def wait_count(self, n: int, timeout: float = 10.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.messages) >= n, timeout)

    def payloads(self, sender: str | None = None) -> list[bytes]:
        with self.cond:
            return [p for s, p in self.messages if sender is None or s == sender]

    def wait_for_payload(self, payload: bytes, timeout: float = 10.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: any(p == payload for _, p in self.messages), timeout)


@pytest.fixture
def make_server():
    servers = []

    def make(on_message=None, *, port=0, secret=KEYS, **kw):
        server = PeerServer(HOST, port, secret, on_message or Inbox(), **kw)
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.close()


@pytest.fixture
def make_transport():
    transports = []

    def make(self_id, peers, *, secret=SECRET, **kw):
        kw.setdefault("request_timeout", 1.0)
        t = PeerTransport(self_id, secret, peers, **kw)
        transports.append(t)
        return t

    yield make
    for t in transports:
        t.close()

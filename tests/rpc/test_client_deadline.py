"""A client call ends by its own deadline whichever step of opening or using a connection
a node stalls at: the TCP connect, the handshake, or the lookup of the remote method
that the first call of each method on a connection makes. Real sockets on 127.0.0.1:
a PeerServer whose client service stalls, a proxy that stops forwarding, a listener
that never answers."""
from __future__ import annotations

import socket
import threading
import time

import msgpack
import pytest
import rpyc

from prevalence.errors import PrevalenceError
from rpc import PeerServer
from rpc.client import ClusterClient
from rpc.config import format_address
from tests.cluster.proxy import LinkProxy
from tests.prevalence.domain import Add, Get
from tests.rpc.conftest import CLIENT_SECRET, HOST, KEYS

CALL = 0.3  # each call's own timeout, well under the attempt timeout
SLACK = 0.15  # what a call may take past it (thread wake-ups, a loaded machine)

class _Service(rpyc.Service):
    """A node's client service in miniature: ``status`` answers; every request on a
    connection waits while ``stall`` is set when it opens (a node hung right after the
    handshake)."""

    def __init__(self, stall: threading.Event | None, release: threading.Event):
        self._stall, self._release = stall, release

    def on_connect(self, conn) -> None:
        if self._stall is not None and self._stall.is_set():
            self._release.wait(10)

    def exposed_status(self) -> bytes:
        return msgpack.packb(["ok", {"role": "leader", "applied_index": 0}])


@pytest.fixture
def node():
    """A node (its address) whose new connections stall after the handshake while
    ``node.stall`` is set."""
    stall, release = threading.Event(), threading.Event()
    server = PeerServer(HOST, 0, KEYS, None, service_extra=lambda identity: _Service(stall, release))
    server.stall = stall
    yield server
    release.set()
    server.close()


def _took(call) -> tuple[float, object]:
    began = time.monotonic()
    try:
        outcome = call()
    except PrevalenceError as exc:  # ClusterUnavailable is one: the call's own end
        outcome = exc
    return time.monotonic() - began, outcome


def test_a_node_that_stalls_right_after_the_handshake_does_not_hold_a_call_past_its_deadline(node):
    """The first call on a new connection fetches the node's root object and looks the
    method up, each a round trip that waited the attempt timeout (1.5 s) for a node that
    accepted and authenticated and then stopped answering: a 0.3 s call took 1.5 s."""
    node.stall.set()
    with ClusterClient([format_address(node.address)], CLIENT_SECRET, timeout=CALL, attempt_timeout=1.5) as c:
        took, outcome = _took(c.status)
    assert took < CALL + SLACK, f"a {CALL} s call took {took:.2f} s ({outcome!r:.200})"


def test_a_method_first_used_on_a_connection_whose_node_went_silent_keeps_its_deadline(node):
    """The connection served ``status``; then the node went silent (no reset) and a
    query, the connection's first, looked ``query`` up for the attempt timeout."""
    proxy = LinkProxy(node.address)
    try:
        with ClusterClient([format_address(proxy.address)], CLIENT_SECRET, attempt_timeout=1.5) as c:
            assert c.status()["role"] == "leader"
            proxy.cut = True
            took, outcome = _took(lambda: c.query(Get("x"), "local", timeout=CALL))
    finally:
        proxy.close()
    assert took < CALL + SLACK, f"a {CALL} s query took {took:.2f} s ({outcome!r:.200})"


def test_a_slow_connect_and_a_handshake_that_never_ends_take_no_more_than_the_call(monkeypatch):
    """Connecting got up to 0.3 s of what was left of the call and the handshake, after
    it, up to 0.5 s of the same: a connect that took 0.28 s left the handshake its whole
    0.3 s, and a 0.3 s call took 0.58 s."""
    silent = socket.socket()  # the kernel completes the connect; nothing ever answers
    silent.bind((HOST, 0))
    silent.listen(8)
    real_connect = socket.create_connection

    def slow_connect(address, *args, **kwargs):
        time.sleep(0.28)  # a connect over a slow link, inside the 0.3 s connect timeout
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", slow_connect)
    try:
        with ClusterClient([format_address(silent.getsockname())], CLIENT_SECRET, timeout=CALL,
                           attempt_timeout=1.5) as c:
            took, outcome = _took(c.status)
    finally:
        silent.close()
    assert took < CALL + SLACK, f"a {CALL} s call took {took:.2f} s ({outcome!r:.200})"


class _Swallowing(rpyc.Service):
    """A leader that takes a command and is never heard from again (it may have applied
    it: its reply, or the connection, is what was lost)."""

    def exposed_register_session(self) -> bytes:
        return msgpack.packb(["ok", 7])

    def exposed_execute_batch(self, data: bytes) -> bytes:
        time.sleep(30)
        return msgpack.packb(["ok", []])


def test_a_command_sent_and_never_answered_is_an_outcome_unknown_not_just_unavailable():
    """A command whose call ran out of time after it was sent may have been applied; the
    client said only ClusterUnavailable, as for a command no node ever saw. Now such a
    command's error is also an OutcomeUnknown (look at the state before sending it
    again); one that never left is not."""
    from prevalence.errors import OutcomeUnknown
    from rpc import ClusterUnavailable, CommandUnanswered

    server = PeerServer(HOST, 0, KEYS, None, service_extra=lambda identity: _Swallowing())
    try:
        with ClusterClient([format_address(server.address)], CLIENT_SECRET, timeout=0.5) as c:
            with pytest.raises(CommandUnanswered, match="may have been applied") as sent:
                c.execute(Add("k", 1), timeout=0.5)
    finally:
        server.close()
    assert isinstance(sent.value, OutcomeUnknown) and isinstance(sent.value, ClusterUnavailable)
    with socket.socket() as unused:
        unused.bind((HOST, 0))
        nowhere = format_address(unused.getsockname()[:2])
    with ClusterClient([nowhere], CLIENT_SECRET, timeout=0.3) as c:
        with pytest.raises(ClusterUnavailable) as never:
            c.execute(Add("k", 1))
    assert not isinstance(never.value, OutcomeUnknown), repr(never.value)

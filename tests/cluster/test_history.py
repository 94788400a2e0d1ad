"""What clients are told, checked against what the cluster applied (Jepsen-style): real
node processes, real clients, faults from outside. A command reported as not applied
must not be in the state; one that may have been applied must be reported so."""
from __future__ import annotations

import signal
import socket
import sys
import threading
import time

import pytest

import rpc
from prevalence.codec import CODEC
from prevalence.errors import OutcomeUnknown
from rpc.config import format_address
from rpc.transport import NodeLink
from tests.cluster.proxy import LinkProxy
from tests.prevalence.domain import Get, Put, Snapshot, Stamp

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")]


def _tags(client: rpc.ClusterClient) -> set[str]:
    return {item[0] for item in client.query(Snapshot())[1]}


def _until(what: str, check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _pull_the_cable(proxy: LinkProxy) -> None:
    """No more connections through ``proxy``, and the open ones end now (a close alone
    leaves a socket that another thread reads from open)."""
    for s in proxy._socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    proxy.close()


def test_a_command_sent_before_the_client_lost_the_network_is_reported_as_maybe_applied(cluster):
    """A batch retried after its first call ran out of time still carries commands that
    went out with that call: when no later attempt reaches a node, each of them may have
    been applied, and the caller must hear so (not a plain "no leader answered")."""
    leader = cluster.leader()
    front = LinkProxy(cluster.configs[leader].listen)  # the client's only way to the cluster
    try:
        with cluster.client() as direct, rpc.connect([format_address(front.address)], secret=cluster.secret,
                                                     timeout=10, attempt_timeout=5) as client:
            # sessions for the three commands below, registered while replies still arrive
            [f.result(10) for f in [client.execute_async(Stamp(f"warm{i}")) for i in range(16)]]
            assert len(client._sessions.free) >= 3
            front.cut_from_target = True  # requests arrive and apply; the replies vanish
            blocker = client.execute_async(Stamp("blocker"), timeout=2.0)
            _until("the blocker to apply", lambda: "blocker" in _tags(direct))
            # queued behind the blocker's call, they leave together when it gives up
            first = client.execute_async(Stamp("first"), timeout=4.0)
            second = client.execute_async(Stamp("second"), timeout=7.0)
            _until("the batch to apply", lambda: {"first", "second"} <= _tags(direct))
            _pull_the_cable(front)  # the client's network goes: the connection drops, no node is reachable
            applied = _tags(direct)
            for name, future in (("blocker", blocker), ("first", first), ("second", second)):
                exc = future.exception(30)
                print(name, name in applied, type(exc).__name__, exc)
                assert isinstance(exc, rpc.ClusterUnavailable), (name, exc)
                if name in applied:
                    assert isinstance(exc, OutcomeUnknown), f"{name} was applied but reported as not sent: {exc}"
    finally:
        front.close()


def test_a_leader_resumed_after_a_new_election_serves_no_stale_linearizable_read(cluster):
    """SIGSTOP the leader, write through the one elected meanwhile, SIGCONT the old one:
    reads queued at the old leader while it slept, and those sent right after it wakes,
    must not return the value from before the acknowledged write ("leader" reads may, a
    moment: they skip the confirmation round)."""
    old = cluster.leader()
    with cluster.client() as client:
        client.execute(Put("x", 0))
        cluster.wait_converged()
        link = NodeLink(cluster.configs[old].listen, cluster.secret, timeout=5.0)
        try:
            assert link.call("query", CODEC.dumps(Get("x")), "linearizable") == ["ok", 0]
            cluster.kill(old, signal.SIGSTOP)
            try:
                cluster.leader(exclude={old})
                assert client.execute(Put("x", 1)) == 1  # acknowledged before any read below begins
                answers: list = []
                reader = threading.Thread(target=lambda: answers.append(
                    link.call("query", CODEC.dumps(Get("x")), "linearizable")))
                reader.start()  # queued in the sleeping node's socket
                time.sleep(0.2)
            finally:
                cluster.kill(old, signal.SIGCONT)
            reader.join(10)
            deadline = time.monotonic() + 10  # until it serves reads again (as a follower, through the leader)
            while sum(a[0] == "ok" for a in answers) < 20 and time.monotonic() < deadline:
                answers.append(link.call("query", CODEC.dumps(Get("x")), "linearizable"))
        finally:
            link.close()
    served = [a for a in answers if a[0] == "ok"]
    assert served and all(a == ["ok", 1] for a in served), answers

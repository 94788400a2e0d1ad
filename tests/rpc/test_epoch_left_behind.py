"""A node dialled by a peer of a later epoch of its cluster knows it was left out of a
`cluster recover`: it says so once, and takes no command, query or subscription."""
from __future__ import annotations

import msgpack
import pytest

from rpc.auth import AuthenticationFailed, ClusterKey, ServerAuthenticator, client_handshake
from rpc.service import ClientService

from .conftest import KEYS, SECRET
from .test_auth import connect, listener, run_server_side  # noqa: F401 - the fixture

CLUSTER = "a1a1a1a1"


def _peer(listener, node_key, peer_key):  # noqa: F811
    server = run_server_side(listener, ServerAuthenticator(dict(KEYS, peer=node_key), timeout=2, node_id="n3"))
    try:
        with connect(listener) as sock:
            client_handshake(sock, peer_key, "peer", "n1", timeout=2, target="n3")
    except AuthenticationFailed:
        pass
    finally:
        server["thread"].join(3)


def test_a_node_dialled_by_a_peer_of_a_later_epoch_knows_it_was_left_behind(listener, caplog):  # noqa: F811
    old = ClusterKey(SECRET, CLUSTER, 0)
    kept = []
    old.on_newer = lambda cluster, epoch: kept.append((cluster, epoch))  # the node writes it to its data
    _peer(listener, old, ClusterKey(SECRET, "b0b0b0b0", 4))  # another cluster: says nothing of ours
    _peer(listener, old, ClusterKey(SECRET, CLUSTER, 0))  # its own epoch
    assert old.superseded() is None
    _peer(listener, old, ClusterKey(SECRET, CLUSTER, 1))
    assert old.superseded() == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "recovered into epoch 1" in errors[0] and "stop it and rebuild it" in errors[0]
    _peer(listener, old, ClusterKey(SECRET, CLUSTER, 1))  # said once per epoch
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 1
    assert kept == [(CLUSTER, 1)]
    # the new epoch's node, dialled by the old one, learns nothing of the kind
    new = ClusterKey(SECRET, CLUSTER, 1)
    _peer(listener, new, ClusterKey(SECRET, CLUSTER, 0))
    assert new.superseded() is None


def test_a_refusal_the_node_only_read_proves_nothing(listener):  # noqa: F811
    """No proof follows a refusal: anyone could write one. The old node dialling the new
    one and refused does not take itself for superseded."""
    old = ClusterKey(SECRET, CLUSTER, 0)
    server = run_server_side(listener, ServerAuthenticator(dict(KEYS, peer=ClusterKey(SECRET, CLUSTER, 1)),
                                                           timeout=2, node_id="n1"))
    with connect(listener) as sock, pytest.raises(AuthenticationFailed, match="cluster mismatch"):
        client_handshake(sock, old, "peer", "n3", timeout=2, target="n1")
    server["thread"].join(3)
    assert old.superseded() is None


class _Host:
    def __init__(self, why):
        self.why = why
        self.node = None
        self.handlers = {"agent.status": lambda data: b"fine"}

    def superseded(self):
        return self.why

    def status(self):
        return {"role": "leader"}


def test_a_left_behind_node_answers_status_and_its_agent_but_no_command():
    host = _Host(None)
    service = ClientService(host, "op")
    execute = service._rpyc_getattr("execute")  # looked up before: the refusal holds at each call
    host.why = "this node (n3) belongs to epoch 0, the cluster was recovered into epoch 1: stop it and rebuild it"
    for name, args in (("execute", (b"x",)), ("execute_batch", (b"x",)), ("query", (b"x",)),
                       ("register_session", ()), ("read_log", (1,)), ("change_membership", ("add", "n9"))):
        reply = msgpack.unpackb(service._rpyc_getattr(name)(*args))
        assert reply == ["error", host.why], name
    assert msgpack.unpackb(execute(b"x")) == ["error", host.why]
    assert msgpack.unpackb(service._rpyc_getattr("status")())[0] == "ok"
    assert msgpack.unpackb(service._rpyc_getattr("app_call")("agent.status", b""))[:2] == ["ok", b"fine"]



"""A membership change's address: refused by the leader when it is not HOST:PORT, and one
already in the log (journaled by an older release) never stops the node applying it.

Every node applies a committed CONFIG entry and points its transport at the addresses it
names; an address it could not parse raised inside the Raft loop. One admin call with a
mistyped address stopped the leader and every follower, and each restart replayed the
entry and stopped again: the whole cluster was lost to one typo."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import msgpack
import pytest

from replication.membership import Membership
from rpc.server import NodeProcess
from rpc.service import ClientService


class _Node:
    def __init__(self):
        self.changes = []

    def change_membership(self, change):
        self.changes.append(change)
        return 7


@pytest.mark.parametrize("address", ["nocolon", "127.0.0.1:0", "127.0.0.1:99999", "127.0.0.1:7\u00b2", ":7100"])
def test_a_change_with_an_address_that_is_not_host_port_is_refused_before_it_is_proposed(address):
    node = _Node()
    host = SimpleNamespace(node=node, cluster_identity=None, address_of=lambda nid: None)
    reply = msgpack.unpackb(ClientService(host, "admin", admin=True).exposed_change_membership(
        "add_learner", "n9", address), raw=False)
    assert reply[0] == "error" and "HOST:PORT" in reply[1] and "\n" not in reply[1], reply
    assert node.changes == []  # nothing proposed: nothing in the log for every node to apply


def test_a_good_address_is_still_proposed():
    node = _Node()
    host = SimpleNamespace(node=node, cluster_identity=None, address_of=lambda nid: None)
    reply = msgpack.unpackb(ClientService(host, "admin", admin=True).exposed_change_membership(
        "add_learner", "n9", "[::1]:7109"), raw=False)
    assert reply == ["ok", 7] and node.changes[0].address == "[::1]:7109"


def test_an_address_in_the_log_that_is_not_host_port_does_not_stop_the_node(caplog):
    told = []
    me = SimpleNamespace(
        _members=None, cfg=SimpleNamespace(id="n1", peers={"n1": ("127.0.0.1", 7101), "n2": ("127.0.0.1", 7102)}),
        transport=SimpleNamespace(set_peers=told.append))
    members = Membership(("n1", "n2"), ("n8", "n9"), (("n8", "127.0.0.1:7108"), ("n9", "nocolon")))
    with caplog.at_level(logging.ERROR, logger="rpc.server"):
        NodeProcess._membership_changed(me, members)
    assert told == [{"n2": ("127.0.0.1", 7102), "n8": ("127.0.0.1", 7108)}]  # the others are dialled
    assert any("n9" in r.getMessage() and "nocolon" in r.getMessage() for r in caplog.records)

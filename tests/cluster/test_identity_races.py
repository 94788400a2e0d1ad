"""The cluster id in the log, in one process: only a committed SET_IDENTITY is ever
written to identity.toml, so two leaders that each proposed one in turn (the first cut
off before it committed) leave the whole cluster with the second's id; a peer key rebound
to a learnt id checks the next handshake; an id once taken changes only to a later epoch."""
from __future__ import annotations

import socket
import time

import pytest

from replication.errors import ConfigChangeRefused
from replication.journal_storage import create_node_data, node_data_identity
from replication.membership import ConfigChange, Membership
from replication.node import LocalNetwork, Node, NodeOptions
from rpc.auth import AuthenticationFailed, ClusterKey
from rpc.identity import ClusterIdentity
from tests.prevalence.domain import Add, Store


def wait(what, check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_an_uncommitted_id_is_never_taken_and_the_next_leaders_wins_everywhere(tmp_path):
    net = LocalNetwork()
    ids = ["n1", "n2", "n3"]
    members = Membership(tuple(ids))
    keys: dict[str, ClusterKey] = {}
    for nid in ids:
        data = str(tmp_path / nid)
        identity = create_node_data(data, nid, "new-cluster")  # as --init: no id
        keys[nid] = ClusterKey(b"k" * 32)
        node = Node(nid, data, Store, net.transport(nid), membership=members, options=NodeOptions(tick_interval=0.01))
        ClusterIdentity(data, identity, [keys[nid]]).attach(node)
        net.nodes[nid] = node.start()
    try:
        first = wait("a leader", lambda: next((n for n in net.nodes.values() if n.is_leader), None))
        first.execute(Add("x", 1))  # its term's entry committed: it may change the configuration
        others = [n for n in ids if n != first.id]
        for other in others:  # cut off: what it appends now commits nowhere
            net.cut |= {(first.id, other), (other, first.id)}
        with pytest.raises(TimeoutError):
            first.change_membership(ConfigChange.set_identity("first-uncommitted", 0), timeout=0.5)
        assert first.membership.cluster == "first-uncommitted"  # in its log, not committed
        second = wait("a leader among the others",
                      lambda: next((net.nodes[n] for n in others if net.nodes[n].is_leader), None))
        assert second.membership.cluster == ""  # its log never had the first one's entry
        for _ in range(50):
            try:
                second.change_membership(ConfigChange.set_identity("second", 0), timeout=5.0)
                break
            except ConfigChangeRefused:  # its term's first entry not committed yet
                time.sleep(0.05)
        with pytest.raises(ConfigChangeRefused, match="already has the id second"):
            second.change_membership(ConfigChange.set_identity("third", 0), timeout=5.0)
        assert node_data_identity(str(tmp_path / first.id), first.id).cluster == ""  # never took its own
        net.cut.clear()
        wait("every node to hold the second id", lambda: all(
            node_data_identity(str(tmp_path / n), n).cluster == "second" for n in ids))
        # written first, then the keys rebound: every handshake checks it from then on
        wait("every peer key to carry it", lambda: {k.cluster for k in keys.values()} == {"second"})
        wait("the first leader to drop its entry", lambda: first.membership.cluster == "second")
    finally:
        for node in net.nodes.values():
            node.stop(transfer=False)


def test_a_key_rebound_to_a_learnt_id_checks_every_later_handshake_and_a_malformed_id_is_refused():
    from tests.rpc.test_auth import SECRET, _peer_handshake

    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    try:
        ours = ClusterKey(SECRET)  # a founder made by --init: no id yet
        assert "error" not in _peer_handshake(ls, ours, ClusterKey(SECRET, "b0b0b0b0", 0))  # not compared
        ours.rebind("a1a1a1a1", 0)  # learnt from the log: the same key object the server holds
        with pytest.raises(AuthenticationFailed, match="cluster b0b0b0b0 epoch 0.*cluster a1a1a1a1 epoch 0"):
            _peer_handshake(ls, ours, ClusterKey(SECRET, "b0b0b0b0", 0))
        assert "error" not in _peer_handshake(ls, ours, ClusterKey(SECRET, "a1a1a1a1", 0))
        for bad in ("a b", "é" * 3):  # printable, so past the wire's own check: refused by name
            with pytest.raises(AuthenticationFailed, match="malformed cluster identity"):
                _peer_handshake(ls, ClusterKey(SECRET), ClusterKey(SECRET, bad, 0))
        with pytest.raises(AuthenticationFailed):  # the wire's check: too long, dropped unanswered
            _peer_handshake(ls, ClusterKey(SECRET), ClusterKey(SECRET, "x" * 65, 0))
    finally:
        ls.close()


def test_an_id_once_taken_changes_only_to_a_later_epoch_of_the_same_cluster(tmp_path, caplog):
    data = str(tmp_path / "n1")
    key = ClusterKey(b"k" * 32)
    identity = ClusterIdentity(data, create_node_data(data, "n1", "new-cluster"), [key])

    def held() -> tuple[str, int]:
        on_disk = node_data_identity(data, "n1")
        assert (on_disk.cluster, on_disk.epoch) == (key.cluster, key.epoch) == (identity.current.cluster,
                                                                                 identity.current.epoch)
        return on_disk.cluster, on_disk.epoch

    identity.adopt(Membership(("n1",)))  # a configuration without an id: nothing
    assert held() == ("", 0)
    identity.adopt(Membership(("n1",), cluster="c1", epoch=0))
    assert held() == ("c1", 0)
    identity.adopt(Membership(("n1",), cluster="other", epoch=5))  # another cluster's: never taken
    assert held() == ("c1", 0) and "the log names cluster other epoch 5" in caplog.text
    identity.adopt(Membership(("n1",), cluster="c1", epoch=1))  # a `cluster recover`'s entry
    assert held() == ("c1", 1)
    identity.adopt(Membership(("n1",), cluster="c1", epoch=0))  # the older entry, replayed
    assert held() == ("c1", 1)


def test_a_node_with_no_id_that_met_a_later_epoch_never_takes_an_older_one_from_its_catch_up(tmp_path):
    """A node wiped and added back after `cluster recover` catches up through the old
    epoch's id (a snapshot from before the recover, or the old SET_IDENTITY entry) before
    recover's own entry reaches it. Taking the old epoch there would make every later
    handshake with the recovered leader fail both ways: one reconnect or restart in that
    window and the node is cut off for good. The leader's hello already named the newer
    epoch; the older one is skipped."""
    from tests.rpc.test_auth import SECRET, _peer_handshake

    data = str(tmp_path / "n2")
    key = ClusterKey(SECRET)
    identity = ClusterIdentity(data, create_node_data(data, "n2", "join"), [key])
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    try:
        leader = ClusterKey(SECRET, "c1c1c1c1", 1)  # the survivor, after `cluster recover`
        assert "error" not in _peer_handshake(ls, key, leader)
        identity.adopt(Membership(("n1",), cluster="c1c1c1c1", epoch=0))  # its snapshot from before the recover
        assert (key.cluster, key.epoch) == ("", 0) and node_data_identity(data, "n2").cluster == ""
        assert "error" not in _peer_handshake(ls, key, leader)  # a reconnect meanwhile still passes
        identity.adopt(Membership(("n1",), cluster="c1c1c1c1", epoch=1))  # recover's entry
        assert (key.cluster, key.epoch) == ("c1c1c1c1", 1)
        ident = node_data_identity(data, "n2")
        assert (ident.cluster, ident.epoch) == ("c1c1c1c1", 1)
    finally:
        ls.close()


def test_at_start_a_node_does_not_take_the_applied_epoch_when_its_log_holds_a_later_one(tmp_path):
    """The restart inside that window: the node's log already holds recover's entry, not
    yet applied; its start must not write the older epoch it applied before stopping."""
    from types import SimpleNamespace

    data = str(tmp_path / "n2")
    key = ClusterKey(b"k" * 32)
    identity = ClusterIdentity(data, create_node_data(data, "n2", "join"), [key])
    applied = Membership(("n1",), cluster="c1c1c1c1", epoch=0)
    node = SimpleNamespace(core=SimpleNamespace(configs=SimpleNamespace(at=lambda index: applied)),
                           sm=SimpleNamespace(applied_index=7), membership=Membership(("n1",), cluster="c1c1c1c1",
                                                                                        epoch=1))
    identity.attach(node)
    assert (key.cluster, key.epoch) == ("", 0) and node_data_identity(data, "n2").cluster == ""
    node.on_config_applied(node.membership)
    assert (key.cluster, key.epoch) == ("c1c1c1c1", 1) == (node_data_identity(data, "n2").cluster,
                                                         node_data_identity(data, "n2").epoch)

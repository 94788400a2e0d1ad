"""Cluster identity on real processes: a node of another cluster is refused by its
cluster id even when it holds the right peer key, also on a cluster whose founders were
initialised one by one (``node --init``) and learnt their id from the log."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from replication.journal_storage import create_node_data, new_cluster_id, node_data_identity
from rpc.secret import KEY_FILES
from tests.cluster.harness import ROOT, TEST_ROOT, LocalCluster
from tests.prevalence.domain import Stamp

pytestmark = pytest.mark.slow


def test_a_node_with_another_clusters_data_and_the_same_key_is_refused(tmp_path):
    a = LocalCluster(tmp_path / "a", 3)
    try:
        a.leader()
        with a.client() as client:
            for i in range(20):
                client.execute(Stamp(f"a{i}"))
        # cluster b: its own configs and data, but a's keys (copied, as an operator would)
        os.makedirs(tmp_path / "b", mode=0o700)
        for name in KEY_FILES.values():
            shutil.copy2(a.dir + "/" + name, tmp_path / "b" / name)
        b = LocalCluster(tmp_path / "b", 3, start=False)
        a_id = node_data_identity(a.configs["n1"].data, "n1").cluster
        b_id = node_data_identity(b.configs["n3"].data, "n3").cluster
        assert a_id and b_id and a_id != b_id
        # a's n3 gets b's n3 data (a disk swapped between two grids' PCs)
        a.kill("n3")
        shutil.rmtree(a.configs["n3"].data)
        shutil.copytree(b.configs["n3"].data, a.configs["n3"].data)
        a.start("n3")
        lead = a.leader(exclude={"n3"})
        with a.client() as client:
            client.execute(Stamp("after"))
        time.sleep(1.5)
        st = a.status()
        assert st["n3"]["applied_index"] == 0, "the foreign node took a's log"
        assert st[lead]["applied_index"] >= 21
        refusals = [line for nid in ("n1", "n2", "n3") for line in a.log(nid).splitlines()
                    if "refused connection" in line and a_id in line and b_id in line]
        assert refusals, "no refusal naming both cluster ids"
    finally:
        a.stop()


def test_a_node_added_later_takes_the_clusters_id(tmp_path):
    from rpc.admin import add_node

    c = LocalCluster(tmp_path, 1)
    try:
        c.leader()
        add_node(c.dir, "n2")
        founder = node_data_identity(c.configs["n1"].data, "n1")
        added = node_data_identity(os.path.join(c.dir, "n2"), "n2")
        assert (added.cluster, added.epoch) == (founder.cluster, founder.epoch) and added.cluster
        assert c.status()["n1"]["reachable"]
    finally:
        c.stop()


def hand_written(directory, ids: list[str], port: int, only: tuple[str, ...] = (), **options) -> dict[str, str]:
    """Configs as an operator writes them on each PC (peers: ``ids``), no data yet."""
    from rpc.config import NodeConfig, render_config

    peers = {nid: ("127.0.0.1", port + k) for k, nid in enumerate(ids)}
    paths = {}
    for nid in only or ids:
        paths[nid] = os.path.join(str(directory), f"{nid}.toml")
        with open(paths[nid], "w", encoding="utf-8") as f:
            f.write(render_config(NodeConfig(path="", id=nid, listen=peers[nid], data=nid, root=TEST_ROOT,
                                             peers=peers, **options)))
    return paths


def init(path: str) -> None:
    done = subprocess.run([sys.executable, "-m", "rpc.cli", "node", "--config", path, "--init"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def ids(c: LocalCluster, nodes) -> dict[str, tuple[str, int]]:
    out = {}
    for nid in nodes:
        ident = node_data_identity(c.configs[nid].data, nid)
        out[nid] = (ident.cluster, ident.epoch)
    return out


def test_founders_initialised_one_by_one_take_one_id_from_the_log_and_refuse_another_clusters_node(tmp_path):
    from rpc.admin import admin
    from rpc.cluster import cluster_status_full, free_port_block, write_keys
    from rpc.config import load_config

    write_keys(str(tmp_path))
    port = free_port_block(5)
    paths = hand_written(tmp_path, ["n1", "n2", "n3"], port, snapshot_every=20)
    for path in paths.values():
        init(path)  # each PC on its own: no peer answers, no id is made
    c = LocalCluster.open(str(tmp_path), cwd=ROOT)
    try:
        assert set(ids(c, paths).values()) == {("", 0)}
        c.start("n1")
        c.start("n2")  # n3 is offline when the first leader sets the id
        c.leader()
        held = c.wait_for("n1 and n2 to hold one cluster id",
                          lambda: len(set(ids(c, ["n1", "n2"]).values())) == 1 and ids(c, ["n1"])["n1"][0]
                          and ids(c, ["n1"])["n1"], 15)
        cluster = held[0]
        with c.client() as client:
            for i in range(50):  # past two snapshots: n3 catches up from one, which must carry the id
                client.execute(Stamp(f"s{i}"))
        c.start("n3")
        c.wait_for("n3 to learn the cluster id", lambda: ids(c, ["n3"])["n3"] == held, 20)
        assert ids(c, paths) == {nid: held for nid in paths}
        assert [(st["cluster"], st["epoch"]) for st in cluster_status_full(c.dir)] == [held] * 3

        # a node of another cluster, holding the same keys, added at its address: refused
        foreign = new_cluster_id()
        four = hand_written(tmp_path, ["n1", "n2", "n3", "n4"], port, only=("n4",), join=True)["n4"]
        create_node_data(str(tmp_path / "n4"), "n4", "join", cluster=foreign)
        c.configs["n4"] = load_config(four)
        admin(str(tmp_path), "change_membership", "add_learner", "n4", f"127.0.0.1:{port + 3}")
        c.start("n4")
        with c.client() as client:
            client.execute(Stamp("after n4"))

        def refusal() -> str:
            lines = [line for nid in c.configs for line in c.log(nid).splitlines()
                     if "cluster mismatch" in line or "refused connection" in line]
            return next((line for line in lines if cluster in line and foreign in line), "")

        line = c.wait_for("a refusal naming both cluster ids", refusal, 15)
        assert "another cluster that shares the peer key" in line, line
        assert c.status()["n4"]["applied_index"] == 0, "the foreign node took the cluster's log"
        assert ids(c, ["n4"])["n4"] == (foreign, 0), "the foreign node's id changed"

        # a learner whose fresh data has no id (made while no member answered): it learns it
        five = hand_written(tmp_path, ["n1", "n2", "n3", "n4", "n5"], port, only=("n5",), join=True)["n5"]
        create_node_data(str(tmp_path / "n5"), "n5", "join")
        c.configs["n5"] = load_config(five)
        admin(str(tmp_path), "change_membership", "add_learner", "n5", f"127.0.0.1:{port + 4}")
        c.start("n5")
        c.wait_for("n5 to learn the cluster id", lambda: ids(c, ["n5"])["n5"] == held, 20)
        c.wait_converged("n5")
    finally:
        c.stop()


def test_membership_identity_on_the_wire_is_validated_and_set_only_once():
    from replication.errors import ConfigChangeRefused, DecodeError
    from replication.membership import ConfigChange, Membership, apply_change

    CC = ConfigChange

    m = Membership(("a", "b"), (), (("a", "h:1"),))
    with_id = apply_change(m, ConfigChange.set_identity("0123abcd", 0))
    assert (with_id.cluster, with_id.epoch, with_id.voters) == ("0123abcd", 0, ("a", "b"))
    assert Membership.from_wire(with_id.to_wire()) == with_id
    assert Membership.from_wire(m.to_wire()) == m  # no id: the older wire form
    with pytest.raises(ConfigChangeRefused, match="already has the id"):
        apply_change(with_id, CC.set_identity("ffff", 0))
    kept = apply_change(with_id, CC.add_learner("c", "h:3"))  # every later change keeps it
    assert (kept.cluster, kept.epoch) == ("0123abcd", 0)
    for bad in ("", "x" * 65, "a b", "é", 7, None, b"ab"):
        with pytest.raises(ConfigChangeRefused):
            apply_change(m, CC.set_identity(bad, 0))  # type: ignore[arg-type]
    for identity in (["ab"], ["ab", -1], ["ab", True], ["ab", 1 << 31], ["ab", 1.0], [7, 0], ["a\n", 0],
                     "ab", ["x" * 65, 0], {"ab": 0}):
        with pytest.raises(DecodeError):
            Membership.from_wire([["a"], [], {}, identity])


def test_data_without_an_id_keeps_working_and_gets_one_at_the_first_election(tmp_path):
    import dataclasses

    from replication.journal_storage import write_identity

    c = LocalCluster(tmp_path, 3, start=False)
    try:
        for nid, cfg in c.configs.items():  # data of an earlier version: no cluster id
            write_identity(cfg.data, dataclasses.replace(node_data_identity(cfg.data, nid), cluster="", epoch=0))
        for nid in c.configs:
            c.start(nid)
        c.leader()
        with c.client() as client:
            client.execute(Stamp("works"))
        held = c.wait_for("one id on every node", lambda: len(set(ids(c, c.configs).values())) == 1
                          and ids(c, ["n1"])["n1"][0] and ids(c, ["n1"])["n1"], 15)
        assert held[1] == 0
    finally:
        c.stop()


def test_adding_a_node_that_the_cluster_does_not_take_leaves_nothing_behind(tmp_path, monkeypatch):
    """`cluster add` wrote DIR/n4.toml and created n4's data before asking the leader; with
    no node running, or the change refused, they stayed: `status` listed n4 as a node of the
    cluster, its data had no cluster id, and every retry was refused ("already configured")."""
    import rpc.admin as cluster_mod
    from rpc.admin import add_node
    from rpc.cluster import free_port_block, write_cluster
    from rpc.config import ConfigError

    directory = str(tmp_path / "c")
    write_cluster(directory, 3, free_port_block(3), "tests.prevalence.domain:Store")
    before = sorted(os.listdir(directory))
    with pytest.raises(ConfigError, match="no node of .* answers.*nothing was changed"):
        add_node(directory, "n4", "127.0.0.1:1")
    assert sorted(os.listdir(directory)) == before

    c = LocalCluster(tmp_path / "live", 1)
    try:
        c.leader()
        before = sorted(os.listdir(c.dir))

        def refused(directory, method, *args):
            raise cluster_mod.MembershipNotChanged(f"{method} refused by n1: no (nothing was changed)")
        monkeypatch.setattr(cluster_mod, "admin", refused)
        with pytest.raises(ConfigError, match="refused by n1: no.*nothing was changed.*removed n2.toml and its data"):
            add_node(c.dir, "n2")
        assert sorted(os.listdir(c.dir)) == before
        monkeypatch.undo()
        add_node(c.dir, "n2")  # and the retry goes through
        assert c.status()["n1"]["reachable"]
    finally:
        c.stop()


def test_an_add_the_cluster_refuses_removes_only_what_it_made(tmp_path, monkeypatch):
    """DIR/<id>/ may exist before `cluster add` (it holds no node data, so add goes on):
    the rollback removed the whole directory, the operator's files in it too."""
    import rpc.admin as cluster_mod
    from rpc.admin import add_node
    from rpc.cluster import free_port_block, write_cluster
    from rpc.config import ConfigError

    directory = str(tmp_path / "c")
    write_cluster(directory, 3, free_port_block(3), "tests.prevalence.domain:Store")
    mine = tmp_path / "c" / "n4" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("the operator's")
    monkeypatch.setattr(cluster_mod, "cluster_status_full", lambda d: [{"cluster": "abc", "epoch": 1}])

    def refused(directory, method, *args):
        raise cluster_mod.MembershipNotChanged(f"{method} refused by n1: no")
    monkeypatch.setattr(cluster_mod, "admin", refused)
    with pytest.raises(ConfigError, match="refused by n1: no"):
        add_node(directory, "n4", "127.0.0.1:1")
    assert mine.read_text() == "the operator's" and sorted(os.listdir(mine.parent)) == ["notes.txt"]
    assert not os.path.exists(os.path.join(directory, "n4.toml"))


def test_an_add_whose_data_cannot_be_written_leaves_no_half_data(tmp_path, monkeypatch):
    """A full disk as the identity is written left n4's hard state: every retry was then
    refused ("already holds node data") though the node never existed."""
    import errno

    import replication.journal_storage as js
    import rpc.admin as cluster_mod
    from rpc.admin import add_node
    from rpc.cluster import free_port_block, write_cluster

    directory = str(tmp_path / "c")
    write_cluster(directory, 3, free_port_block(3), "tests.prevalence.domain:Store")
    monkeypatch.setattr(cluster_mod, "cluster_status_full", lambda d: [{"cluster": "abc", "epoch": 1}])
    monkeypatch.setattr(cluster_mod, "admin", lambda *a: 5)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    real = js._write_identity
    monkeypatch.setattr(js, "_write_identity", full)
    with pytest.raises(OSError):
        add_node(directory, "n4", "127.0.0.1:1")
    monkeypatch.setattr(js, "_write_identity", real)
    assert add_node(directory, "n4", "127.0.0.1:1").endswith("n4.toml")  # the retry goes through


def test_a_membership_change_whose_leader_halted_is_not_called_unchanged(tmp_path, monkeypatch):
    """A leader that halts after proposing the change (NodeHalted: the others may still
    commit it) answered "not_leader", which `cluster add` takes for certain nothing
    changed: it removed the new node's config and data while the cluster may count it."""
    import msgpack

    import rpc.cluster as cluster_mod
    import rpc.admin as admin_mod
    from replication.errors import NodeHalted
    from rpc.service import ClientService

    class Node:
        def change_membership(self, change):
            raise NodeHalted("node 'n1' stopped (disk); the command's outcome is decided by the other nodes")

    class Host:
        node, cluster_identity = Node(), None

        def address_of(self, nid):
            return None

    reply = msgpack.unpackb(ClientService(Host(), "admin", admin=True).exposed_change_membership(
        "add_learner", "n4", "127.0.0.1:1"), raw=False)
    assert reply[0] == "unavailable" and "may still take effect" in reply[1], reply

    directory = str(tmp_path / "c")
    cluster_mod.write_cluster(directory, 1, cluster_mod.free_port_block(1), "tests.prevalence.domain:Store")
    monkeypatch.setattr(admin_mod, "cluster_status_full", lambda d: [{"cluster": "abc", "epoch": 1}])
    monkeypatch.setattr(admin_mod, "cluster_status", lambda d: [{"id": "n1", "role": "leader", "reachable": True}])
    monkeypatch.setattr(admin_mod, "_admin_call", lambda *a, **k: reply)
    with pytest.raises(admin_mod.ConfigError, match="may still take effect") as info:
        admin_mod.add_node(directory, "n2", "127.0.0.1:1")
    assert not isinstance(info.value, admin_mod.MembershipNotChanged)
    assert os.path.exists(os.path.join(directory, "n2.toml")) and os.path.isdir(os.path.join(directory, "n2"))


def test_admin_asks_the_configured_nodes_whatever_ids_their_statuses_claim(tmp_path, monkeypatch):
    """A status naming an id no config has raised KeyError out of admin() (a traceback
    from `prevalence cluster add/remove/promote`)."""
    import rpc.cluster as cluster_mod
    import rpc.admin as admin_mod

    directory = str(tmp_path / "c")
    cluster_mod.write_cluster(directory, 2, cluster_mod.free_port_block(2), "tests.prevalence.domain:Store")
    monkeypatch.setattr(admin_mod, "cluster_status", lambda d: [
        {"id": "impostor", "role": "leader", "reachable": True}, {"id": "n2", "role": "follower", "reachable": True}])
    asked = []
    monkeypatch.setattr(admin_mod, "_admin_call", lambda cfg, *a, **k: asked.append(cfg.id) or ["ok", 7])
    assert admin_mod.admin(directory, "change_membership", "remove", "n3") == 7
    assert asked == ["n2"]

"""Cluster identity on real processes: a node of another cluster is refused by its
cluster id even when it holds the right peer key."""
from __future__ import annotations

import os
import shutil
import time

import pytest

from replication.journal_storage import node_data_identity
from rpc.secret import KEY_FILES
from tests.cluster.harness import LocalCluster
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
    from rpc.cluster import add_node

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

"""`prevalence cluster recover` on real processes: a 3-node cluster loses two voters'
disks for good and comes back from the survivor, keeping what the survivor had."""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time

import pytest

from replication.journal_storage import node_data_identity, write_identity
from rpc.cli import main
from rpc.admin import add_node, admin
from rpc.config import load_config
from tests.cluster.harness import LocalCluster
from tests.prevalence.domain import Snapshot, Stamp

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")]


def tags(c: LocalCluster, nid: str) -> list[str]:
    return [item[0] for item in c.call(nid, "query", Snapshot())[1][1]]


def test_a_cluster_that_lost_two_voters_for_good_recovers_from_the_survivor(tmp_path, capsys):
    c = LocalCluster(tmp_path, 3)
    try:
        survivor = c.leader()
        lost, old = sorted(n for n in c.configs if n != survivor)
        with c.client() as client:
            acked = [f"w{i}" for i in range(40)]
            for tag in acked:
                client.execute(Stamp(tag))
        for nid in c.configs:
            c.kill(nid)
        shutil.rmtree(c.configs[lost].data)  # gone for good
        shutil.move(c.configs[old].data, str(tmp_path / "old-disk"))  # a disk that may come back later
        before = node_data_identity(c.configs[survivor].data, survivor)

        assert main(["cluster", "recover", "--cluster", c.dir, "--survivor", survivor]) == 0
        out = capsys.readouterr().out
        assert f"epoch {before.epoch + 1}" in out and "keeping its log up to index" in out and "term" in out

        c.start(survivor)
        assert c.leader(exclude={lost, old}) == survivor
        assert tags(c, survivor)[:len(acked)] == acked  # every acknowledged write the survivor had
        with c.client() as client:
            client.execute(Stamp("after"))
        assert tags(c, survivor)[-1] == "after"

        # the old disk comes back with its old config: refused with the epoch error, nothing changes
        shutil.copytree(str(tmp_path / "old-disk"), c.configs[old].data)
        c.start(old)
        time.sleep(1.5)
        refusals = [line for line in c.log(survivor).splitlines()
                    if "refused connection" in line and "before a `cluster recover`" in line]
        assert refusals and f"epoch {before.epoch}" in refusals[-1] and f"epoch {before.epoch + 1}" in refusals[-1]
        assert c.status()[survivor]["role"] == "leader" and tags(c, survivor)[-1] == "after"
        st = c.status()
        assert st[old]["role"] != "leader" and st[old]["applied_index"] < st[survivor]["applied_index"]
        c.kill(old)

        # the others come back as learners with fresh data, then voters
        for nid in (lost, old):
            address = f"{c.configs[nid].listen[0]}:{c.configs[nid].listen[1]}"
            os.replace(c.configs[nid].path, c.configs[nid].path + ".old")
            if os.path.exists(c.configs[nid].data):
                shutil.move(c.configs[nid].data, str(tmp_path / f"{nid}.wiped"))
            c.configs[nid] = load_config(add_node(c.dir, nid, address))
            if nid == old:  # as if made while no member answered: no id, learnt from the log
                made = node_data_identity(c.configs[nid].data, nid)
                write_identity(c.configs[nid].data, dataclasses.replace(made, cluster="", epoch=0))
            c.start(nid)
            c.wait_for(f"{nid} to catch up", lambda nid=nid: c.status()[nid]["applied_index"]
                       >= c.status()[survivor]["commit_index"], 15)
            admin(c.dir, "change_membership", "promote_learner", nid)
        with c.client() as client:
            client.execute(Stamp("all back"))
        c.wait_converged()
        for nid in c.configs:
            assert tags(c, nid) == acked + ["after", "all back"]
            # the new epoch from recover's CONFIG entry, past the old epoch's id entry in the log
            ident = node_data_identity(c.configs[nid].data, nid)
            assert (ident.cluster, ident.epoch) == (before.cluster, before.epoch + 1), nid
    finally:
        c.stop()


def test_recover_refuses_a_running_survivor_and_an_unknown_one_and_changes_nothing(tmp_path, capsys):
    c = LocalCluster(tmp_path, 1)
    try:
        c.leader()
        # the node writes its term's first entries just after it reports itself leader:
        # wait until a command is through, so that only `recover` could change the files
        with c.client() as client:
            client.execute(Stamp("settled"))
        c.wait_converged()
        before = node_data_identity(c.configs["n1"].data, "n1")
        files = sorted(os.listdir(os.path.join(c.configs["n1"].data, "journal")))
        assert main(["cluster", "recover", "--cluster", c.dir, "--survivor", "n1"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "in use by another process" in err[0]
        assert main(["cluster", "recover", "--cluster", c.dir, "--survivor", "n9"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no configuration n9.toml" in err[0]
        assert node_data_identity(c.configs["n1"].data, "n1") == before
        assert sorted(os.listdir(os.path.join(c.configs["n1"].data, "journal"))) == files
        assert c.status()["n1"]["role"] == "leader"
    finally:
        c.stop()

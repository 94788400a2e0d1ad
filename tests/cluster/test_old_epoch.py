"""Nodes left in the old epoch by `cluster recover` and started again with their old data
and config elect a master of their own: what clients, `status` and those nodes do about it."""
from __future__ import annotations

import os
import sys

import pytest

import rpc
from prevalence.errors import PrevalenceError
from rpc.cli import main
from rpc.localcluster import LocalCluster as Opened
from tests.cluster.harness import LocalCluster
from tests.prevalence.domain import Stamp

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")]


def test_an_old_epoch_that_elects_its_own_master_gets_no_command_acknowledged(tmp_path, capsys):
    c = LocalCluster(tmp_path, 3)
    try:
        c.leader()
        with c.client() as client:
            client.execute(Stamp("before"))
        for nid in c.configs:
            c.kill(nid)
        assert main(["cluster", "recover", "--cluster", c.dir, "--survivor", "n1"]) == 0
        capsys.readouterr()
        for nid in c.configs:  # n2 and n3 come back as services, with their old data and config
            c.start(nid)
        c.wait_for("a master in each epoch", lambda: sorted(
            n for n, r in c.status().items() if r["role"] == "leader") in (["n1", "n2"], ["n1", "n3"]), 15)

        # a client of the directory that reaches only the old nodes (n1 left out of its list)
        operator = Opened.open(c.dir)
        del operator.configs["n1"]
        with operator.client(timeout=3) as client:
            with pytest.raises(PrevalenceError) as err:
                client.execute(Stamp("split"))
        message = str(err.value)
        assert "belongs to epoch 0, the cluster was recovered into epoch 1: stop it and rebuild it" in message
        assert "\n" not in message

        # a client given no epoch (an older program's way): the old nodes heard of epoch 1
        # from n1, which dials them, and take no command either
        c.wait_for("the old nodes to hear of epoch 1", lambda: all(
            c.status()[n].get("superseded_by") == 1 for n in ("n2", "n3")), 10)
        with rpc.connect([c.addresses["n2"], c.addresses["n3"]], secret=c.secret, timeout=3) as client:
            with pytest.raises(PrevalenceError, match="recovered into epoch 1: stop it and rebuild it"):
                client.execute(Stamp("split"))

        # status: one master, the old ones named as not members of epoch 1
        main(["status", "--cluster", c.dir])
        out = capsys.readouterr().out
        table, _, notes = out.partition("n1 leads")
        assert "leader" in table.splitlines()[2] and "not a member" not in table.splitlines()[2]
        assert all("leader" not in line and "not of epoch 1" in line for line in table.splitlines()[3:5])
        for nid in ("n2", "n3"):
            assert f"{nid}: not a member of epoch 1: this node belongs to epoch 0" in notes
        assert "later epoch than the others" not in notes and "stale" not in out
        with c.client() as client:
            client.execute(Stamp("after"))

        # n2 restarts (its PC rebooted) while n1 is down: it remembers what n1 proved
        c.kill("n1")
        c.kill("n2")
        c.start("n2")
        c.wait_for("n2 to answer", lambda: c.status()["n2"]["reachable"], 10)
        assert c.status()["n2"].get("superseded_by") == 1
        with rpc.connect([c.addresses["n2"], c.addresses["n3"]], secret=c.secret, timeout=3) as client:
            with pytest.raises(PrevalenceError, match="recovered into epoch 1: stop it and rebuild it"):
                client.execute(Stamp("split"))
    finally:
        c.stop()

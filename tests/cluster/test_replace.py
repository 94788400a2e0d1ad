"""`grid replace` on real processes: a PC whose disk died comes back as a voter in one
command; a replacement that would cost the quorum is refused and changes nothing."""
from __future__ import annotations

import os
import shutil
import signal
import sys

import pytest

from app.cli import main as grid
from tests.cluster.harness import LocalCluster
from tests.prevalence.domain import Snapshot, Stamp

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")]


def tags(c: LocalCluster, nid: str) -> list[str]:
    return [item[0] for item in c.call(nid, "query", Snapshot())[1][1]]


def test_a_pc_whose_disk_died_is_replaced_in_one_command(tmp_path, capsys):
    c = LocalCluster(tmp_path, 3)
    started = None
    try:
        lead = c.leader()
        dead = sorted(n for n in c.configs if n != lead)[0]
        with c.client() as client:
            for i in range(30):
                client.execute(Stamp(f"w{i}"))
        c.wait_converged()  # the other two are up and heard: a PC died in a healthy cluster
        c.kill(dead)
        shutil.rmtree(c.configs[dead].data)
        address = f"127.0.0.1:{c.configs[dead].listen[1]}"
        assert grid(["replace", dead, "--address", address, "--cluster", c.dir, "--timeout", "30"]) == 0
        out = capsys.readouterr().out
        for step in ("1/5 removing", "2/5 wiping", "3/5 adding", "4/5 waiting", "5/5 promoting", "replaced"):
            assert step in out, out
        st = c.status()
        started = st[dead]["pid"]
        assert st[dead]["reachable"] and st[lead]["role"] == "leader"
        with c.client() as client:
            client.execute(Stamp("after"))
        c.wait_converged()
        assert tags(c, dead) == [f"w{i}" for i in range(30)] + ["after"]
        from rpc.cluster import cluster_status_full

        assert any(sorted(r["voters"]) == sorted(c.configs) for r in cluster_status_full(c.dir))
    finally:
        if started:
            os.kill(started, signal.SIGKILL)  # the process replace started
        c.stop()


def test_a_replacement_that_would_cost_the_quorum_is_refused_and_changes_nothing(tmp_path, capsys):
    c = LocalCluster(tmp_path, 3)
    try:
        lead = c.leader()
        a, b = sorted(n for n in c.configs if n != lead)
        c.kill(b)
        c.kill(lead)  # one of three voters left: removing `a`... or anything: no majority
        files = sorted(os.listdir(c.dir))
        assert grid(["replace", b, "--address", "127.0.0.1:1", "--cluster", c.dir]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "would leave no majority" in err[0] and "grid recover" in err[0], err
        assert sorted(os.listdir(c.dir)) == files and os.path.isdir(c.configs[b].data)
    finally:
        c.stop()


def test_grid_recover_makes_the_survivor_the_one_voter_of_a_new_epoch(tmp_path, capsys):
    c = LocalCluster(tmp_path, 3)
    try:
        lead = c.leader()
        with c.client() as client:
            client.execute(Stamp("kept"))
        for nid in c.configs:
            c.kill(nid)
        assert grid(["recover", "--survivor", lead, "--cluster", c.dir]) == 0
        assert "epoch 1" in capsys.readouterr().out
        c.start(lead)
        assert c.leader(exclude=set(c.configs) - {lead}) == lead and tags(c, lead) == ["kept"]
    finally:
        c.stop()

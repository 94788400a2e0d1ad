"""Membership and maintenance through the CLI, on real processes."""
from __future__ import annotations

import sys
import time

import pytest

from rpc.cli import main
from rpc.config import load_config
from tests.cluster.harness import LocalCluster
from tests.prevalence.domain import Snapshot, Stamp

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")]


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_add_promote_transfer_remove(tmp_path, capsys):
    c = LocalCluster(tmp_path, 3)
    try:
        leader = c.leader()
        for k in range(20):
            assert c.call(leader, "execute", Stamp(f"t{k}"))[0] == "ok"
        assert main(["cluster", "add", "--cluster", str(tmp_path), "--id", "n4"]) == 0
        assert "added as a learner" in capsys.readouterr().out
        # not started yet: a voter that holds nothing would cost the quorum its slack
        assert main(["cluster", "promote", "--cluster", str(tmp_path), "--id", "n4"]) == 1
        err = capsys.readouterr().err
        assert "refused" in err and "'n4' has not caught up" in err and "nothing was changed" in err, err
        c.configs["n4"] = load_config(str(tmp_path / "n4.toml"))
        c.start("n4")
        c.wait_converged("n4")
        assert c.status()["n4"]["role"] == "follower"
        assert main(["cluster", "promote", "--cluster", str(tmp_path), "--id", "n4"]) == 0
        assert main(["cluster", "transfer", "--cluster", str(tmp_path), "--to", "n4"]) == 0
        wait_for(lambda: c.status()["n4"]["role"] == "leader", what="n4 to lead")
        assert c.call("n4", "execute", Stamp("from-n4"))[0] == "ok"
        victim = "n1"
        assert main(["cluster", "remove", "--cluster", str(tmp_path), "--id", victim]) == 0
        c.kill(victim)
        # 3 voters remain (n2, n3, n4): killing one more still leaves a majority
        c.kill("n2")
        assert c.call("n4", "execute", Stamp("after-removal"))[0] == "ok"
        tags = [item[0] for item in c.call("n4", "query", Snapshot())[1][1]]
        assert tags[-2:] == ["from-n4", "after-removal"] and len(tags) == 22
    finally:
        c.stop()


def test_a_removal_that_would_stop_the_cluster_is_refused_and_the_dead_voter_can_go(tmp_path, capsys):
    """With one of three voters down, removing a live one left two voters, one of them
    dead: the change committed and the cluster stopped for good. The leader now refuses
    it (etcd's strict reconfiguration check); removing the dead voter is the repair."""
    c = LocalCluster(tmp_path, 3)
    try:
        leader = c.leader()
        dead, live = [n for n in sorted(c.configs) if n != leader]
        c.wait_converged()  # the leader has heard both: the live one counts as answering
        c.kill(dead)
        time.sleep(1.5)  # the leader counts a voter gone after one or two election timeouts (0.25-0.5 s each)
        assert main(["cluster", "remove", "--cluster", str(tmp_path), "--id", live]) == 1
        err = capsys.readouterr().err
        assert "the cluster would stop" in err and f"answer the leader ({leader})" in err, err
        assert "nothing was changed" in err
        assert c.call(leader, "execute", Stamp("still-serving"))[0] == "ok"
        assert main(["cluster", "remove", "--cluster", str(tmp_path), "--id", dead]) == 0
        assert c.call(leader, "execute", Stamp("after-repair"))[0] == "ok"
    finally:
        c.stop()

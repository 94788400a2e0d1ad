"""A rolling upgrade with real node processes: the upgraded leader journals an entry
that the nodes still on the older release cannot read. They must stop applying before
it, stay up, keep storing and voting (the quorum survives), say so, never lead, and
apply on once restarted on the newer release."""
from __future__ import annotations

import argparse
import json
import os
import re
import time

import pytest

from rpc.secret import load_secret
from rpc.transport import NodeLink
from tests.cluster.harness import LocalCluster
from tests.cluster.release_new import Label
from tests.prevalence.domain import Add, Get

pytestmark = pytest.mark.slow

OLD, NEW = "tests.cluster.release_old", "tests.cluster.release_new"


def run_release(c: LocalCluster, nid: str, module: str) -> None:
    """Restart ``nid`` with the application release ``module``."""
    if c.alive(nid):
        c.kill(nid)
    path = c.configs[nid].path
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(re.sub(r"^imports = .*$", f'imports = ["{module}"]', text, flags=re.M))
    c.start(nid)


def local_get(c: LocalCluster, nid: str, key: str):
    from prevalence.codec import CODEC
    with NodeLink(c.configs[nid].listen, load_secret(os.path.join(c.dir, "client.secret")), ident="check",
                  timeout=5.0) as link:
        return link.call("query", CODEC.dumps(Get(key)), "local")


def test_nodes_on_the_older_release_stop_before_what_they_cannot_read_and_keep_the_quorum(tmp_path, capsys):
    c = LocalCluster(tmp_path, 3, imports=[OLD])
    try:
        c.leader()
        with c.client(timeout=10) as client:
            client.execute(Add("x", 1))
        run_release(c, "n1", NEW)
        c.wait_converged("n1")
        leader = c.leader()
        if leader != "n1":
            with NodeLink(c.configs[leader].listen, load_secret(os.path.join(c.dir, "admin.secret")), ident="ops",
                          timeout=10.0, role="admin") as link:
                assert link.call("transfer_leadership", "n1") == ["ok", None]
            assert c.leader(exclude={leader}) == "n1"

        with c.client(timeout=10) as client:
            assert client.execute(Label("a", 5)) == 5
            index = c.status()["n1"]["applied_index"]  # the entry the older release cannot read
            assert client.execute(Add("x", 1)) == 2, "the quorum did not survive the older nodes"
        time.sleep(0.3)
        st = c.status()
        for nid in ("n2", "n3"):
            assert c.alive(nid), f"{nid} exited: {c.tail(nid)}"
            assert st[nid]["applied_index"] == index - 1, st[nid]
            assert st[nid]["commit_index"] > index, st[nid]
            assert st[nid]["role"] == "follower"
            lines = [ln for ln in c.log(nid).splitlines() if "upgrade this node" in ln]
            assert len(lines) == 1 and "ERROR" in lines[0] and f"entry {index}" in lines[0] \
                and "upgrade.Label" in lines[0] and "version 2" in lines[0], lines
        assert local_get(c, "n2", "x") == ["ok", 1]  # its state: exactly before that entry
        from rpc.cli import cmd_status
        capsys.readouterr()
        cmd_status(argparse.Namespace(cluster=c.dir, json=True))
        report = json.loads(capsys.readouterr().out)
        assert report["conditions"]["n2"]["apply_blocked"]["index"] == index
        assert report["conditions"]["n2"]["apply_blocked"]["applied"] == index - 1
        assert report["conditions"]["n1"]["apply_blocked"] is None
        assert all(set(n) == set(report["nodes"][0]) for n in report["nodes"])

        run_release(c, "n2", NEW)  # the next step of the rolling upgrade: it applies on
        c.wait_converged("n2")
        assert local_get(c, "n2", "a") == ["ok", 5] and local_get(c, "n2", "x") == ["ok", 2]

        c.kill("n1")  # n3, still on the older release, must not take over
        assert c.leader(exclude={"n1"}) == "n2"
        assert c.status()["n3"]["role"] == "follower"
    finally:
        c.stop()

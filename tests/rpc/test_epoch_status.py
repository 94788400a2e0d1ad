"""`prevalence status` after `cluster recover`: nodes ranked by epoch before term, a node
of an older epoch shown as not a member of the current one, never as a second master."""
from __future__ import annotations

import json

import rpc.cluster
from rpc.cli import main
from rpc.epochs import current_epoch, epoch_notes
from rpc.status_report import FIELDS

CLUSTER = "a1a1a1a1"


def _row(nid, role, term, epoch, cluster=CLUSTER, **more):
    row = dict.fromkeys(FIELDS)
    row.update(id=nid, address=f"127.0.0.1:{7000 + int(nid[1:])}", role=role, term=term, commit_index=9,
               applied_index=9, pid=100, config=f"/c/{nid}.toml", reachable=True, leader=nid if role == "leader"
               else None, voters=["n1"] if epoch else ["n1", "n2", "n3"], learners=[], cluster=cluster, epoch=epoch,
               **more)
    return row


def test_status_ranks_by_epoch_before_term(monkeypatch, capsys):
    """The old epoch's master has the higher term (its nodes kept electing), and they are
    two against one: neither makes it the master, nor the recovered node the odd one out."""
    rows = [_row("n1", "leader", 3, 1), _row("n2", "leader", 9, 0), _row("n3", "follower", 9, 0)]
    monkeypatch.setattr(rpc.cluster, "cluster_status", lambda directory: rows)
    assert main(["status", "--cluster", "/nowhere"]) == 0  # no epoch file: the newest epoch is the cluster's
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "leader" in lines[2] and all("not of epoch 1" in line and "leader" not in line for line in lines[3:5])
    assert "n1 leads (term 3)" in out and "stale" not in out and "later epoch than the others" not in out
    for nid in ("n2", "n3"):
        assert f"{nid}: not a member of epoch 1: this node belongs to epoch 0, the cluster was recovered into " \
               "epoch 1: stop it and rebuild it" in out
    assert main(["status", "--cluster", "/nowhere", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["master"] == "n1 leads (term 3)"
    assert [doc["conditions"][n]["other_epoch"] for n in ("n1", "n2", "n3")] == [False, True, True]


def test_status_takes_the_directory_s_epoch_and_the_nodes_newest(tmp_path):
    rows = [_row("n1", "leader", 3, 1), _row("n2", "follower", 3, 1), _row("n3", "leader", 2, 0, superseded_by=1)]
    assert current_epoch(rows, None) == (CLUSTER, 1)
    assert [n for n, _ in epoch_notes(rows, (CLUSTER, 1))] == ["n3"]
    # the directory's file is older than a recover made from another copy of it: said so
    rows = [_row("n1", "leader", 3, 2), _row("n2", "follower", 3, 1)]
    notes = dict(epoch_notes(rows, (CLUSTER, 1)))
    assert "n2" in notes and "names epoch 1, yet nodes of epoch 2 answer" in notes["directory"]
    # another cluster that shares the client key, named as such when the directory says which
    rows = [_row("n1", "leader", 3, 0), _row("n2", "leader", 3, 0, cluster="b0b0b0b0")]
    notes = epoch_notes(rows, (CLUSTER, 0))
    assert [n for n, _ in notes] == ["n2"] and "another cluster" in notes[0][1]
    assert rows[1]["other_epoch"] == "another cluster" and not rows[0].get("other_epoch")
    # nothing names a cluster (founders before their first leader, an earlier release): no note
    assert epoch_notes([_row("n1", "leader", 3, 0, cluster="")], None) == []

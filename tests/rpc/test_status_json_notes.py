"""`prevalence status --json`: what the table says of a node beside its fields is under
``conditions``, all of it."""
from __future__ import annotations

import json

import rpc.cluster
from rpc.cli import main
from rpc.status_report import FIELDS


def _row(nid: str, role: str, term: int, voters: list[str]) -> dict:
    row = dict.fromkeys(FIELDS)
    row.update(id=nid, address=f"127.0.0.1:{7000 + int(nid[1:])}", role=role, term=term, commit_index=9,
               applied_index=9, pid=100, config=f"/c/{nid}.toml", reachable=True, leader="n1" if term == 5 else nid,
               voters=voters, learners=[], cluster="", epoch=0)
    return row


def test_a_node_with_two_notes_keeps_both_under_conditions(monkeypatch, capsys):
    """n3 was removed while it led term 3 and still says it leads: the table printed both
    of its notes (not a member; a stale leader), the JSON kept the last one only."""
    rows = [_row("n1", "leader", 5, ["n1", "n2"]), _row("n2", "follower", 5, ["n1", "n2"]),
            _row("n3", "leader", 3, ["n1", "n2", "n3"])]
    monkeypatch.setattr(rpc.cluster, "cluster_status", lambda directory: rows)
    assert main(["status", "--cluster", "/nowhere", "--json"]) == 0
    note = json.loads(capsys.readouterr().out)["conditions"]["n3"]["note"]
    assert "not a member" in note and "says it leads, in term 3" in note, note


def test_a_node_that_cannot_apply_an_entry_says_so_under_conditions_and_in_the_table(monkeypatch, capsys):
    """A node of the older release in a rolling upgrade: its nine fields stay the
    contract's; what it cannot read is a condition, and a note in the table."""
    from rpc.status_report import status_row

    blocked = {"index": 8, "reason": "entry 8 (upgrade.Label version 2): written as version 2", "applied": 7}
    st = {"id": "n2", "role": "follower", "term": 5, "commit_index": 9, "applied_index": 7, "pid": 1,
          "leader": "n1", "voters": ["n1", "n2"], "apply_blocked": blocked}
    row = status_row("n2", "127.0.0.1:7002", "/c/n2.toml", ["ok", st])
    assert row["apply_blocked"] == blocked
    assert status_row("n2", "a:1", None, ["ok", {**st, "apply_blocked": {"index": "x"}}])["apply_blocked"] is None
    rows = [_row("n1", "leader", 5, ["n1", "n2"]), {**_row("n2", "follower", 5, ["n1", "n2"]), **row}]
    monkeypatch.setattr(rpc.cluster, "cluster_status", lambda directory: rows)
    assert main(["status", "--cluster", "/nowhere", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["conditions"]["n2"]["apply_blocked"] == blocked and report["conditions"]["n1"]["apply_blocked"] is None
    assert all(set(n) == set(FIELDS) for n in report["nodes"])
    assert main(["status", "--cluster", "/nowhere"]) == 0
    table = capsys.readouterr().out
    assert "follower, cannot apply" in table
    assert "n2: cannot apply entry 8 (upgrade.Label version 2): written as version 2: upgrade this node" in table


def test_a_stalled_disk_is_shown_in_the_table_and_under_conditions(monkeypatch, capsys):
    """A node whose disk write has hung for 15 s still answers: the table said
    "follower", as of a healthy node."""
    rows = [_row("n1", "leader", 5, ["n1", "n2"]), _row("n2", "follower", 5, ["n1", "n2"])]
    rows[1]["disk_stalled"] = 15.2
    monkeypatch.setattr(rpc.cluster, "cluster_status", lambda directory: rows)
    assert main(["status", "--cluster", "/nowhere"]) == 0
    table = capsys.readouterr().out
    assert "follower, disk stalled 15 s" in table, table
    assert main(["status", "--cluster", "/nowhere", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["conditions"]["n2"]["disk_stalled"] == 15.2 and out["conditions"]["n1"]["disk_stalled"] == 0.0

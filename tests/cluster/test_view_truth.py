"""`prevalence status --json` says what the table says: why a node gives no status, and
which node answers yet takes no part (removed while it runs)."""
from __future__ import annotations

import json

import rpc.cluster
from rpc.cli import main
from rpc.cluster import free_port_block, write_cluster


def test_the_json_says_why_a_node_gives_no_status_as_the_table_does(tmp_path, capsys):
    """Before, the table said "unreachable: n1, n2: cannot connect: Connection refused"
    and the JSON only "reachable": false: a script could not tell a dead node from a
    hung one or a wrong key."""
    directory = str(tmp_path / "c")
    write_cluster(directory, 2, free_port_block(2), "tests.prevalence.domain:Store")  # no node started
    assert main(["status", "--cluster", directory]) == 1
    table = capsys.readouterr().out
    assert "unreachable: n1, n2: cannot connect: Connection refused" in table, table
    assert main(["status", "--cluster", directory, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert [n["reachable"] for n in out["nodes"]] == [False, False]
    for n in out["nodes"]:
        assert "cannot connect: Connection refused" in out["conditions"][n["id"]]["error"], out


def test_the_json_names_a_node_that_answers_but_is_no_member(tmp_path, capsys, monkeypatch):
    """Before, a node removed from the membership that still ran was a plain reachable
    row in the JSON; only the table said to stop it."""
    def row(nid: str, role: str, voters: list[str]) -> dict:
        return {"id": nid, "address": f"127.0.0.1:{7100 + int(nid[1:])}", "role": role, "term": 3, "commit_index": 9,
                "applied_index": 9, "pid": 100 + int(nid[1:]), "config": f"/c/{nid}.toml", "reachable": True,
                "leader": "n2" if role != "leader" else None, "voters": voters, "disk_full": False,
                "snapshot_error": None}

    rows = [row("n1", "pre_candidate", ["n1", "n2", "n3"]), row("n2", "leader", ["n2", "n3"]),
            row("n3", "follower", ["n2", "n3"])]
    monkeypatch.setattr(rpc.cluster, "cluster_status", lambda directory, timeout=None: rows)
    assert main(["status", "--cluster", str(tmp_path), "--json"]) == 0
    nodes = json.loads(capsys.readouterr().out)["conditions"]
    assert "not a member of n2's cluster" in (nodes["n1"]["note"] or ""), nodes["n1"]
    assert nodes["n2"]["note"] is None and nodes["n2"]["error"] is None


def test_a_removed_node_that_was_stopped_is_not_shown_as_a_member_down(tmp_path, capsys, monkeypatch):
    """Before, after `cluster remove n1` and stopping it as told, its config left in the
    directory made every status say "unreachable: n1: cannot connect", as for a member
    that is down; nothing said it was no longer one."""
    rows = [{"id": "n1", "address": "127.0.0.1:7101", "role": None, "term": None, "commit_index": None,
             "applied_index": None, "pid": None, "config": "/c/n1.toml", "reachable": False, "leader": None,
             "voters": [], "error": "127.0.0.1:7101: cannot connect: Connection refused"}]
    for nid, role in (("n2", "leader"), ("n3", "follower")):
        rows.append({"id": nid, "address": f"127.0.0.1:710{nid[1]}", "role": role, "term": 3, "commit_index": 9,
                     "applied_index": 9, "pid": 100, "config": f"/c/{nid}.toml", "reachable": True,
                     "leader": "n2", "voters": ["n2", "n3"], "disk_full": False, "snapshot_error": None})
    monkeypatch.setattr(rpc.cluster, "cluster_status", lambda directory, timeout=None: rows)
    assert main(["status", "--cluster", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "n1: not a member of n2's cluster" in table, table
    assert main(["status", "--cluster", str(tmp_path), "--json"]) == 0
    n1 = json.loads(capsys.readouterr().out)["conditions"]["n1"]
    assert "not a member" in (n1["note"] or "") and "Connection refused" in n1["error"], n1


def test_a_leader_of_an_older_term_is_not_shown_as_a_second_master(tmp_path, capsys, monkeypatch):
    """A paused leader resumed (or one cut off) still says "leader" in its old term for a
    moment, while the others lead in a newer one: the table showed two rows "leader"
    side by side, the master line alone saying which was current."""
    def row(nid: str, role: str, term: int) -> dict:
        return {"id": nid, "address": f"127.0.0.1:710{nid[1]}", "role": role, "term": term, "commit_index": 9,
                "applied_index": 9, "pid": 100, "config": f"/c/{nid}.toml", "reachable": True,
                "leader": "n2" if role == "follower" else None, "voters": ["n1", "n2", "n3"], "disk_full": False,
                "snapshot_error": None}

    rows = [row("n1", "leader", 2), row("n2", "leader", 3), row("n3", "follower", 3)]
    monkeypatch.setattr(rpc.cluster, "cluster_status", lambda directory, timeout=None: rows)
    assert main(["status", "--cluster", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    n1 = next(line for line in lines if line.startswith("n1 "))
    assert "leader" not in n1.split()[2:3] and "stale" in n1, n1
    assert "n2 leads (term 3)" in lines and any(line.startswith("n1: ") and "term 3" in line for line in lines), lines
    assert main(["status", "--cluster", str(tmp_path), "--json"]) == 0
    nodes = json.loads(capsys.readouterr().out)["conditions"]
    assert "term 3" in (nodes["n1"]["note"] or "") and nodes["n2"]["note"] is None, nodes["n1"]

"""`cluster_status` reads what nodes answer as hostile: a malformed answer makes that
node's row say so, never an exception for the whole table (the nodes: a fake link)."""
from __future__ import annotations

import pytest

import rpc.status_report
from rpc.cli import main
from rpc.cluster import cluster_status, cluster_status_full, write_cluster

REPLIES = {
    "n1": [],
    "n2": ["ok", 5],
    "n3": 7,
    "n4": ["error", "loop \x1b[31mhung\n" * 1000],
    "n5": ["ok", {"id": "n5", "role": "x" * 10_000, "term": [1] * 1000, "pid": 5, "voters": ["n5"]}],
    "n6": ["ok", {"id": "n6", "role": "follower", "term": 3, "commit_index": 9, "applied_index": 9}],
}


@pytest.fixture
def directory(tmp_path, monkeypatch):
    d = str(tmp_path / "c")
    write_cluster(d, len(REPLIES), 30000, "tests.prevalence.domain:Store")

    class FakeLink:
        def __init__(self, address, *args, **kw):
            self.nid = f"n{address[1] - 30000 + 1}"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def call(self, method):
            return REPLIES[self.nid]

    monkeypatch.setattr(rpc.status_report, "NodeLink", FakeLink)  # how every status is asked
    return d


def test_each_malformed_answer_is_that_nodes_own_one_line_error(directory, capsys):
    rows = {r["id"]: r for r in cluster_status(directory)}
    for nid in ("n1", "n2", "n3"):
        assert not rows[nid]["reachable"] and rows[nid]["error"].startswith("malformed status reply"), rows[nid]
    n4 = rows["n4"]
    assert not n4["reachable"] and n4["answered"] and "\n" not in n4["error"] and "\x1b" not in n4["error"]
    assert len(n4["error"]) <= 300
    n5 = rows["n5"]
    assert n5["reachable"] and len(n5["role"]) <= 200 and type(n5["term"]) is str and len(n5["term"]) <= 120
    assert rows["n6"]["reachable"] and rows["n6"]["term"] == 3
    assert [s["id"] for s in cluster_status_full(directory)] == ["n5", "n6"]
    assert main(["status", "--cluster", directory]) == 0
    out = capsys.readouterr().out
    assert "no status: n4: loop [31mhung loop" in out and "\x1b" not in out, out

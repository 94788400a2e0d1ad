"""`prevalence status` tells why a node gives no status: a node that answers but whose
Raft loop is hung is not "unreachable: no answer"."""
from __future__ import annotations

import time

from rpc.cli import main
from rpc.cluster import cluster_status, free_port_block, node_config_paths, write_cluster
from rpc.config import load_config
from rpc.server import NodeProcess


def test_a_node_whose_raft_loop_hangs_is_shown_with_its_reason(tmp_path, capsys):
    directory = str(tmp_path / "c")
    write_cluster(directory, 1, free_port_block(1), "tests.prevalence.domain:Store")
    process = NodeProcess(load_config(node_config_paths(directory)[0])).start()
    try:
        deadline = time.monotonic() + 10
        while not process.node.is_leader and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cluster_status(directory)[0]["reachable"]
        with process.node._core_lock:  # the loop wedged: the node answers, without a status
            (row,) = cluster_status(directory)
            assert not row["reachable"] and "raft loop did not answer" in row["error"], row
            assert main(["status", "--cluster", directory]) == 1
        out = capsys.readouterr().out
        assert "n1: node status unavailable: node 'n1': its raft loop did not answer" in out, out
        assert "unreachable" not in out and "no answer" not in out, out
        assert cluster_status(directory)[0]["reachable"]  # free again: healthy again
    finally:
        process.stop()


def test_nodes_that_do_not_answer_cost_one_timeout_in_all_not_one_each(tmp_path, capsys):
    import socket

    directory = str(tmp_path / "c")
    base = free_port_block(4)
    write_cluster(directory, 4, base, "tests.prevalence.domain:Store")
    silent = []
    for port in range(base, base + 4):  # each listens and never answers: a hung process
        s = socket.socket()
        s.bind(("127.0.0.1", port))
        s.listen(8)
        silent.append(s)
    try:
        t0 = time.monotonic()
        rows = cluster_status(directory)
        took = time.monotonic() - t0
        assert [r["reachable"] for r in rows] == [False] * 4 and all(r["error"] for r in rows), rows
        assert took < 3.0, took  # asked one after another, four would take 4 to 6 s
        assert main(["status", "--cluster", directory]) == 1
        said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("unreachable: ")]
        # one line per cause: "all 4 nodes: ..." when they all hang alike; on a loaded machine
        # the listeners' queues also reset some connections (a second cause, its own line)
        named = " ".join(said)
        assert said and ("all 4 nodes" in named or all(f"n{k}" in named for k in range(1, 5))), said
    finally:
        for s in silent:
            s.close()


def test_a_node_whose_snapshots_fail_is_shown_with_the_reason(tmp_path, capsys, monkeypatch):
    """Snapshots that keep failing were only in the node's log, while the journal grows
    without bound; status shows the node healthy."""
    import errno
    import json

    from prevalence.snapshots import SnapshotStore
    from rpc.client import ClusterClient
    from rpc.secret import load_secret
    from tests.prevalence.domain import Add

    def failing(self, meta, body, **kw):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(SnapshotStore, "write", failing)
    directory = str(tmp_path / "c")
    write_cluster(directory, 1, free_port_block(1), "tests.prevalence.domain:Store", snapshot_every=5)
    cfg = load_config(node_config_paths(directory)[0])
    process = NodeProcess(cfg).start()
    try:
        with ClusterClient([f"127.0.0.1:{cfg.listen[1]}"], load_secret(f"{directory}/client.secret")) as client:
            for _ in range(10):
                client.execute(Add("x", 1))
        deadline = time.monotonic() + 10
        while not cluster_status(directory)[0].get("snapshot_error") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert main(["status", "--cluster", directory]) == 0
        out = capsys.readouterr().out
        assert "leader, snapshots failing" in out and "n1: snapshots failing: [Errno 5] Input/output error" in out, out
        assert main(["status", "--cluster", directory, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert "Input/output error" in out["conditions"][out["nodes"][0]["id"]]["snapshot_error"]
    finally:
        process.stop()

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
        assert "unreachable: all 4 nodes:" in capsys.readouterr().out
    finally:
        for s in silent:
            s.close()

"""A node's data directory, on real processes: one process at a time owns it."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.cluster.harness import ROOT, LocalCluster
from tests.prevalence.domain import Snapshot, Stamp

pytestmark = pytest.mark.slow


def run_node(config_path: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """``prevalence node --config FILE`` to its end (one that refuses to start)."""
    return subprocess.run([sys.executable, "-m", "rpc.cli", "node", "--config", config_path],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_a_second_process_on_a_live_nodes_data_is_refused_with_the_holders_pid(tmp_path):
    c = LocalCluster(tmp_path, 1)
    try:
        c.leader()
        assert c.call("n1", "execute", Stamp("before"))[0] == "ok"
        holder = c.status()["n1"]["pid"]
        t0 = time.monotonic()
        second = run_node(c.configs["n1"].path)
        took = time.monotonic() - t0
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 1 and len(lines) == 1, second.stderr
        assert f"in use by another process (pid {holder}" in lines[0] and c.configs["n1"].data in lines[0]
        assert took < 5.0, f"refused after {took:.1f} s"
        c.check_alive()  # the live node is untouched and keeps serving
        assert c.call("n1", "execute", Stamp("after"))[0] == "ok"
        tags = [item[0] for item in c.call("n1", "query", Snapshot())[1][1]]
        assert tags == ["before", "after"]
    finally:
        c.stop()

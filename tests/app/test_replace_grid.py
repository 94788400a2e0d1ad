"""grid replace of a grid node at a new address: the grid's layout follows it, so the
master drives the replacement's agent (grid show: up and in sync), not the dead address."""
from __future__ import annotations

import os
import signal
import sys

import pytest

from app.cli import main as grid
from app.local import grid_view, in_sync
from rpc.cluster import free_port_block
from tests.app.gridproc import running_grid

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")]


def test_a_node_replaced_at_a_new_address_is_driven_there(tmp_path, capsys):
    started = None
    with running_grid(str(tmp_path), 1, 3) as g:
        g.c.execute(__import__("app.model", fromlist=["SetSettings"]).SetSettings(("all",), {"volume": "30"}))
        g.wait_for("in sync", lambda: in_sync(grid_view(g.c)), 20)
        victim = next(n for n in sorted(g.configs, reverse=True) if n != g.leader())
        g.kill(victim)
        address = f"127.0.0.1:{free_port_block(1)}"
        try:
            assert grid(["replace", victim, "--address", address, "--cluster", str(tmp_path), "--timeout", "30"]) == 0
            out = capsys.readouterr().out
            from rpc.cluster import cluster_status_full

            started = next(r["pid"] for r in cluster_status_full(str(tmp_path)) if r["id"] == victim)
            node = g.wait_for(f"{victim} up at {address}, in sync",
                              lambda: (n := next(n for n in grid_view(g.c)["nodes"] if n["id"] == victim))
                              and n["address"] == address and n["health"] == "up" and n["in_sync"] and n, 20)
            assert node["actual"] == {"volume": 30}
            assert "layout" in out, out
        finally:
            if started:
                os.kill(started, signal.SIGKILL)

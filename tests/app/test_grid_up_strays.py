"""grid up, then grid replace of one of its nodes: the replacement runs as a process
grid up did not start. Ctrl-C on grid up must stop it too, or it stays running and the
next grid up on the directory refuses ('already running')."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from app.cli import main as grid
from app.local import LocalGrid, grid_view, in_sync
from rpc.cluster import cluster_status_full, free_port_block

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL and SIGINT")]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()[:1] \
        not in ("Z", "")


def test_ctrl_c_on_grid_up_stops_the_node_grid_replace_started(tmp_path, capsys):
    data = str(tmp_path / "g")
    up = subprocess.Popen([sys.executable, "-m", "app", "up", "--data", data, "--rows", "1", "--columns", "3",
                           "--no-restart"], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    replaced = None
    try:
        time.sleep(3)
        g = LocalGrid.open(data)
        with g.client(timeout=20) as c:
            g.wait_for("in sync", lambda: (v := grid_view(c)) and v["layout_digest"] and in_sync(v), 30)
        victim = next(n for n in sorted(g.configs, reverse=True) if n != g.leader())
        pid = next(r["pid"] for r in cluster_status_full(data) if r["id"] == victim)
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        address = f"127.0.0.1:{free_port_block(1)}"
        assert grid(["replace", victim, "--address", address, "--cluster", data, "--timeout", "30"]) == 0
        replaced = next(r["pid"] for r in cluster_status_full(data) if r["id"] == victim)
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=30)
        deadline = time.monotonic() + 10
        while _alive(replaced) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(replaced), f"the replacement {victim} (pid {replaced}) outlived grid up:\n{out}"
    finally:
        if up.poll() is None:
            up.kill()
            up.communicate()
        if replaced and _alive(replaced):
            os.kill(replaced, signal.SIGKILL)


def test_grid_up_does_not_fight_the_node_grid_replace_started(tmp_path):
    """grid up restarts a dead node after --restart-after; when grid replace has started
    the replacement meanwhile, grid up must take it as running, not try to start a second
    copy over and over ('exited (... in use by another process); restarting it')."""
    data = str(tmp_path / "g")
    up = subprocess.Popen([sys.executable, "-m", "app", "up", "--data", data, "--rows", "1", "--columns", "3",
                           "--restart-after", "5"], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(3)
        g = LocalGrid.open(data)
        with g.client(timeout=20) as c:
            g.wait_for("in sync", lambda: (v := grid_view(c)) and v["layout_digest"] and in_sync(v), 30)
        victim = next(n for n in sorted(g.configs, reverse=True) if n != g.leader())
        os.kill(next(r["pid"] for r in cluster_status_full(data) if r["id"] == victim), signal.SIGKILL)
        time.sleep(0.3)
        assert grid(["replace", victim, "--address", f"127.0.0.1:{free_port_block(1)}", "--cluster", data,
                     "--timeout", "30"]) == 0
        time.sleep(9)  # past grid up's restart time, and a retry
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=30)
        assert "in use by another process" not in out, out
    finally:
        if up.poll() is None:
            up.kill()
            up.communicate()
        for r in cluster_status_full(data):
            if r.get("pid") and _alive(r["pid"]):
                os.kill(r["pid"], signal.SIGKILL)

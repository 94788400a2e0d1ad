"""Two grid up on one new directory at the same moment (two terminals, a double click):
one runs the grid, the other refuses in one line; the grid is whole afterwards."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from app.local import LocalGrid, grid_view, in_sync

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="uses SIGINT")]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_two_grid_up_at_once_one_runs_the_other_refuses(tmp_path):
    data = str(tmp_path / "g")
    cmd = [sys.executable, "-m", "app", "up", "--data", data, "--rows", "1", "--columns", "3"]
    env = {**os.environ, "PYTHONPATH": ROOT}
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        deadline = time.monotonic() + 20
        while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        refused = [p for p in procs if p.poll() is not None]
        assert len(refused) == 1, "both grid up kept running on one directory"
        out, err = refused[0].communicate()
        assert refused[0].returncode == 1 and "already running" in err and err.count("\n") == 1, out + err
        time.sleep(3)  # the one running has written the grid and started its nodes
        g = LocalGrid.open(data)
        assert len(g.configs) == 3
        with g.client(timeout=20) as c:
            g.wait_for("the grid up and in sync", lambda: (v := grid_view(c)) and v["layout_digest"] and in_sync(v), 30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                p.communicate(timeout=20)

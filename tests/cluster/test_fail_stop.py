"""Fail-stop with real processes: a node whose disk fails exits at once, non-zero, with
a clear message, and comes back from its own disk once there is space (issue 14, item 2)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from tests.cluster.harness import LocalCluster
from tests.prevalence.domain import Add, Get

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="mounts a tmpfs")]


def mount_tmpfs(path: str, size: str) -> None:
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (a disk that fills)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")


def fill(path: str) -> str:
    """Fill the file system under ``path``; returns the filler file's path."""
    filler = os.path.join(path, "filler")
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError:
            pass
    return filler


@pytest.fixture
def small_disk_cluster(tmp_path):
    disk = os.path.join(str(tmp_path), "n1")  # n1's data directory, mounted before the cluster
    mount_tmpfs(disk, "16m")                   # creates its data there (a mount would hide it)
    c = None
    try:
        c = LocalCluster(tmp_path, 3, start=False)
        for nid in c.configs:
            c.start(nid)
        c.leader()
        yield c, disk
    finally:
        if c is not None:
            c.stop()
        subprocess.run(["umount", "-l", disk], capture_output=True)


def test_a_node_whose_disk_fills_exits_at_once_and_recovers_when_restarted_with_space(small_disk_cluster):
    c, disk = small_disk_cluster
    acked = 0
    stop = threading.Event()

    def writer():
        nonlocal acked
        with c.client(timeout=20) as client:
            while not stop.is_set():
                client.execute(Add("x", 1))
                acked += 1

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    time.sleep(0.5)
    filler = fill(disk)
    filled_at = time.monotonic()
    while c.alive("n1") and time.monotonic() - filled_at < 10:
        time.sleep(0.05)
    assert not c.alive("n1"), "n1 kept running (a zombie) after its disk filled"
    exited_after = time.monotonic() - filled_at
    code = c.procs["n1"].returncode
    assert code not in (0, None), code
    assert "No space left on device" in c.log("n1")
    assert "stopping: " in c.log("n1")
    time.sleep(0.5)  # the others carry on meanwhile
    stop.set()
    t.join(30)
    assert not t.is_alive()

    os.remove(filler)  # the operator frees space; the service manager restarts the node
    c.start("n1")
    with c.client() as client:
        assert client.query(Get("x")) == acked  # nothing acknowledged lost, nothing twice
    c.wait_converged("n1")
    assert c.status()["n1"]["applied_index"] >= acked
    assert exited_after < 3.0, exited_after

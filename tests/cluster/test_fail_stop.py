"""A disk that fails and a disk that fills, with real processes: a failed fsync stops the
node (issue 14); a full disk makes it refuse commands and hand over, then resume (issue 17)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from prevalence.codec import CODEC
from rpc.secret import load_secret
from rpc.transport import NodeLink
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


def test_a_leader_whose_disk_fills_hands_over_keeps_serving_and_resumes_when_space_returns(small_disk_cluster):
    """A full disk is not a failed disk: the write that found no space was cut back and
    nothing was promised, so the node stays up, refuses commands, hands leadership to a
    node that can write, answers status and reads, and writes again once space is
    freed, with nothing acknowledged lost and nothing applied twice."""
    c, disk = small_disk_cluster
    leader = c.leader()
    if leader != "n1":  # n1 is the node whose data is on the small disk
        with NodeLink(c.configs[leader].listen, load_secret(os.path.join(c.dir, "admin.secret")), ident="ops",
                      timeout=15.0, role="admin") as link:
            assert link.call("transfer_leadership", "n1") == ["ok", None]
        assert c.leader(exclude={leader}) == "n1"
    acked = 0
    stop = threading.Event()
    errors: list = []

    def writer():
        nonlocal acked
        with c.client(timeout=20) as client:
            while not stop.is_set():
                try:
                    client.execute(Add("x", 1))
                except Exception as exc:  # noqa: BLE001 - counted: no command may fail here
                    errors.append(exc)
                    return
                acked += 1

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    time.sleep(0.5)
    filler = fill(disk)
    filled_at = time.monotonic()
    new_leader = c.leader(exclude={"n1"}, timeout=10)
    handed_over_after = time.monotonic() - filled_at
    time.sleep(1.0)  # the cluster goes on without n1's disk
    assert c.alive("n1"), f"n1 exited on a full disk: {c.tail('n1')}"
    st = c.status()["n1"]
    assert st["reachable"] and st.get("disk_full") is True, st
    assert "the disk is full" in c.log("n1")
    with NodeLink(c.configs["n1"].listen, load_secret(os.path.join(c.dir, "client.secret")), ident="check",
                  timeout=5.0) as link:
        assert link.call("query", CODEC.dumps(Get("x")), "local")[0] == "ok"  # n1 still serves reads
    before = acked
    time.sleep(1.0)
    assert acked > before, "writes stopped while one node's disk was full"

    os.remove(filler)  # the operator frees space: n1 writes again by itself
    c.wait_for("n1 to write again", lambda: c.status()["n1"].get("disk_full") is False, 10.0)
    stop.set()
    t.join(30)
    assert not t.is_alive() and not errors, errors[:3]
    with c.client() as client:
        assert client.query(Get("x")) == acked  # nothing acknowledged lost, nothing twice
    c.wait_converged("n1")
    assert c.status()["n1"]["applied_index"] >= acked
    assert c.alive("n1") and new_leader != "n1"
    assert handed_over_after < 3.0, handed_over_after

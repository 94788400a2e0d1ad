"""A node's data directory, on real processes: one process at a time owns it, and a
voter whose data is gone does not come back with no memory."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from rpc.cli import main
from rpc.config import load_config
from rpc.localcluster import NodeExited
from tests.cluster.harness import ROOT, LocalCluster
from tests.prevalence.domain import Snapshot, Stamp

pytestmark = pytest.mark.slow


def run_node(config_path: str, *extra: str) -> subprocess.CompletedProcess:
    """``prevalence node --config FILE ...`` to its end (one that refuses to start, or --init)."""
    return subprocess.run([sys.executable, "-m", "rpc.cli", "node", "--config", config_path, *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)


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


def tags(c: LocalCluster, nid: str) -> list[str]:
    return [item[0] for item in c.call(nid, "query", Snapshot())[1][1]]


def last_line(c: LocalCluster, nid: str) -> str:
    return c.log(nid).strip().splitlines()[-1]


@pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")
def test_a_wiped_voter_is_refused_and_the_documented_rebuild_brings_it_back(tmp_path):
    c = LocalCluster(tmp_path, 3)
    try:
        lead = c.leader()
        behind, wiped = sorted(n for n in c.configs if n != lead)
        c.kill(behind)
        acked = []
        with c.client() as client:
            until = time.monotonic() + 1.0
            while time.monotonic() < until:
                acked.append(client.execute(Stamp(f"w{len(acked)}"))[0])  # on `lead` and `wiped` only
        c.kill(lead)
        c.kill(wiped)
        shutil.rmtree(c.configs[wiped].data)  # its disk replaced; its config unchanged
        c.start(wiped)
        c.start(behind)
        # with no memory, `wiped` would vote for `behind`, whose log lacks every write above
        c.wait_for("the wiped node to refuse, or an election without the writes",
                   lambda: not c.alive(wiped) or c.status()[behind]["role"] == "leader", 10)
        c.start(lead)
        leader = c.leader(exclude={wiped})
        c.wait_converged(lead)
        lost = [t for t in acked if t not in tags(c, leader)]
        assert not lost, f"{len(lost)} of {len(acked)} acknowledged writes lost"
        assert c.procs[wiped].wait(5) == 1
        refusal = last_line(c, wiped)
        assert refusal.startswith("error: ") and c.configs[wiped].data in refusal, c.tail(wiped)
        assert "remove" in refusal and "learner" in refusal and "docs/operations.md" in refusal
        # nor can it be re-created in place as a founder: the cluster has run
        shortcut = run_node(c.configs[wiped].path, "--init")
        assert shortcut.returncode == 1 and "this cluster has run" in shortcut.stderr, shortcut.stderr
        assert not os.path.exists(c.configs[wiped].data)

        # docs/operations.md, "Rebuilding a node": remove, wipe, add as a learner, promote
        cluster = str(tmp_path)
        assert main(["cluster", "remove", "--cluster", cluster, "--id", wiped]) == 0
        address = c.addresses[wiped]
        os.rename(c.configs[wiped].path, c.configs[wiped].path + ".old")
        assert main(["cluster", "add", "--cluster", cluster, "--id", wiped, "--address", address]) == 0
        c.configs[wiped] = load_config(os.path.join(cluster, f"{wiped}.toml"))
        c.start(wiped)
        c.wait_converged(wiped)
        assert main(["cluster", "promote", "--cluster", cluster, "--id", wiped]) == 0
        c.kill(lead)  # the rebuilt node now counts: it and `behind` elect, with every write
        leader = c.leader(exclude={lead})
        assert tags(c, leader)[:len(acked)] == acked
        assert c.call(leader, "execute", Stamp("after"))[0] == "ok"
        # its config now says join = true; should its data go again, that is no way back either
        c.kill(wiped)
        shutil.rmtree(c.configs[wiped].data)
        again = run_node(c.configs[wiped].path, "--init")
        assert again.returncode == 1 and f"counts {wiped!r} as a voter" in again.stderr, again.stderr
    finally:
        c.stop()


def test_a_hand_written_config_starts_after_an_explicit_init(tmp_path):
    # on the PCs each node's config is written by hand: its first start is explicit
    from rpc.cluster import free_port_block, write_keys
    from rpc.config import NodeConfig, render_config

    port = free_port_block(1)
    write_keys(str(tmp_path))
    path = str(tmp_path / "node.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_config(NodeConfig(path="", id="n1", listen=("127.0.0.1", port), data="data",
                                         root="tests.prevalence.domain:Store",
                                         peers={"n1": ("127.0.0.1", port)})))
    refused = run_node(path)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "--init" in refused.stderr
    made = run_node(path, "--init")
    assert made.returncode == 0 and "founds a new cluster" in made.stdout, made.stderr
    c = LocalCluster.open(str(tmp_path), cwd=ROOT)
    try:
        c.start("n1")
        c.leader()
        assert c.call("n1", "execute", Stamp("first"))[0] == "ok"
        again = run_node(path, "--init")
        assert again.returncode == 1 and "already holds node data" in again.stderr
    finally:
        c.stop()


@contextlib.contextmanager
def small_disk(path, size: str):
    """A tmpfs of ``size`` mounted on ``path``: a real ENOSPC when it fills (root, Linux)."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root on Linux")
    os.makedirs(path)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield lambda bigger: subprocess.run(["mount", "-o", f"remount,size={bigger}", str(path)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(path)])


@pytest.mark.skipif(sys.platform == "win32", reason="uses SIGSTOP/SIGTERM")
def test_a_full_disk_then_a_graceful_stop_does_not_brick_the_node(tmp_path):
    # systemd, NSSM and Ctrl-C all stop a node gracefully, whatever state its disk is in
    with small_disk(tmp_path / "n3", "1m") as grow:  # n3's data directory
        c = LocalCluster(tmp_path, 3, start=False)
        try:
            c.start("n1")
            c.start("n2")
            c.leader()
            c.start("n3")  # a follower
            with c.client() as client:
                client.execute(Stamp("first"))
                c.wait_converged("n3")
                disk = os.statvfs(tmp_path / "n3")
                ballast = tmp_path / "n3" / "ballast"  # another program's file fills the disk...
                ballast.write_bytes(b"\0" * (disk.f_bavail * disk.f_frsize - 65536))
                c.kill("n3", signal.SIGSTOP)  # ...while n3 lags: the others commit without it
                for k in range(300):  # past the leader's window of 256 messages in flight to n3...
                    client.execute(Stamp(f"{k}"))
                for k in range(10):  # ...so these reach it in one batch, with a commit covering them
                    client.execute(Stamp(f"{k}" * 8192))
                c.kill("n3", signal.SIGCONT)  # its write of that batch fails: the disk is full
                c.wait_for("n3's disk to fill", lambda: "No space left on device" in c.log("n3"), 10)
                ballast.unlink()  # the operator frees space and restarts the service: a graceful stop
                if c.alive("n3"):
                    c.kill("n3", signal.SIGTERM)
                c.procs["n3"].wait(20)
                grow("8m")  # room to catch up: the node must recover from its own disk
                c.start("n3")
                client.execute(Stamp("last"))
                c.wait_for("n3 to serve again", lambda: c.check_alive() or c.status()["n3"]["reachable"], 10,
                           fatal=(NodeExited,))  # not: "persisted commit N ... is past the last stored index"
                c.wait_converged("n3")
        finally:
            c.stop()

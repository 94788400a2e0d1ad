"""`prevalence cluster up` and `prevalence status`, run as an operator would."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.cluster.harness import ROOT, free_port_block

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="uses SIGTERM")]

FIELDS = {"id", "address", "role", "term", "commit_index", "applied_index", "pid", "config", "reachable"}


def status(directory) -> dict:
    out = subprocess.run([sys.executable, "-m", "rpc.cli", "status", "--cluster", str(directory), "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout)


def test_cluster_up_status_and_clean_stop(tmp_path):
    base = free_port_block(3)
    up = subprocess.Popen([sys.executable, "-m", "rpc.cli", "cluster", "up", "--nodes", "3", "--data", str(tmp_path),
                           "--port", str(base), "--root", "tests.prevalence.domain:Store"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            nodes = status(tmp_path)["nodes"] if (tmp_path / "n3.toml").exists() else []
            if nodes and sum(n["role"] == "leader" for n in nodes) == 1 and all(n["reachable"] for n in nodes):
                break
            assert time.monotonic() < deadline, nodes
            time.sleep(0.2)
        assert len(nodes) == 3 and all(set(n) == FIELDS for n in nodes)
        assert sorted(n["address"] for n in nodes) == [f"127.0.0.1:{base + k}" for k in range(3)]
        assert all((tmp_path / f"{role}.secret").exists() for role in ("peer", "client", "admin"))
        assert not (tmp_path / "cluster.secret").exists()
        pids = [n["pid"] for n in nodes]
        table = subprocess.run([sys.executable, "-m", "rpc.cli", "status", "--cluster", str(tmp_path)],
                               cwd=ROOT, capture_output=True, text=True, timeout=30).stdout
        assert "leader" in table and "reachable" in table.splitlines()[0]
        leader = next(n["id"] for n in nodes if n["role"] == "leader")
        assert f"{leader} leads (term " in table and status(tmp_path)["master"].startswith(f"{leader} leads")
        again = subprocess.run([sys.executable, "-m", "rpc.cli", "cluster", "up", "--data", str(tmp_path),
                                "--root", "tests.prevalence.domain:Store"], cwd=ROOT, capture_output=True,
                               text=True, timeout=15)  # a second `cluster up` on the running cluster
        assert again.returncode == 1 and again.stderr.count("\n") == 1, again.stdout + again.stderr
        assert "the cluster is already running (n1 pid" in again.stderr
        # the sessions' idle expiry is a replicated setting, checked before it applies
        def sessions(value: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "rpc.cli", "cluster", "sessions", "--cluster", str(tmp_path),
                                   "--idle-expiry", value], cwd=ROOT, capture_output=True, text=True, timeout=30)

        bad = sessions("5")
        assert bad.returncode == 1 and "session expiry must be from 60 s" in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr
        assert sessions("600").returncode == 0
        import rpc

        for node in nodes:  # every replica holds it
            with rpc.connect([node["address"]], secret_file=str(tmp_path / "client.secret")) as c:
                deadline = time.monotonic() + 5
                while c.status()["session_expiry_s"] != 600:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
        # a node that dies is reported and not restarted
        os.kill(pids[0], signal.SIGKILL)
        time.sleep(1.0)
        assert sum(n["reachable"] for n in status(tmp_path)["nodes"]) == 2
        up.send_signal(signal.SIGTERM)
        out, _ = up.communicate(timeout=20)
        assert up.returncode == 0
        assert "exited (killed by signal 9); not restarted" in out and "stopping the cluster" in out
        for pid in pids[1:]:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        # every node stopped: the table fits a terminal and says why, each cause once
        down = subprocess.run([sys.executable, "-m", "rpc.cli", "status", "--cluster", str(tmp_path)],
                              cwd=ROOT, capture_output=True, text=True, timeout=30)
        lines = down.stdout.splitlines()
        assert down.returncode == 1 and max(map(len, lines)) <= 80, down.stdout
        assert lines[-1].startswith("unreachable: n1, n2, n3: ") and "cannot connect" in lines[-1], down.stdout
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def up_until_started(directory, base: int, *extra: str) -> tuple[subprocess.Popen, str]:
    """`prevalence cluster up` in the background, once it says it started the nodes."""
    up = subprocess.Popen([sys.executable, "-m", "rpc.cli", "cluster", "up", "--nodes", "3", "--data",
                           str(directory), "--port", str(base), "--root", "tests.prevalence.domain:Store", *extra],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    said = []
    for line in up.stdout:
        said.append(line)
        if line.startswith("started "):
            break
    return up, "".join(said)


def test_cluster_up_on_an_existing_directory_keeps_the_users_edits(tmp_path):
    base = free_port_block(3)
    up, _ = up_until_started(tmp_path, base)
    up.send_signal(signal.SIGTERM)
    up.communicate(timeout=20)
    n1 = tmp_path / "n1.toml"
    edited = "# n1 runs on the PC by the door\n" + n1.read_text().replace("tick = 0.025", "tick = 0.05  # busy PC")
    n1.write_text(edited)
    up, said = up_until_started(tmp_path, base + 10)  # a different --port: the files win
    try:
        assert n1.read_text() == edited
        assert f"starting the cluster configured in {tmp_path}" in said and "as they are" in said, said
        assert "--port" in said, said  # what was not applied is named
        deadline = time.monotonic() + 10
        while not all(n["reachable"] for n in status(tmp_path)["nodes"]):  # on the files' ports
            assert time.monotonic() < deadline, status(tmp_path)
            time.sleep(0.1)
    finally:
        up.send_signal(signal.SIGTERM)
        up.communicate(timeout=20)

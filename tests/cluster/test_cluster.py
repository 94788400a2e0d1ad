"""Real node processes on 127.0.0.1: elections, SIGKILLed leaders, SIGSTOPped leaders."""
from __future__ import annotations

import glob
import os
import signal
import sys
import time

import pytest

import rpc
from rpc import localcluster
from tests.cluster.harness import ROOT, LocalCluster
from tests.prevalence.domain import Snapshot, Stamp

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL/SIGSTOP")]


@pytest.fixture
def cluster3(tmp_path):
    c = LocalCluster(tmp_path, 3)
    yield c
    c.stop()


@pytest.mark.parametrize("n", [3, 5])
def test_cluster_elects_one_leader(tmp_path, n):
    c = LocalCluster(tmp_path, n)
    try:
        # every node up and caught up: a leader can win with 3 of 5 while the others,
        # under load, still start (a status answer is then "unreachable" for a while)
        leader, st = c.stable_leader()
        assert [nid for nid, r in st.items() if r["role"] == "leader"] == [leader]
        assert all(r["reachable"] and r["term"] == st[leader]["term"] for r in st.values()), st
        assert c.call(leader, "execute", Stamp("first"))[0] == "ok"
    finally:
        c.stop()


def test_a_dead_node_is_reported_with_the_end_of_its_log(tmp_path):
    c = LocalCluster(tmp_path, 3)
    try:
        c.leader()
        c.check_alive()  # all up: nothing to report
        c.kill("n2")
        with pytest.raises(localcluster.NodeExited) as info:
            c.check_alive()
        err = info.value
        assert err.node == "n2" and err.code == -signal.SIGKILL
        assert os.path.join(str(tmp_path), "n2.log") in str(err) and "node n2 up on" in err.tail
    finally:
        c.stop()
    # nodes writing to this process's output: no log file is named, and none is read
    quiet = localcluster.LocalCluster.open(str(tmp_path), cwd=ROOT, log_files=False)
    try:
        quiet.start("n1")
        quiet.kill("n1")
        with pytest.raises(localcluster.NodeExited, match="its output went to this process's") as info:
            quiet.check_alive()
        assert "n1.log" not in str(info.value) and info.value.tail == ""
    finally:
        quiet.stop()


def test_sigkill_leader_repeatedly_under_load_loses_nothing_acknowledged(cluster3):
    c = cluster3
    w = c.client(timeout=5)
    acked: list[str] = []
    for round_no in range(4):
        leader = c.leader()
        stop_at = time.monotonic() + 0.6
        seq = 0
        while time.monotonic() < stop_at:
            tag = f"r{round_no}-{seq}"
            seq += 1
            try:
                w.execute(Stamp(tag))
                acked.append(tag)
            except rpc.ClusterUnavailable:
                pass
        c.kill(leader)  # SIGKILL, mid-load
        t0 = time.monotonic()
        new = c.leader(exclude={leader})
        assert new != leader
        w.execute(Stamp(f"after-kill-{round_no}"))  # rides through to the new leader
        acked.append(f"after-kill-{round_no}")
        assert time.monotonic() - t0 < 5
        c.start(leader)  # it comes back and catches up
    w.close()
    leader = c.leader()
    reply = c.call(leader, "query", Snapshot())
    assert reply[0] == "ok"
    tags = [item[0] for item in reply[1][1]]
    assert len(tags) == len(set(tags)), "a transaction applied twice"
    missing = [t for t in acked if t not in set(tags)]
    assert not missing, f"acknowledged but lost: {missing[:5]}"
    assert len(acked) > 20
    c.wait_converged()  # every node converges to the same state


def test_hung_leader_is_replaced_and_steps_down_when_resumed(cluster3):
    c = cluster3
    leader = c.leader()
    assert c.call(leader, "execute", Stamp("before"))[0] == "ok"
    c.kill(leader, signal.SIGSTOP)  # no RST, no answers
    try:
        t0 = time.monotonic()
        new = c.leader(exclude={leader}, timeout=5)
        took = time.monotonic() - t0
        assert took < 2.0, f"replacing a hung leader took {took:.2f} s"
        assert c.call(new, "execute", Stamp("during"))[0] == "ok"
    finally:
        c.kill(leader, signal.SIGCONT)
    deadline = time.monotonic() + 5
    while c.status()[leader]["role"] == "leader":
        assert time.monotonic() < deadline, "the resumed old leader did not step down"
        time.sleep(0.05)
    reply = c.call(leader, "execute", Stamp("stale"))
    assert reply[0] == "not_leader"  # it acknowledges nothing on its stale term


def test_wrong_secret_is_refused_and_logged(cluster3, tmp_path):
    from rpc.auth import AuthenticationFailed
    from rpc.transport import open_connection

    c = cluster3
    nid = c.leader()  # listening for sure (another node may still be starting on a loaded machine)
    with pytest.raises(AuthenticationFailed):
        open_connection(c.configs[nid].listen, b"x" * 32, role="client", ident="intruder")
    time.sleep(0.2)
    assert "127.0.0.1" in c.log(nid) and ("refused" in c.log(nid).lower() or "authentic" in c.log(nid).lower())


def test_corrupted_journal_refuses_to_start_with_a_clear_error(cluster3):
    c = cluster3
    leader = c.leader()
    for k in range(30):
        assert c.call(leader, "execute", Stamp(f"t{k}"))[0] == "ok"
    victim = next(n for n in c.configs if n != leader)
    c.wait_converged(victim)  # on a loaded machine a follower may not have written its journal yet
    c.kill(victim)

    seg = sorted(glob.glob(os.path.join(c.configs[victim].data, "journal", "*.log")))[0]
    data = bytearray(open(seg, "rb").read())
    data[100] ^= 0xFF
    open(seg, "wb").write(bytes(data))
    c.start(victim)
    assert c.procs[victim].wait(20) != 0
    assert "byte offset" in c.log(victim) and seg in c.log(victim)

    # the documented rebuild (docs/operations.md): remove, wipe, add back as a learner, promote
    from rpc.cli import main
    from rpc.config import format_address, load_config

    d = c.dir
    address = format_address(c.configs[victim].listen)
    assert main(["cluster", "remove", "--cluster", d, "--id", victim]) == 0
    os.rename(c.configs[victim].data, c.configs[victim].data + ".broken")
    os.rename(c.configs[victim].path, c.configs[victim].path + ".old")
    assert main(["cluster", "add", "--cluster", d, "--id", victim, "--address", address]) == 0
    c.configs[victim] = load_config(os.path.join(d, f"{victim}.toml"))
    c.start(victim)
    c.wait_converged(victim)
    assert main(["cluster", "promote", "--cluster", d, "--id", victim]) == 0
    others = [n for n in c.configs if n != victim]
    c.kill(others[0])  # the rebuilt node now counts for the majority
    survivor = c.leader(exclude={others[0]})
    assert c.call(survivor, "execute", Stamp("after-rebuild"))[0] == "ok"
    tags = [item[0] for item in c.call(victim, "query", Snapshot())[1][1]]  # served from the rebuilt copy
    assert tags == [f"t{k}" for k in range(30)] + ["after-rebuild"]


def test_node_down_while_others_compact_catches_up_by_snapshot(tmp_path):
    c = LocalCluster(tmp_path, 3, snapshot_every=25)
    try:
        leader = c.leader()
        lagging = next(n for n in c.configs if n != leader)
        c.kill(lagging)
        with c.client() as w:
            for k in range(120):
                w.execute(Stamp(f"t{k}"))
        c.start(lagging)
        c.wait_converged(lagging)
        assert "installed snapshot" in c.log(lagging)
        assert "sending snapshot" in c.log(c.leader())
        tags = [item[0] for item in c.call(lagging, "query", Snapshot())[1][1]]
        assert tags == [f"t{k}" for k in range(120)]
    finally:
        c.stop()


def test_a_normal_start_logs_no_warning(cluster3):
    """Peers not listening yet at start are no news; a WARNING at every start teaches
    operators to ignore warnings."""
    c = cluster3
    c.leader()
    c.wait_converged()
    for nid in c.configs:
        warnings = [line for line in c.log(nid).splitlines() if " WARNING " in line]
        assert not warnings, (nid, warnings)

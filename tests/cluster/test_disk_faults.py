"""A node's disk under real faults, with real processes: a journal deleted or cut off
under a stopped node, damaged snapshot and identity files, a disk that fails with EIO (a
loop device), a disk frozen for seconds (fsfreeze), full disks at start, on every node
at once, and under a backup or a restore. (A failed fsync and a full leader or follower while running: test_fail_stop.py,
test_node_data.py.) Tests that need root, a tmpfs or a loop device skip without them."""
from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.cluster.harness import ROOT, LocalCluster
from tests.prevalence.domain import Add, Get

pytestmark = [pytest.mark.slow]


def _lose_log(data: str, how: str) -> None:
    """What an operator freeing space, or a damaged disk, does to a stopped node's log."""
    if how == "deleted":
        for path in glob.glob(os.path.join(data, "journal", "*")) + glob.glob(os.path.join(data, "snapshots", "*")):
            os.remove(path)
    else:  # cut off: the file system kept only its first third
        for path in glob.glob(os.path.join(data, "journal", "*.log")):
            os.truncate(path, os.path.getsize(path) // 3)


@pytest.mark.parametrize("whose", ["follower", "leader"])
@pytest.mark.parametrize("how", ["deleted", "cut"])
def test_a_voter_whose_log_was_lost_refuses_to_start_and_no_acknowledged_write_is_lost(tmp_path, how, whose):
    """A voter whose journal was deleted or cut off while it was stopped still holds its
    term and vote: if it started, its vote (or its candidacy, the leader's log being the
    longest) could elect a leader that lacks the commands it had acknowledged (here: up
    to 199 of 200 lost). It must refuse, in one line naming its data and the way on, and
    the cluster keeps every acknowledged command."""
    c = LocalCluster(tmp_path, 3)
    try:
        leader = c.leader()
        follower, lagging = sorted(set(c.configs) - {leader})
        victim, keeper = (follower, leader) if whose == "follower" else (leader, follower)
        with c.client() as client:
            client.execute(Add("x", 1))
            c.wait_converged()
            c.kill(lagging, signal.SIGSTOP)  # the others commit without it
            for _ in range(199):
                client.execute(Add("x", 1))
        c.kill(victim)
        c.kill(keeper)
        _lose_log(os.path.join(c.dir, victim), how)
        c.start(victim)
        c.kill(lagging, signal.SIGCONT)
        code = c.procs[victim].wait(15)
        tail = c.tail(victim)
        last = tail.splitlines()[-1].strip() if tail else ""
        # exit code 1 and the reason as the last line: not a crash (an abort at exit left a
        # blank last line once, in CI) nor a start that went on
        assert code == 1 and os.path.join(c.dir, victim) in last and "rebuild" in last, \
            f"exit code {code}, its log's end:\n{tail}"
        c.start(keeper)
        with c.client(timeout=20) as client:
            assert client.query(Get("x")) == 200
    finally:
        c.stop()


def _prevalence(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rpc.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)


@pytest.mark.skipif(sys.platform != "linux", reason="mounts a tmpfs")
def test_a_backup_or_restore_onto_a_full_disk_says_which_file_and_leaves_nothing(tmp_path):
    """The operator's disk for backups fills: the one line must say which file could not
    be written and why (not only "No space left on device"), nothing half-written stays,
    and the cluster goes on serving; then the same for a restore into a full disk."""
    from tests.cluster.test_fail_stop import mount_tmpfs
    from tests.prevalence.domain import Put

    out = str(tmp_path / "out")
    mount_tmpfs(out, "16k")
    c = LocalCluster(tmp_path / "c", 3)
    try:
        c.leader()
        with c.client() as client:
            for i in range(200):
                client.execute(Put(f"k{i}-" + "v" * 200, i))  # a backup of some 50 KB
            good = str(tmp_path / "good.bak")
            r = _prevalence("backup", "--cluster", c.dir, "--out", good)
            assert r.returncode == 0, r.stderr
            target = os.path.join(out, "b.bak")
            r = _prevalence("backup", "--cluster", c.dir, "--out", target)
            assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
            assert target in r.stderr and "No space left on device" in r.stderr, r.stderr
            assert os.listdir(out) == []
            client.execute(Add("x", 1))  # still serving
            c.check_alive()
        restored = os.path.join(out, "restored")
        r = _prevalence("restore", good, "--data", restored)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
        assert restored in r.stderr and "No space left on device" in r.stderr, r.stderr
        assert os.listdir(out) == []
    finally:
        c.stop()
        subprocess.run(["umount", "-l", out], capture_output=True)


def test_a_snapshot_damaged_under_a_stopped_node_is_named_in_its_log(tmp_path):
    """The disk damaged a snapshot file while the node was stopped: the node rebuilds
    from an older snapshot and its journal, and catches up; but the operator must learn
    that a file of this disk is damaged (a failing disk is replaced before it loses more),
    not find a node that looks healthy."""
    c = LocalCluster(tmp_path, 3, snapshot_every=100)
    try:
        leader = c.leader()
        follower = sorted(set(c.configs) - {leader})[0]
        with c.client() as client:
            for _ in range(250):
                client.execute(Add("x", 1))
            c.wait_converged()
            c.kill(follower)
            newest = sorted(glob.glob(os.path.join(c.dir, follower, "snapshots", "*.snap")))[-1]
            os.truncate(newest, os.path.getsize(newest) // 2)
            c.start(follower)
            client.execute(Add("x", 1))
            c.wait_converged(follower)
            assert client.query(Get("x")) == 251
        warned = [line for line in c.log(follower).splitlines() if "WARNING" in line and newest in line]
        assert warned and "damaged" in warned[0], c.tail(follower)
    finally:
        c.stop()


@pytest.mark.parametrize("whose", ["follower", "leader"])
def test_a_journal_deleted_under_a_running_node_stops_it_and_nothing_acknowledged_is_lost(tmp_path, whose):
    """`rm -r` of a running node's journal (or a cleaner of old files under /tmp): the
    node went on writing and acknowledging into unlinked files, looking healthy, and
    what it held was gone at its next start. It must stop at its next write, in one
    line naming the file, while the others go on; and it must not start again on what
    is left."""
    c = LocalCluster(tmp_path, 3)
    try:
        leader = c.leader()
        victim = leader if whose == "leader" else sorted(set(c.configs) - {leader})[0]
        acked = 0
        with c.client(timeout=20) as client:
            for _ in range(50):
                client.execute(Add("x", 1))
                acked += 1
            c.wait_converged(victim)
            shutil.rmtree(os.path.join(c.dir, victim, "journal"))
            while c.alive(victim) and acked < 5000:
                client.execute(Add("x", 1))
                acked += 1
            assert c.procs[victim].wait(10) == 3
            last = c.tail(victim, 1)
            assert "CRITICAL" in last and "deleted or replaced" in last and os.path.join(victim, "journal") in last, last
            for _ in range(20):  # the other two go on
                client.execute(Add("x", 1))
                acked += 1
            assert client.query(Get("x")) == acked
        c.start(victim)
        assert c.procs[victim].wait(15) != 0  # its raft-state names a commit its journal no longer holds
        assert "rebuild" in c.tail(victim, 1)
    finally:
        c.stop()


def test_a_follower_put_back_from_an_old_copy_of_its_data_is_caught_up_and_named(tmp_path):
    """A follower's data directory was put back from an old copy (a VM snapshot, a file
    backup). Its log ended before 150 entries it had acknowledged; the leader counted them
    as there, and as long as no command came it never sent them: the node stayed behind
    for good, looking like a healthy follower. It must be caught up, and both sides must
    say at ERROR what happened to that disk."""
    c = LocalCluster(tmp_path, 3)
    try:
        leader = c.leader()
        victim = sorted(set(c.configs) - {leader})[0]
        data = os.path.join(c.dir, victim)
        with c.client() as client:
            for _ in range(20):
                client.execute(Add("x", 1))
            c.wait_converged(victim)
            c.kill(victim)
            shutil.copytree(data, str(tmp_path / "old-copy"))
            c.start(victim)
            for _ in range(150):
                client.execute(Add("x", 1))
            c.wait_converged(victim)
            c.kill(victim)
            shutil.rmtree(data)
            shutil.copytree(str(tmp_path / "old-copy"), data)
            c.start(victim)
            c.wait_converged(victim)  # no command meanwhile: heartbeats alone
        said = [line for line in c.log(victim).splitlines() if "ERROR" in line and "old copy" in line]
        assert said and f"acknowledged to {leader}" in said[0], c.tail(victim)
        said = [line for line in c.log(leader).splitlines() if "ERROR" in line and "old copy" in line]
        assert said and f"{victim}'s log ends at" in said[0], c.tail(leader)
    finally:
        c.stop()


@pytest.mark.parametrize("damage", [b"", b"format = 2\nnode = \"n"])
def test_an_identity_file_the_disk_emptied_or_cut_is_called_damaged_not_a_version(tmp_path, damage):
    """After a disk error and fsck, a node's identity.toml was found empty (or cut off).
    The node must refuse in one line that says the file is damaged and how to go on,
    not that its "format None is not one this version reads" (an upgrade question)."""
    c = LocalCluster(tmp_path, 3)
    try:
        c.leader()
        c.kill("n2")
        path = os.path.join(c.dir, "n2", "identity.toml")
        with open(path, "wb") as f:
            f.write(damage)
        c.start("n2")
        assert c.procs["n2"].wait(15) != 0
        last = c.tail("n2", 1).strip()
        assert path in last and "damaged" in last and "rebuild" in last and "version" not in last, last
    finally:
        c.stop()


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)


@pytest.fixture
def failing_disk(tmp_path):
    """``attach(path)``: mounts, at ``path``, ext4 on a loop device whose image lives on
    a small tmpfs, moving what ``path`` held onto it; returns ``(fail, repair)``.
    ``fail()`` fills that tmpfs, so the block device answers writes with EIO, as a dying
    disk does; ``repair()`` frees it, unmounts, runs fsck and mounts again."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("needs root on Linux for a loop device (a disk that fails with EIO)")
    back = str(tmp_path / "backing")
    os.makedirs(back)
    undo: list[tuple[str, ...]] = []

    def attach(path: str):
        r = _run("mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", back)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        undo.append(("umount", "-l", back))
        image = os.path.join(back, "image")
        _run("truncate", "-s", "64M", image)
        r = _run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", image)
        if r.returncode != 0:
            pytest.skip(f"cannot make an ext4 file system here: {r.stderr.strip()}")
        r = _run("losetup", "-f", "--show", image)
        if r.returncode != 0:
            pytest.skip(f"no loop device here: {r.stderr.strip()}")
        loop = r.stdout.strip()
        undo.append(("losetup", "-d", loop))
        held = path + ".held"
        os.rename(path, held)
        os.makedirs(path)
        assert _run("mount", "-o", "errors=remount-ro", loop, path).returncode == 0
        undo.append(("umount", "-l", path))
        os.rmdir(os.path.join(path, "lost+found"))
        for name in os.listdir(held):
            assert _run("cp", "-a", os.path.join(held, name), path).returncode == 0
        os.sync()
        filler = os.path.join(back, "filler")

        def fail() -> None:
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                while True:
                    os.write(fd, b"\0" * (1 << 16))
            except OSError:
                pass
            finally:
                os.close(fd)

        def repair() -> None:
            os.remove(filler)
            for _ in range(50):  # the node's files are closed by now; the kernel may lag
                if _run("umount", path).returncode == 0:
                    break
                time.sleep(0.1)
            else:
                raise AssertionError(f"cannot unmount {path}")
            _run("fsck.ext4", "-y", loop)
            assert _run("mount", "-o", "errors=remount-ro", loop, path).returncode == 0

        return fail, repair

    try:
        yield attach
    finally:
        for cmd in reversed(undo):
            _run(*cmd)


def test_a_follower_whose_disk_fails_with_eio_stops_and_rejoins_once_repaired(tmp_path, failing_disk):
    """A dying disk under a follower: it exits non-zero with one line naming the failed
    journal write, the others go on serving, nothing acknowledged is lost, and once the
    disk is repaired (fsck) the node restarts from it and catches up."""
    c = LocalCluster(tmp_path / "c", 3, start=False)
    try:
        fail, repair = failing_disk(os.path.join(c.dir, "n2"))  # before n2 starts: its data moves there
        c.start("n1")
        c.start("n3")
        c.leader()
        c.start("n2")
        acked = 0
        with c.client(timeout=20) as client:
            for _ in range(100):
                client.execute(Add("x", 1))
                acked += 1
            c.wait_converged("n2")
            fail()
            while c.alive("n2") and acked < 20000:
                client.execute(Add("x", 1))
                acked += 1
            assert c.procs["n2"].wait(10) == 3
            last = c.tail("n2", 1)
            assert "CRITICAL" in last and "Input/output error" in last and "journal" in last, last
            for _ in range(50):  # the other two go on
                client.execute(Add("x", 1))
                acked += 1
            repair()
            c.start("n2")
            c.wait_converged("n2")
            assert client.query(Get("x")) == acked
    finally:
        c.stop()


@pytest.mark.skipif(sys.platform != "linux", reason="mounts a tmpfs")
def test_a_node_refused_at_start_on_a_full_disk_says_why_not_only_that_the_disk_is_full(tmp_path):
    """A node that cannot start (here: its identity file damaged) on a disk that is full
    or read-only gave up its lock on the way out, and that lock's write failed too: the
    operator read "error: No space left on device" (no file, no cause) instead of the
    refusal itself. The refusal must be the line the node ends with."""
    from tests.cluster.test_fail_stop import fill, mount_tmpfs

    data = str(tmp_path / "n2")
    mount_tmpfs(data, "4m")
    c = LocalCluster(tmp_path, 3)
    try:
        c.leader()
        c.kill("n2")
        os.remove(os.path.join(data, "LOCK"))  # as a graceful stop on another version, or an operator
        identity = os.path.join(data, "identity.toml")
        with open(identity, "wb") as f:
            f.write(b"format = 2\nnode = \"n")
        fill(data)
        c.start("n2")
        assert c.procs["n2"].wait(15) != 0
        last = c.tail("n2", 1).strip()
        assert identity in last and "damaged" in last, last
    finally:
        c.stop()
        subprocess.run(["umount", "-l", data], capture_output=True)


@pytest.mark.skipif(sys.platform != "linux", reason="mounts a tmpfs")
def test_a_file_a_full_disk_could_not_replace_is_named(tmp_path):
    """A node with data from before identity files (here: its identity.toml removed)
    writes one at start, from the log's cluster id; on a full disk it cannot, and must
    say which file, not only "No space left on device". Once space returns it starts."""
    from tests.cluster.test_fail_stop import fill, mount_tmpfs

    data = str(tmp_path / "n2")
    mount_tmpfs(data, "4m")
    c = LocalCluster(tmp_path, 3)
    try:
        c.leader()
        with c.client() as client:
            client.execute(Add("x", 1))
        c.wait_converged()
        c.kill("n2")
        os.remove(os.path.join(data, "identity.toml"))
        filler = fill(data)
        c.start("n2")
        assert c.procs["n2"].wait(15) != 0
        last = c.tail("n2", 1).strip()
        assert os.path.join(data, "identity.toml") in last and "No space left on device" in last, last
        os.remove(filler)
        c.start("n2")
        c.wait_converged("n2")
    finally:
        c.stop()
        subprocess.run(["umount", "-l", data], capture_output=True)


@pytest.mark.skipif(sys.platform != "linux", reason="mounts a tmpfs")
def test_when_every_disk_is_full_a_client_is_told_so_and_writes_resume_when_space_returns(tmp_path):
    """Every node's disk fills: no node can journal a command. A client must hear that
    the disks are full, not that the node the status calls leader "is not the leader
    (hint: None)"; and once space returns, writes go on with nothing acknowledged lost."""
    from rpc.client import ClusterUnavailable
    from tests.cluster.test_fail_stop import fill, mount_tmpfs

    for nid in ("n1", "n2", "n3"):
        mount_tmpfs(str(tmp_path / nid), "8m")
    c = LocalCluster(tmp_path, 3)
    try:
        c.leader()
        with c.client() as client:
            for _ in range(20):
                client.execute(Add("x", 1))
        fillers = [fill(str(tmp_path / nid)) for nid in c.configs]
        acked: list = []
        stop = threading.Event()

        def writer() -> None:  # until the disks are found full; its last command waits for space
            with c.client(timeout=60) as client:
                while not stop.is_set():  # entries of 8 KiB: each needs new blocks, the leader's too
                    acked.append(client.execute(Add("x" + " " * 8192, 1)))

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        c.wait_for("every node to find its disk full", lambda: all(r.get("disk_full") for r in c.status().values()),
                   10)
        with pytest.raises(ClusterUnavailable) as caught, c.client(timeout=3) as client:
            client.execute(Add("x", 1))
        assert "disk is full" in str(caught.value), caught.value
        stop.set()
        for filler in fillers:
            os.remove(filler)
        t.join(30)
        assert not t.is_alive() and acked == list(range(1, 1 + len(acked)))  # each once, in order
        with c.client(timeout=20) as client:
            assert client.query(Get("x" + " " * 8192)) == len(acked)
            assert client.query(Get("x")) == 20
        c.check_alive()
    finally:
        c.stop()
        for nid in ("n1", "n2", "n3"):
            subprocess.run(["umount", "-l", str(tmp_path / nid)], capture_output=True)


def test_a_node_whose_disk_freezes_is_named_stalled_and_catches_up_after(tmp_path, failing_disk):
    """A disk that stops answering for seconds (an SD card's garbage collection, an
    antivirus; here `fsfreeze` on its file system): the others go on, and status must
    not call the node healthy meanwhile (it said "follower" for 15 s), then it catches up
    by itself with nothing acknowledged lost."""
    from rpc.cluster import cluster_status

    if shutil.which("fsfreeze") is None:
        pytest.skip("no fsfreeze here (util-linux)")
    c = LocalCluster(tmp_path / "c", 3, start=False)
    disk = os.path.join(c.dir, "n1")
    try:
        failing_disk(disk)  # n1's data on ext4 on a loop device, before n1 starts
        for nid in c.configs:
            c.start(nid)
        c.leader()
        acked, slowest = 0, 0.0
        with c.client(timeout=20) as client:
            for _ in range(20):
                client.execute(Add("x", 1))
                acked += 1
            c.wait_converged("n1")
            assert _run("fsfreeze", "-f", disk).returncode == 0
            try:
                said, deadline = "", time.monotonic() + 10
                while not said:
                    t0 = time.monotonic()
                    client.execute(Add("x", 1))  # the two others go on
                    acked += 1
                    slowest = max(slowest, time.monotonic() - t0)
                    row = next(r for r in cluster_status(c.dir) if r["id"] == "n1")  # as `prevalence status` waits
                    said = (f"disk stalled {row['disk_stalled']:g} s" if row.get("disk_stalled") else
                            row.get("error", "") if "under way" in row.get("error", "") else "")
                    assert time.monotonic() < deadline, f"n1's disk frozen for 10 s, its status: {row}"
            finally:
                _run("fsfreeze", "-u", disk)
            assert slowest < 3.0, f"a write waited {slowest:.1f} s for a frozen disk under one node"
            c.wait_converged("n1", timeout=20)
            assert client.query(Get("x")) == acked
        c.check_alive()
    finally:
        _run("fsfreeze", "-u", disk)
        c.stop()

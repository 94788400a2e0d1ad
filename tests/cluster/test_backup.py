"""Backups on real processes: taken through the leader under concurrent writes,
restored into a new cluster, and a damaged file refused with one line."""
from __future__ import annotations

import os
import threading

import pytest

from replication.journal_storage import node_data_identity
from rpc.cli import main
from tests.cluster.harness import ROOT, LocalCluster
from tests.prevalence.domain import Snapshot, Stamp

pytestmark = pytest.mark.slow


def tags(c: LocalCluster, nid: str) -> list[str]:
    return [item[0] for item in c.call(nid, "query", Snapshot())[1][1]]


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_a_backup_under_writes_restores_into_a_new_cluster_and_a_damaged_one_is_refused(tmp_path, capsys):
    c = LocalCluster(tmp_path / "a", 3)
    backup = str(tmp_path / "yesterday.backup")
    restored = None
    try:
        c.leader()
        acked: list[str] = []
        with c.client() as client:
            for i in range(30):
                client.execute(Stamp(f"before{i}"))
                acked.append(f"before{i}")
        stop = threading.Event()

        def writer():
            with c.client() as w:
                i = 0
                while not stop.is_set():
                    w.execute(Stamp(f"during{i}"))
                    i += 1

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        try:
            assert main(["backup", "--cluster", c.dir, "--out", backup]) == 0
        finally:
            stop.set()
            t.join(10)
        out = capsys.readouterr().out
        a_id = node_data_identity(c.configs["n1"].data, "n1").cluster
        assert f"cluster {a_id} epoch 0" in out and "index" in out and "sha256" in out
        assert main(["backup", "verify", backup]) == 0
        assert "valid backup" in capsys.readouterr().out
        index = int(out.split("index ")[1].split()[0])
        leader_tags = tags(c, c.leader())
        c.stop()

        # restore into a new directory: a new cluster id, the state as of the backup's index
        assert main(["restore", backup, "--data", str(tmp_path / "b")]) == 0
        restored = LocalCluster.open(str(tmp_path / "b"), cwd=ROOT)
        for nid in restored.configs:
            restored.start(nid)
        lead = restored.leader()
        got = tags(restored, lead)
        assert got[:len(acked)] == acked  # every write acknowledged before the backup
        assert got == leader_tags[:len(got)] and restored.status()[lead]["applied_index"] >= index
        b_id = node_data_identity(restored.configs["n1"].data, "n1").cluster
        assert b_id and b_id != a_id
        with restored.client() as client:
            client.execute(Stamp("restored"))

        # damaged: one byte flipped in the middle; refused by verify and restore, nothing written
        data = bytearray(open(backup, "rb").read())
        data[len(data) // 2] ^= 0xFF
        damaged = str(tmp_path / "damaged.backup")
        open(damaged, "wb").write(bytes(data))
        assert main(["backup", "verify", damaged]) == 1
        assert "damaged backup" in one_line_error(capsys)
        assert main(["restore", damaged, "--data", str(tmp_path / "c")]) == 1
        assert "damaged backup" in one_line_error(capsys)
        assert not os.path.exists(tmp_path / "c")
        open(damaged, "wb").write(b"not a backup at all")
        assert main(["backup", "verify", damaged]) == 1
        assert "not a prevalence backup" in one_line_error(capsys)
    finally:
        c.stop()
        if restored is not None:
            restored.stop()


def test_a_backup_needs_the_admin_key_and_is_never_written_over_a_file(tmp_path, capsys):
    c = LocalCluster(tmp_path, 1)
    try:
        lead = c.leader()
        from rpc.transport import NodeLink

        with NodeLink(c.configs[lead].listen, c.secret) as link:  # the client key
            for method, args in (("backup_begin", ()), ("backup_chunk", ("0" * 32, 0)), ("backup_end", ("0" * 32,))):
                reply = link.call(method, *args)
                assert reply[0] == "error" and "admin.secret" in reply[-1], (method, reply)
        existing = tmp_path / "existing"
        existing.write_text("keep me")
        assert main(["backup", "--cluster", c.dir, "--out", str(existing)]) == 1
        assert "exists" in one_line_error(capsys) and existing.read_text() == "keep me"
    finally:
        c.stop()


def test_a_follower_asked_for_a_backup_names_the_leader(tmp_path):
    from rpc.transport import NodeLink

    c = LocalCluster(tmp_path, 3)
    try:
        lead, _ = c.stable_leader()
        follower = sorted(n for n in c.configs if n != lead)[0]
        with NodeLink(c.configs[follower].listen, c.admin_key, role="admin", ident="admin") as link:
            reply = link.call("backup_begin")
        # never a backup taken off a follower; the leader it knows (under load it may have moved)
        assert reply[0] == "not_leader" and reply[1] != follower, reply
    finally:
        c.stop()


def test_restore_places_the_nodes_at_given_addresses_and_refuses_an_incomplete_list(tmp_path, capsys):
    from rpc.cluster import free_port_block

    c = LocalCluster(tmp_path / "a", 1)
    backup = str(tmp_path / "b.backup")
    restored = None
    try:
        c.leader()
        with c.client() as client:
            client.execute(Stamp("kept"))
        assert main(["backup", "--cluster", c.dir, "--out", backup]) == 0
        c.stop()
        base = free_port_block(2)
        placed = [f"n1=127.0.0.1:{base + 1}", f"n2=127.0.0.1:{base}"]  # not the 127.0.0.1 block restore picks
        assert main(["restore", backup, "--data", str(tmp_path / "bad"), "--nodes", "2", "--address", placed[0]]) == 1
        assert "give one for each of n1, n2" in one_line_error(capsys)
        assert not os.path.exists(tmp_path / "bad")
        assert main(["restore", backup, "--data", str(tmp_path / "r"), "--nodes", "2",
                     "--address", placed[0], "--address", placed[1]]) == 0
        restored = LocalCluster.open(str(tmp_path / "r"), cwd=ROOT)
        assert restored.configs["n1"].listen == ("127.0.0.1", base + 1)
        assert restored.configs["n2"].peers["n1"] == ("127.0.0.1", base + 1)
        for nid in restored.configs:
            restored.start(nid)
        lead = restored.leader()
        assert tags(restored, lead) == ["kept"]
        with restored.client() as client:
            client.execute(Stamp("two nodes"))
        restored.wait_converged()
    finally:
        c.stop()
        if restored is not None:
            restored.stop()


def test_a_backup_bigger_than_one_chunk_travels_in_chunks_and_restores(tmp_path, monkeypatch):
    import msgpack

    from rpc import transport
    from rpc.backup import CHUNK, BackupError, fetch_backup, read_backup

    c = LocalCluster(tmp_path / "a", 3)
    backup = str(tmp_path / "big.backup")
    restored = None
    try:
        c.leader()
        big = [f"{i}:" + os.urandom(100_000).hex() for i in range(24)]  # ~4.8 MB of state: five chunks
        with c.client() as client:
            for tag in big:
                client.execute(Stamp(tag))
        # one byte altered in transit, in the third chunk: the stream's SHA-256 catches it
        real = transport.remote_method
        faults = {"alter": 2 * CHUNK}

        def faulty(conn, name, *timeout):
            method = real(conn, name, *timeout)
            if name != "backup_chunk":
                return method

            def call(sid, offset):
                if faults.pop("drop", None) == offset:  # the connection lost once: read again
                    conn.close()
                    raise EOFError("connection lost")
                reply = msgpack.unpackb(method(sid, offset), raw=False)
                if faults.get("alter") == offset:
                    reply[1] = reply[1][:9] + bytes([reply[1][9] ^ 1]) + reply[1][10:]
                return msgpack.packb(reply, use_bin_type=True)
            return call

        monkeypatch.setattr(transport, "remote_method", faulty)
        with pytest.raises(BackupError, match="does not match the leader's SHA-256"):
            fetch_backup(c.dir, backup)
        assert not os.path.exists(backup) and not os.path.exists(backup + ".tmp")

        faults.clear()
        faults["drop"] = CHUNK  # a new connection, the same session, from the same offset
        assert main(["backup", "--cluster", c.dir, "--out", backup]) == 0
        assert "drop" not in faults
        assert os.path.getsize(backup) > 4 * CHUNK and not os.path.exists(backup + ".tmp")
        info, _ = read_backup(backup)
        c.stop()
        assert main(["restore", backup, "--data", str(tmp_path / "b"), "--nodes", "1"]) == 0
        restored = LocalCluster.open(str(tmp_path / "b"), cwd=ROOT)
        restored.start("n1")
        lead = restored.leader()
        assert restored.status()[lead]["applied_index"] >= info.index
        with restored.client() as client:
            assert [item[0] for item in client.query(Snapshot())[1]] == big
    finally:
        c.stop()
        if restored is not None:
            restored.stop()


class _Process:
    """What BackupSessions needs of a node process, for the sessions' own rules."""


def test_backup_sessions_are_bounded_in_number_and_expire(monkeypatch):
    import time

    from rpc import backup
    from rpc.backup import BackupError, BackupSessions

    snapshot = os.urandom(2_500_000)
    monkeypatch.setattr(backup, "take_backup", lambda process: (b"HEAD\n", snapshot))
    sessions = BackupSessions(idle=0.3, lifetime=5.0, max_sessions=2, chunk=1 << 20)
    sid, size, sha256, chunk = sessions.begin(_Process())
    assert size == len(snapshot) + 5 and chunk == 1 << 20
    got = b"".join(sessions.read(sid, offset) for offset in range(0, size, chunk))
    assert got == b"HEAD\n" + snapshot and backup.hashlib.sha256(got).hexdigest() == sha256
    assert sessions.read(sid, 3) == (b"HEAD\n" + snapshot)[3:3 + chunk]  # any offset, again: a retry
    for bad in (-1, size):
        with pytest.raises(BackupError, match="outside"):
            sessions.read(sid, bad)
    other, *_ = sessions.begin(_Process())
    with pytest.raises(BackupError, match="already being taken"):
        sessions.begin(_Process())
    assert sessions.end(other) and not sessions.end(other)
    time.sleep(1.0)  # nobody asks for a chunk: the session expires, its snapshot let go
    assert len(sessions) == 0
    with pytest.raises(BackupError, match="expired"):
        sessions.read(sid, 0)


def test_backups_begun_at_once_take_no_more_snapshots_than_sessions_allowed(monkeypatch):
    """Each begin holds a whole snapshot in memory before its session is counted: admin
    callers that begin together must be refused before taking one, not after, or N of
    them pin N snapshots (and write N snapshot files) on a 2 GB PC."""
    import time

    from rpc import backup
    from rpc.backup import BackupError, BackupSessions

    running, most, lock = 0, 0, threading.Lock()
    release = threading.Event()

    def slow_take(process):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(5.0)
        with lock:
            running -= 1
        return b"HEAD\n", bytes(1000)

    monkeypatch.setattr(backup, "take_backup", slow_take)
    sessions = BackupSessions(idle=5.0, lifetime=5.0, max_sessions=2)
    outcomes: list = []

    def begin() -> None:
        try:
            outcomes.append(sessions.begin(_Process()))
        except BackupError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=begin) for _ in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 2.0
    while sum(isinstance(o, BackupError) for o in outcomes) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    for t in threads:
        t.join(10.0)
    assert most <= 2, f"{most} snapshots taken at once for at most 2 sessions"
    assert sum(type(o) is tuple for o in outcomes) == 2 and len(sessions) == 2


def test_a_backup_begin_that_fails_gives_its_slot_back(monkeypatch):
    from replication.errors import NotLeader
    from rpc import backup
    from rpc.backup import BackupSessions

    def not_leader(process):
        raise NotLeader("n1", "n2")

    monkeypatch.setattr(backup, "take_backup", not_leader)
    sessions = BackupSessions(max_sessions=1)
    for _ in range(3):  # a follower asked again and again never fills its slots
        with pytest.raises(NotLeader):
            sessions.begin(_Process())
    monkeypatch.setattr(backup, "take_backup", lambda process: (b"HEAD\n", b"x"))
    assert sessions.begin(_Process())[1] == 6

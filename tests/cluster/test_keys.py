"""Trust boundaries against real node processes (issue 15, items 1 and 2): a client key
never acts as a peer or an admin, and a peer is bound to the membership and to its own id.

Each forged message is what an attacker would send; the checks are on its effects: no
code run from a forged snapshot, no term or leader change, the state unchanged.
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import pytest

import rpc

from prevalence.codec import CODEC
from prevalence.sessions import SetSessionExpiry
from prevalence.snapshots import SnapshotMeta as FileMeta, encode_file
from replication.membership import Membership
from replication.messages import Heartbeat, InstallSnapshot, SnapshotMeta, encode
from rpc.auth import AuthenticationFailed
from rpc.secret import generate_secret_file, load_secret
from rpc.transport import NodeLink, hard_close, open_connection, open_peer_channel, remote_method
from rpc.wire import encode_batch
from tests.cluster.harness import ROOT, LocalCluster, free_port_block
from tests.prevalence.domain import Add, Get

pytestmark = pytest.mark.slow

OPERATOR_KEY = "client.secret"  # the key file an operator's PC holds
PEER_KEY = "peer.secret"  # the key file only the node PCs hold


class _RunsCode:
    """A pickle whose loading creates ``path``: proof that a forged snapshot ran code."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    """One cluster for the forgeries: each leaves it as it was, which is what they check."""
    c = LocalCluster(tmp_path_factory.mktemp("trio"), 3)
    leader, _ = c.stable_leader()
    assert c.call(leader, "execute", Add("x", 7))[0] == "ok"
    c.wait_converged()
    yield c
    c.stop()


def key(c: LocalCluster, name: str) -> bytes:
    return load_secret(os.path.join(c.dir, name))


def roles(c: LocalCluster) -> tuple[str, list[str], dict]:
    leader, st = c.stable_leader()
    return leader, sorted(n for n in st if n != leader), st


def deliver(c: LocalCluster, nid: str, secret: bytes, ident: str, *msgs) -> bool:
    """Deliver raw Raft messages to ``nid`` as whatever the key lets us be; True if the
    node took the delivery (what it then does with each message is another matter)."""
    batch = [encode(m) for m in msgs]
    try:  # the nodes' own protocol: only the peer key gets there
        with open_peer_channel(c.configs[nid].listen, secret, ident=ident) as chan:
            chan.call(batch, timeout=2.0)
            return True
    except AuthenticationFailed:
        pass
    try:  # RPyC, as the role the key has
        conn = open_connection(c.configs[nid].listen, secret, role="client", ident=ident, request_timeout=2.0)
    except AuthenticationFailed:
        return False
    try:
        remote_method(conn, "deliver")(encode_batch(batch))
        return True
    except Exception:  # noqa: BLE001 - not exposed to this role
        return False
    finally:
        hard_close(conn)


def forged_snapshot(c: LocalCluster, src: str, dst: str, term: int, index: int, marker: str) -> InstallSnapshot:
    membership = Membership(tuple(c.configs), ())
    meta = FileMeta(index=index, term=term, timestamp_us=0, serializer="pickle",
                    extra={"membership": membership.to_wire()})
    data = b"".join(encode_file(meta, pickle.dumps(_RunsCode(marker))))
    return InstallSnapshot(src, dst, term, SnapshotMeta(index, term, membership), 0, data, True)


def assert_undisturbed(c: LocalCluster, leader: str, term: int, marker: str | None = None) -> None:
    """A while later: same leader and term everywhere, no code ran, the state intact."""
    time.sleep(1.0)
    if marker is not None:
        assert not os.path.exists(marker), "a forged snapshot ran code on a node"
    c.check_alive()
    st = c.status()
    assert {n: (r["term"], r["role"]) for n, r in st.items()} == \
        {n: (term, "leader" if n == leader else "follower") for n in st}, st
    for nid, cfg in c.configs.items():
        with NodeLink(cfg.listen, key(c, OPERATOR_KEY), ident="check", timeout=2.0) as link:
            assert link.call("query", CODEC.dumps(Get("x")), "local") == ["ok", 7], nid
    assert c.call(leader, "execute", Add("y", 1))[0] == "ok"


def test_a_client_key_cannot_authenticate_as_a_peer(trio):
    leader, followers, _ = roles(trio)
    with pytest.raises(AuthenticationFailed):
        open_peer_channel(trio.configs[leader].listen, key(trio, OPERATOR_KEY), ident=followers[0]).close()
    assert not deliver(trio, leader, key(trio, OPERATOR_KEY), followers[0])


def test_a_forged_snapshot_from_a_client_is_never_loaded(trio, tmp_path):
    leader, followers, st = roles(trio)
    term, marker = st[leader]["term"], str(tmp_path / "pwned")
    for f in followers:
        snap = forged_snapshot(trio, "evil", f, term + 50, st[leader]["commit_index"] + 100, marker)
        deliver(trio, f, key(trio, OPERATOR_KEY), "evil", snap)
    assert_undisturbed(trio, leader, term, marker)


def test_a_forged_heartbeat_from_a_client_moves_no_node(trio):
    leader, followers, st = roles(trio)
    term = st[leader]["term"]
    for nid in trio.configs:
        deliver(trio, nid, key(trio, OPERATOR_KEY), "evil", Heartbeat("evil", nid, term + 50))
    assert_undisturbed(trio, leader, term)


@pytest.mark.parametrize("ident", ["evil", "member"])
def test_a_forged_heartbeat_from_a_non_member_moves_no_node(trio, ident):
    """With the peer key: an id that is no member, or a member's id on a message that
    claims to come from someone else."""
    leader, followers, st = roles(trio)
    term = st[leader]["term"]
    for nid in trio.configs:
        me = followers[0] if nid != followers[0] else followers[1]
        assert deliver(trio, nid, key(trio, PEER_KEY), me if ident == "member" else "evil",
                       *[Heartbeat("evil", nid, term + 50 + k) for k in range(20)])
    assert_undisturbed(trio, leader, term)
    why = "sends messages that claim another sender" if ident == "member" else "is not a member"
    for nid in trio.configs:  # dropped, and said once (a minute), not once a message
        me = followers[0] if nid != followers[0] else followers[1]
        said = f"dropping messages from peer {me if ident == 'member' else 'evil'!r}: it {why}"
        assert trio.log(nid).count(said) == 1, trio.tail(nid)


def test_a_forged_snapshot_from_a_non_member_is_never_loaded(trio, tmp_path):
    leader, followers, st = roles(trio)
    term, marker = st[leader]["term"], str(tmp_path / "pwned")
    for f in followers:
        snap = forged_snapshot(trio, "evil", f, term + 50, st[leader]["commit_index"] + 100, marker)
        assert deliver(trio, f, key(trio, PEER_KEY), "evil", snap)
    assert_undisturbed(trio, leader, term, marker)


def test_a_snapshot_comes_only_from_the_leader_of_its_term(trio, tmp_path):
    """A member that is not the leader sends a snapshot in the current term: not installed."""
    leader, (f1, f2), st = roles(trio)
    term, marker = st[leader]["term"], str(tmp_path / "pwned")
    snap = forged_snapshot(trio, f2, f1, term, st[leader]["commit_index"] + 100, marker)
    assert deliver(trio, f1, key(trio, PEER_KEY), f2, snap)
    assert_undisturbed(trio, leader, term, marker)


def test_a_client_with_a_key_every_node_refuses_fails_at_once_naming_the_key(trio, tmp_path):
    """A wrong key is no outage: when every node answers and refuses our proof, retrying
    until the deadline only hides the cause (``grid show`` sat 10 s on it)."""
    wrong = tmp_path / "wrong.secret"
    generate_secret_file(wrong)
    addresses = [cfg.listen for cfg in trio.configs.values()]
    for use_key in (load_secret(str(wrong)), key(trio, PEER_KEY)):
        client = rpc.connect([f"{h}:{p}" for h, p in addresses], secret=use_key, timeout=10.0)
        try:
            t0 = time.monotonic()
            with pytest.raises(AuthenticationFailed, match=r"(refused our authentication.*wrong key|took our key)"):
                client.execute(Add("x", 1))
            assert time.monotonic() - t0 < 2.0
            with pytest.raises(AuthenticationFailed):
                client.query(Get("x"))
        finally:
            client.close()
    with rpc.connect([f"{h}:{p}" for h, p in addresses], secret=key(trio, OPERATOR_KEY)) as client:
        assert client.query(Get("x")) == 7  # the right key works as before


def test_admin_calls_with_a_client_key_are_refused(trio):
    leader, (f1, _f2), st = roles(trio)
    term = st[leader]["term"]
    cfg = trio.configs[leader]
    with NodeLink(cfg.listen, key(trio, OPERATOR_KEY), ident="operator", timeout=15.0) as link:
        before = link.call("status")[1]
        refusals = [
            link.call("change_membership", "add_learner", "n9", "127.0.0.1:9"),
            link.call("change_membership", "remove", f1),
            link.call("transfer_leadership", f1),
            link.call("execute", CODEC.dumps(SetSessionExpiry(3600))),
        ]
    for reply in refusals:
        assert reply[0] == "error" and "admin" in reply[1], refusals
    with NodeLink(cfg.listen, key(trio, OPERATOR_KEY), ident="operator", timeout=5.0) as link:
        now = link.call("status")[1]
    assert (now["voters"], now["learners"], now["session_expiry_s"]) == \
        (sorted(trio.configs), [], before["session_expiry_s"]), now
    assert_undisturbed(trio, leader, term)


def test_admin_calls_with_the_admin_key_are_done(trio):
    leader, (f1, _f2), _ = roles(trio)
    with NodeLink(trio.configs[leader].listen, key(trio, "admin.secret"), ident="ops", timeout=15.0,
                  role="admin") as link:
        assert link.call("execute", CODEC.dumps(SetSessionExpiry(3600))) == ["ok", 3600]
        assert link.call("transfer_leadership", f1) == ["ok", None]
    assert trio.leader(exclude={leader}) == f1


# -- a directory from before keys had roles


def prevalence(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rpc.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_a_cluster_directory_with_the_one_cluster_secret_stops_then_moves_to_a_key_per_role(tmp_path):
    from rpc.cluster import write_cluster
    from rpc.secret import generate_secret_file

    paths = write_cluster(str(tmp_path), 3, free_port_block(3), "tests.prevalence.domain:Store")
    for path in paths:  # as the previous version wrote them
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f.read().splitlines() if not line.startswith(("peer_secret", "client_secret",
                                                                                      "admin_secret"))]
        lines.insert(4, 'secret_file = "cluster.secret"')
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n# the operator's note stays\n")
    for role in ("peer", "client", "admin"):
        os.remove(tmp_path / f"{role}.secret")
    generate_secret_file(tmp_path / "cluster.secret")

    for args in (["status", "--cluster", str(tmp_path)], ["node", "--config", paths[0]],
                 ["cluster", "up", "--data", str(tmp_path), "--root", "tests.prevalence.domain:Store"]):
        stopped = prevalence(*args)
        assert stopped.returncode == 1 and stopped.stderr.count("\n") == 1, (args, stopped.stderr)
        assert "cluster.secret" in stopped.stderr and "prevalence cluster keys" in stopped.stderr, stopped.stderr

    moved = prevalence("cluster", "keys", "--cluster", str(tmp_path))
    assert moved.returncode == 0, moved.stderr
    assert "made peer.secret" in moved.stdout and "removed cluster.secret" in moved.stdout
    assert not (tmp_path / "cluster.secret").exists()
    assert all("# the operator's note stays" in open(p, encoding="utf-8").read() for p in paths)
    c = LocalCluster.open(str(tmp_path), cwd=ROOT)
    try:
        for nid in c.configs:
            c.start(nid)
        assert c.call(c.leader(), "execute", Add("x", 1))[:2] == ["ok", 1]
    finally:
        c.stop()
    again = prevalence("cluster", "keys", "--cluster", str(tmp_path))
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_a_node_whose_files_give_two_roles_one_key_does_not_start(tmp_path):
    """The key that proves itself is the role: one key for two roles would hand the
    client key's holders the admin role."""
    import shutil

    from rpc.cluster import write_cluster

    paths = write_cluster(str(tmp_path), 1, free_port_block(1), "tests.prevalence.domain:Store")
    os.remove(tmp_path / "admin.secret")
    shutil.copy(tmp_path / "client.secret", tmp_path / "admin.secret")
    refused = prevalence("node", "--config", paths[0])
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "the client and admin keys are the same key" in refused.stderr, refused.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_cluster_up_never_reuses_key_files_in_a_directory_others_can_write(tmp_path):
    from rpc.cluster import write_keys
    from rpc.secret import SecretError, generate_secret_file

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp: anyone could have put a key file here first
    generate_secret_file(shared / "peer.secret")
    with pytest.raises(SecretError, match="others can write this directory, so its peer.secret may not be ours"):
        write_keys(str(shared))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    os.chmod(fresh, 0o1777)
    assert write_keys(str(fresh)) == ["peer.secret", "client.secret", "admin.secret"]  # made here: fine
    own = tmp_path / "own"
    own.mkdir(0o700)
    generate_secret_file(own / "peer.secret")
    assert write_keys(str(own)) == ["client.secret", "admin.secret"]  # a directory of ours: kept


@pytest.mark.skipif(sys.platform == "win32", reason="uses SIGTERM")
def test_the_peer_key_is_replaced_by_rolling_restarts_with_no_failed_command(tmp_path):
    """docs/security.md's procedure: accept the new key beside the old, then use it, then
    drop the old; a client writing all along sees every command applied once."""
    from rpc.secret import generate_secret_file

    c = LocalCluster(tmp_path, 3)
    results: list = []
    errors: list = []
    stop = threading.Event()

    def writer() -> None:
        with c.client(timeout=20.0) as client:
            while not stop.is_set():
                try:
                    results.append(client.execute(Add("n", 1)))
                except Exception as exc:  # noqa: BLE001 - counted: there must be none
                    errors.append(exc)
                time.sleep(0.01)

    def rolling(edit) -> None:
        for nid in sorted(c.configs):
            c.kill(nid, signal.SIGTERM)  # a graceful stop: a leader hands over first
            c.procs[nid].wait(15)
            path = c.configs[nid].path
            with open(path, encoding="utf-8") as f:
                text = f.read()
            with open(path, "w", encoding="utf-8") as f:
                f.write(edit(text))
            c.start(nid)
            target = max(r["commit_index"] or 0 for r in c.status().values())

            def caught_up() -> bool:  # back, and holding what was committed while it was down
                r = c.status()[nid]
                return r["reachable"] and r["applied_index"] >= target

            c.wait_for(f"{nid} to catch up", caught_up, 15.0)

    old = key(c, PEER_KEY)
    try:
        c.stable_leader()
        generate_secret_file(tmp_path / "peer.secret.new")
        thread = threading.Thread(target=writer)
        thread.start()
        rolling(lambda t: t + '\n[rotation]\npeer = "peer.secret.new"\n')  # 1: accept the new key too
        rolling(lambda t: t.replace('peer_secret = "peer.secret"', 'peer_secret = "peer.secret.new"')
                .replace('peer = "peer.secret.new"', 'peer = "peer.secret"'))  # 2: use it, accept the old
        rolling(lambda t: t.replace('\n[rotation]\npeer = "peer.secret"\n', ""))  # 3: drop the old
        time.sleep(0.3)
        stop.set()
        thread.join(30)
        assert not errors, errors[:3]
        assert len(results) > 10 and results == list(range(1, len(results) + 1))
        leader = c.leader()
        with pytest.raises(AuthenticationFailed, match="refused our authentication"):
            open_peer_channel(c.configs[leader].listen, old, ident="n1")
    finally:
        stop.set()
        c.stop()

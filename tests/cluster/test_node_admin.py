"""An operator on a bad day, from outside: `prevalence node`, `status` and `cluster ...`
run as processes on wrong files, wrong values and wrong ids. Each answer is one line
naming the file and the problem, a non-zero exit, no traceback, and nothing half made."""
from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

import rpc.admin
import rpc.cluster
from rpc import cli
from rpc.auth import AuthenticationFailed
from rpc.cluster import write_cluster
from rpc.transport import NodeLink
from tests.cluster.harness import ROOT, TEST_ROOT, LocalCluster


def prevalence(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    """The `prevalence` command of this tree, run as an operator runs it."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "rpc.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    """The one line of an error exit (code 1) that names ``words``; no traceback."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture
def directory(tmp_path):
    """A cluster directory as `cluster up` writes it (its nodes not started)."""
    write_cluster(str(tmp_path), 3, 17_000, TEST_ROOT)
    return tmp_path


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", bytes(range(256)) * 4], ids=["utf16", "binary"])
def test_a_config_that_is_not_text_is_one_line_naming_the_file(directory, content):
    bad = directory / "n1.toml"
    bad.write_bytes(content)
    one_line_error(prevalence("node", "--config", str(bad)), str(bad), "UTF-8")
    status = prevalence("status", "--cluster", str(directory))  # the other nodes' rows, and why not this one
    assert status.returncode == 1 and "Traceback" not in status.stderr, status
    assert str(bad) in status.stdout and "UTF-8" in status.stdout, status.stdout
    one_line_error(prevalence("cluster", "keys", "--cluster", str(directory)), str(bad), "UTF-8")
@pytest.mark.parametrize("old, new, field", [
    ("tick = 0.025", "tick = inf", "timeouts.tick"),
    ("tick = 0.025", "tick = 1e-300", "timeouts.tick"),
    ("tick = 0.025", "tick = nan", "timeouts.tick"),
    ("tick = 0.025", "tick = 1e9", "timeouts.tick"),
    ("election_ticks = 10", "election_ticks = 9223372036854775807", "timeouts.election_ticks"),
])
def test_a_timing_no_node_can_run_with_is_refused_before_it_starts(directory, old, new, field):
    # The node used to print "up", then die of an OverflowError in its Raft thread (exit
    # code 3, restarted for ever by its service manager), or spin a core with a tick of
    # 1e-300 s and not even stop on SIGTERM.
    cfg = directory / "n1.toml"
    text = cfg.read_text()
    assert old in text
    cfg.write_text(text.replace(old, new, 1))
    one_line_error(prevalence("node", "--config", str(cfg)), str(cfg), f"field '{field}'")


@pytest.mark.parametrize("node_id", ["../evil", "", "a/b", "a b", ".hidden", "x" * 65, "n4\\..\\x"])
def test_add_refuses_an_id_that_cannot_name_a_file_of_its_own(directory, node_id):
    # `cluster add --id ../evil` wrote ../evil.toml and ../evil/ outside the cluster
    # directory and made '../evil' a member; `--id ""` wrote identity.toml and raft-state
    # into the cluster directory itself.
    before = sorted(os.listdir(directory)), sorted(os.listdir(directory.parent))
    one_line_error(prevalence("cluster", "add", "--cluster", str(directory), "--id", node_id), "--id")
    assert (sorted(os.listdir(directory)), sorted(os.listdir(directory.parent))) == before


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_key_file_that_is_a_fifo_is_refused_not_waited_on(directory):
    # The node opened it and waited for a writer for ever: no message, no exit.
    key = directory / "peer.secret"
    key.unlink()
    os.mkfifo(key, 0o600)
    one_line_error(prevalence("node", "--config", str(directory / "n1.toml"), timeout=10), str(key),
                   "not a regular file")


@pytest.mark.slow
@pytest.mark.parametrize("hangs", ["before the call", "after the call was sent"])
def test_an_admin_call_whose_leader_hangs_says_whether_it_may_take_effect(tmp_path, monkeypatch, capsys, hangs):
    # The leader answered the status round, then froze (SIGSTOP: a PC that hangs). Frozen
    # before the call, the command said "error: ...: handshake not answered" without
    # asking the other nodes or saying that nothing changed; frozen with the transfer
    # sent, it said only "error: result expired", not that the change may still happen.
    c = LocalCluster(tmp_path, 3)
    leader = None
    try:
        real = rpc.admin._admin_call
        called: list[str] = []

        def hang_then_call(cfg, secret, method, *args, timeout=5.0):
            called.append(cfg.id)
            if cfg.id != leader:
                return real(cfg, secret, method, *args, timeout=timeout)
            link = NodeLink(cfg.listen, secret, ident="admin", timeout=3.0, role="admin")
            with link:
                if hangs == "after the call was sent":
                    assert link.call("status")[0] == "ok"  # connected: the next call is sent
                c.kill(leader, signal.SIGSTOP)
                return link.call(method, *args)

        monkeypatch.setattr(rpc.admin, "_admin_call", hang_then_call)
        for _ in range(3):  # a loaded machine may change leaders between our look and the command's
            leader, _ = c.stable_leader()
            other = next(n for n in c.configs if n != leader)
            called.clear()
            code = cli.main(["cluster", "transfer", "--cluster", c.dir, "--to", other])
            out, err = (text.strip() for text in capsys.readouterr())
            if called[:1] == [leader]:
                break
        assert called[:1] == [leader], f"the command never called the leader first: {called}"
        if hangs == "before the call":  # the others were asked: a new leader took it, or nothing changed
            assert code == 0 and out.startswith(f"leadership handed to {other} (term ") or \
                code == 1 and len(err.splitlines()) == 1 and leader in err and "nothing was changed" in err, err
        else:
            assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, err
            assert f"not confirmed by {leader}" in err and "may still take effect" in err and "status" in err, err
    finally:
        if leader is not None:
            c.kill(leader, signal.SIGCONT)
        c.stop()


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    """Three running nodes; each test leaves them serving."""
    c = LocalCluster(tmp_path_factory.mktemp("trio"), 3)
    c.stable_leader()
    yield c
    c.stop()


@pytest.mark.slow
def test_the_peer_key_in_an_operators_hands_is_named_as_such(trio):
    # An operator who copied peer.secret as admin.secret was told that "every node of
    # a cluster must run the same release": a version problem, not the key file.
    peer_key = (open(os.path.join(trio.dir, "peer.secret"), "rb").read().strip())
    cfg = next(iter(trio.configs.values()))
    for role in ("admin", "client"):
        with pytest.raises(AuthenticationFailed) as info:
            with NodeLink(cfg.listen, peer_key, ident="operator", timeout=3.0, role=role) as link:
                link.call("status")
        msg = str(info.value)
        assert "peer.secret" in msg and f"{role}.secret" in msg and "\n" not in msg, msg
        assert " a admin " not in msg, msg
        assert peer_key.decode() not in msg
    trio.stable_leader()


@pytest.mark.slow
def test_admin_with_a_wrong_client_key_says_why_no_node_was_asked(trio, tmp_path):
    # The status round (client key) was refused by every node: the command said "asked
    # nobody: no node reachable", though every node answered, and named no key.
    import shutil

    from rpc.secret import generate_secret_file

    for name in os.listdir(trio.dir):
        if name.endswith(".toml") or name in ("peer.secret", "admin.secret"):
            shutil.copy(os.path.join(trio.dir, name), tmp_path / name)
    generate_secret_file(tmp_path / "client.secret")  # not the cluster's
    err = one_line_error(prevalence("cluster", "transfer", "--cluster", str(tmp_path), "--to", "n1"),
                         "nothing was changed", "client.secret")
    assert "no node reachable" not in err


@pytest.mark.parametrize("peer_id, why", [('""', "peers"), ('"' + "x" * 65 + '"', "peers.xxx"),
                                          ('"tab\\there"', "peers.tab")])
def test_a_peer_id_no_node_can_have_is_refused(directory, peer_id, why):
    # The node started and campaigned for ever for votes from a peer no node can be
    # (its own config would refuse that id): a cluster that can never elect a leader.
    cfg = directory / "n1.toml"
    text = cfg.read_text()
    cfg.write_text(text.replace('"n3" = ', f'{peer_id} = ', 1))
    one_line_error(prevalence("node", "--config", str(cfg)), str(cfg), f"field '{why}", "name")


def test_two_peers_at_one_address_are_refused(directory):
    # n1 listed n3 at its own address: it dialled itself as n3, and a cluster of three
    # voters in which one is a phantom kept running, one failure from losing its quorum.
    cfg = directory / "n1.toml"
    text = cfg.read_text()
    mine = next(line.split("=", 1)[1].strip() for line in text.splitlines() if line.startswith('"n1" = '))
    cfg.write_text("\n".join(f'"n3" = {mine}' if line.startswith('"n3" = ') else line
                             for line in text.splitlines()))
    one_line_error(prevalence("node", "--config", str(cfg)), str(cfg), "n1", "n3", mine.strip('"'))
    cfg.write_text(text)  # and `cluster add` does not make such a pair
    n2 = (directory / "n2.toml").read_text()
    n2_address = next(line.split("=", 1)[1].strip().strip('"') for line in n2.splitlines()
                      if line.startswith("listen"))
    before = sorted(os.listdir(directory))
    one_line_error(prevalence("cluster", "add", "--cluster", str(directory), "--id", "n9", "--address", n2_address),
                   "n2", n2_address)
    assert sorted(os.listdir(directory)) == before


def test_a_data_path_that_is_a_file_is_named_as_such(directory):
    # --init said "DIR/n1: File exists" and a start "node 'n1' has no data in DIR/n1 ...
    # rebuild it": neither said that the configured data path is a file.
    cfg = directory / "n1.toml"
    data = directory / "n1"
    import shutil

    shutil.rmtree(data)
    data.write_text("not a directory")
    for args in (["--init"], []):
        one_line_error(prevalence("node", "--config", str(cfg), *args), str(cfg), str(data), "not a directory")
    assert data.read_text() == "not a directory"


def _certificate(directory, name: str, *, expired: bool = False, ip: str = "127.0.0.1"):
    """A self-signed certificate (its own CA) for ``ip``; ``expired``: it ended yesterday."""
    import datetime
    import ipaddress

    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = (now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)) if expired else \
        (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    crt, pem = directory / f"{name}.crt", directory / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return str(crt), str(pem)


@pytest.mark.slow
@pytest.mark.parametrize("kind, cause", [("expired", "expired"), ("otherhost", "mismatch")])
def test_status_names_why_a_nodes_certificate_is_refused(tmp_path, kind, cause):
    # Peers and `status` said only "TLS handshake ... failed: CERTIFICATE_VERIFY_FAILED",
    # not whether the certificate expired, is for another host, or is signed by another CA.
    crt, key = _certificate(tmp_path, kind, expired=kind == "expired", ip="10.9.9.9" if kind == "otherhost" else
                            "127.0.0.1")
    write_cluster(str(tmp_path / "c"), 1, 17_000, TEST_ROOT, tls_cert=crt, tls_key=key, tls_ca=crt)
    listener = socket.create_server(("127.0.0.1", 0))  # a TLS server with that certificate: what a node shows
    port = listener.getsockname()[1]
    for path in (tmp_path / "c" / "n1.toml",):
        path.write_text(path.read_text().replace("127.0.0.1:17000", f"127.0.0.1:{port}"))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(crt, key)

    def serve():
        conn, _ = listener.accept()
        try:
            server_ctx.wrap_socket(conn, server_side=True).close()
        except (ssl.SSLError, OSError):
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        result = prevalence("status", "--cluster", str(tmp_path / "c"))
    finally:
        listener.close()
        thread.join(5)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result
    assert cause in result.stdout.splitlines()[-1], result.stdout


@pytest.mark.parametrize("kind, cause", [("expired", "expired"), ("otherhost", "mismatch"),
                                         ("otherca", "self-signed")])
def test_a_node_whose_peers_would_refuse_its_certificate_does_not_start(directory, kind, cause):
    # It logged "up" and then every peer refused every connection (the peers' logs
    # filled with CERTIFICATE_VERIFY_FAILED): a member that counts for the quorum and can
    # never take part. Its own start is where the certificate can be named.
    crt, key = _certificate(directory, kind, expired=kind == "expired",
                            ip="10.9.9.9" if kind == "otherhost" else "127.0.0.1")
    ca = _certificate(directory, "ca")[0] if kind == "otherca" else crt
    cfg = directory / "n1.toml"
    cfg.write_text(cfg.read_text() + f'\n[tls]\ncert = "{crt}"\nkey = "{key}"\nca = "{ca}"\n')
    one_line_error(prevalence("node", "--config", str(cfg)), str(cfg), "[tls]", cause)


@pytest.mark.slow
def test_status_reports_the_nodes_whose_configs_read_when_one_does_not(trio, tmp_path):
    # One mistyped n2.toml and `prevalence status` showed nothing at all, only the
    # config error: the operator lost the view of the healthy nodes when it mattered.
    import shutil

    for name in os.listdir(trio.dir):
        if name.endswith(".toml") or name.endswith(".secret"):
            shutil.copy(os.path.join(trio.dir, name), tmp_path / name)
    (tmp_path / "n2.toml").write_text((tmp_path / "n2.toml").read_text() + 'tick = "fast"\n')
    trio.wait_for("every node to answer", lambda: all(r["reachable"] for r in trio.status().values()), 15)
    result = prevalence("status", "--cluster", str(tmp_path))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[2:5]}
    assert rows["n1"].endswith("yes") and rows["n3"].endswith("yes") and rows["n2"].endswith("no"), result.stdout
    assert "n2.toml" in result.stdout and "snapshots.tick" in result.stdout, result.stdout
    json_result = prevalence("status", "--cluster", str(tmp_path), "--json")
    import json

    nodes = {n["id"]: n for n in json.loads(json_result.stdout)["nodes"]}
    assert nodes["n2"]["reachable"] is False and nodes["n1"]["reachable"] is True


def test_two_configs_of_one_node_in_a_cluster_directory_are_named(directory):
    # A copy of n1.toml left as n4.toml: `cluster up` started one of the two, picked by
    # file name order, status showed n1 twice and admin commands used whichever came last.
    (directory / "n4.toml").write_text((directory / "n1.toml").read_text())
    before = {p: p.read_bytes() for p in directory.glob("*.toml")}
    for args in (["status", "--cluster", str(directory)],
                 ["cluster", "up", "--data", str(directory), "--root", TEST_ROOT],
                 ["cluster", "remove", "--cluster", str(directory), "--id", "n2"]):
        one_line_error(prevalence(*args), "n1.toml", "n4.toml", "'n1'")
    assert {p: p.read_bytes() for p in directory.glob("*.toml")} == before


@pytest.mark.slow
def test_transfer_to_a_node_that_cannot_take_over_does_not_say_it_was_handed(trio, capsys):
    # `cluster transfer --to n2` with n2 frozen printed "leadership handed to n2" and
    # exited 0: the leader had only started the transfer, which then lapsed.
    leader, _ = trio.stable_leader()
    target = next(n for n in trio.configs if n != leader)
    trio.kill(target, signal.SIGSTOP)
    try:
        code = cli.main(["cluster", "transfer", "--cluster", trio.dir, "--to", target])
        out, err = capsys.readouterr()
    finally:
        trio.kill(target, signal.SIGCONT)
    assert code == 1 and "handed" not in out, (out, err)
    assert len(err.strip().splitlines()) == 1 and target in err and "status" in err, err
    trio.stable_leader()
    assert cli.main(["cluster", "transfer", "--cluster", trio.dir, "--to", target]) == 0
    assert capsys.readouterr().out.startswith(f"leadership handed to {target}")
    assert trio.leader() == target


@pytest.mark.parametrize("args, named", [
    (["--nodes", "0"], "--nodes"), (["--port", "70000"], "--port"), (["--port", "65534"], "--port"),
    (["--port", "0"], "--port"), (["--root", "no_such_module_here:Root"], "no_such_module_here"),
])
def test_cluster_up_with_a_wrong_option_makes_nothing(tmp_path, args, named):
    # It wrote keys, configs and data, then failed: and the next `cluster up` with the
    # option fixed started the directory's broken configs "as they are".
    target = tmp_path / "new"
    opts = args if "--root" in args else [*args, "--root", TEST_ROOT]
    one_line_error(prevalence("cluster", "up", "--data", str(target), *opts), named)
    assert not target.exists() or os.listdir(target) == []


@pytest.mark.slow
def test_an_admin_command_during_an_election_waits_for_the_new_leader(tmp_path, monkeypatch, capsys):
    # The leader died as the command started: it asked the survivors, both said "not
    # leader" (they were electing one), and it gave up at once with "no leader accepted".
    c = LocalCluster(tmp_path, 3)
    try:
        leader, _ = c.stable_leader()
        real = rpc.admin.cluster_status
        killed = []

        def status_then_leader_dies(directory, timeout=None):
            rows = real(directory, timeout)
            if not killed:
                c.kill(leader)
                killed.append(leader)
            return rows

        monkeypatch.setattr(rpc.admin, "cluster_status", status_then_leader_dies)
        assert cli.main(["cluster", "promote", "--cluster", c.dir, "--id", "nobody"]) == 1
        err = capsys.readouterr().err.strip()
        assert "refused by" in err and "'nobody' is not a learner" in err, err  # a new leader answered
    finally:
        c.stop()


@pytest.mark.parametrize("root, why", [("math:pi", "not callable"), ("os:system", "TypeError")])
def test_a_root_factory_that_cannot_make_a_root_is_named(directory, root, why):
    # A start on new data died with a traceback from prevalence/recovery.py.
    cfg = directory / "n1.toml"
    cfg.write_text(cfg.read_text().replace(f'root = "{TEST_ROOT}"', f'root = "{root}"'))
    result = prevalence("node", "--config", str(cfg))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    # among the node's INFO lines when it gets that far (its peer threads may log after it)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and all(w in errors[0] for w in (str(cfg), "field 'root'", root, why)), result.stderr


@pytest.mark.slow
def test_sessions_on_a_stopped_cluster_names_each_cause_once(directory):
    # "register_session: no leader answered within the deadline; tried A: cannot
    # connect: Connection refused, B: ..., C: ..., A: ..., B: ..." (every retry, again).
    result = prevalence("cluster", "sessions", "--cluster", str(directory), "--idle-expiry", "3600", timeout=40)
    line = one_line_error(result, "Connection refused")
    for port in (17000, 17001, 17002):
        assert line.count(f":{port}:") == 1, line


@pytest.mark.slow
def test_status_names_a_node_whose_data_is_of_another_cluster(tmp_path):
    # n3's disk came from another grid: every node refused it (cluster mismatch, in their
    # logs), yet `prevalence status` listed it reachable, as one more follower of n1.
    import shutil

    c = LocalCluster(tmp_path / "a", 3)
    try:
        c.stable_leader()
        write_cluster(str(tmp_path / "b"), 3, 17_000, TEST_ROOT)  # another cluster's data for a node n3
        c.kill("n3")
        shutil.rmtree(os.path.join(c.dir, "n3"))
        shutil.copytree(tmp_path / "b" / "n3", os.path.join(c.dir, "n3"))
        c.start("n3")
        c.wait_for("n3 to answer", lambda: c.status()["n3"]["reachable"], 15)
        result = prevalence("status", "--cluster", c.dir)
        assert result.returncode == 0, result
        lines = [line for line in result.stdout.splitlines() if "n3" in line and "cluster" in line]
        assert lines and "another cluster" in lines[0], result.stdout
    finally:
        c.stop()


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT")
def test_ctrl_c_while_a_node_starts_ends_it_without_a_traceback(directory, tmp_path):
    # Ctrl-C (a service stop) during a long start (a big journal to replay; here a slow
    # root factory) ended in a KeyboardInterrupt traceback through the node's internals.
    (tmp_path / "slowroot.py").write_text(
        "import os, time\n"
        "def make():\n"
        f"    open({str(tmp_path / 'started')!r}, 'w').close()\n"
        "    time.sleep(30)\n"
        "    return {}\n")
    cfg = directory / "n1.toml"
    cfg.write_text(cfg.read_text().replace(f'root = "{TEST_ROOT}"', 'root = "slowroot:make"'))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, str(tmp_path)])}
    node = subprocess.Popen([sys.executable, "-m", "rpc.cli", "node", "--config", str(cfg)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 15
        while not (tmp_path / "started").exists():
            assert node.poll() is None and time.monotonic() < deadline, node.communicate()
            time.sleep(0.05)
        node.send_signal(signal.SIGINT)
        out, err = node.communicate(timeout=10)
    finally:
        node.kill()
    assert "Traceback" not in err and node.returncode == 130, (node.returncode, err[-2000:])
    assert err.strip().splitlines()[-1] == "interrupted"


@pytest.mark.parametrize("address", ["0.0.0.0:17005", "[::]:17005"])
def test_an_address_no_peer_can_dial_is_refused(directory, address):
    # [peers] n3 = "0.0.0.0:..." (the listen address copied over) or `cluster add
    # --address 0.0.0.0:...` was taken: its peers dialled 0.0.0.0 (this PC itself, on
    # Linux) or nothing, for ever.
    cfg = directory / "n1.toml"
    text = cfg.read_text()
    cfg.write_text("\n".join(f'"n3" = "{address}"' if line.startswith('"n3" = ') else line
                             for line in text.splitlines()))
    one_line_error(prevalence("node", "--config", str(cfg)), str(cfg), "peers.n3", "dial")
    cfg.write_text(text)
    before = sorted(os.listdir(directory))
    one_line_error(prevalence("cluster", "add", "--cluster", str(directory), "--id", "n9", "--address", address),
                   "--address", "dial")
    assert sorted(os.listdir(directory)) == before


def test_recover_records_the_survivors_dialled_address_not_its_wildcard_listen(directory):
    # A survivor that listens on 0.0.0.0 went into the new epoch's membership as
    # "0.0.0.0:port": every node added afterwards dialled that, not the survivor.
    from replication.journal_storage import JournalStorage
    from replication.membership import decode_membership
    from prevalence.entry import EntryKind

    cfg = directory / "n1.toml"
    text = cfg.read_text()
    assert 'listen = "127.0.0.1:17000"' in text
    cfg.write_text(text.replace('listen = "127.0.0.1:17000"', 'listen = "0.0.0.0:17000"'))
    result = prevalence("cluster", "recover", "--cluster", str(directory), "--survivor", "n1")
    assert result.returncode == 0, result
    storage = JournalStorage(str(directory / "n1"), fsync="always")
    try:
        last = storage.entries(storage.last_index(), storage.last_index() + 1, None)[0]
    finally:
        storage.close()
    assert last.kind == int(EntryKind.CONFIG)
    assert decode_membership(last.data).addresses == (("n1", "127.0.0.1:17000"),)


@pytest.mark.slow
def test_add_gives_the_new_node_its_peers_dialled_addresses(tmp_path):
    # n1 listens on 0.0.0.0 (its [peers] entry is its address): `cluster add` wrote the
    # new node's [peers] from the others' listen addresses, n1 = "0.0.0.0:...".
    from rpc.config import load_config

    LocalCluster(tmp_path, 3, start=False)
    n1 = tmp_path / "n1.toml"
    listen = next(line for line in n1.read_text().splitlines() if line.startswith("listen = "))
    port = listen.rsplit(":", 1)[1].rstrip('"')
    n1.write_text(n1.read_text().replace(listen, f'listen = "0.0.0.0:{port}"'))
    c = LocalCluster.open(str(tmp_path), cwd=ROOT)
    try:
        for nid in c.configs:
            c.start(nid)
        c.stable_leader()
        result = prevalence("cluster", "add", "--cluster", str(tmp_path), "--id", "n4")
        assert result.returncode == 0, result
        assert load_config(str(tmp_path / "n4.toml")).peers["n1"] == ("127.0.0.1", int(port))
    finally:
        c.stop()


def test_a_missing_key_file_names_the_command_that_makes_one(directory):
    # It said "(generate one with generate_secret_file)": a Python function, to an operator.
    (directory / "admin.secret").unlink()
    line = one_line_error(prevalence("node", "--config", str(directory / "n1.toml")),
                          str(directory / "admin.secret"), "prevalence cluster keys")
    assert "generate_secret_file" not in line


@pytest.mark.slow
def test_status_names_a_running_node_that_is_no_longer_a_member(tmp_path):
    # After `cluster remove --id n3` ("stop its process"), n3 still running showed in
    # status as one more reachable node (a pre_candidate), with nothing saying it was
    # removed and should be stopped.
    c = LocalCluster(tmp_path, 3)
    try:
        leader, _ = c.stable_leader()
        gone = next(n for n in c.configs if n != leader)
        assert prevalence("cluster", "remove", "--cluster", c.dir, "--id", gone).returncode == 0
        result = prevalence("status", "--cluster", c.dir)
        lines = [line for line in result.stdout.splitlines() if line.startswith(f"{gone}: not a member")]
        assert lines and "stop its process" in lines[0], result.stdout
        assert not any(line.startswith(f"{n}: not a member") for n in c.configs if n != gone for line in
                       result.stdout.splitlines())
    finally:
        c.stop()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_or_device_where_a_config_belongs_is_one_line_not_a_hang(directory):
    # open() of a FIFO blocks until a writer comes: `prevalence node` and every command
    # that reads the cluster directory (status, add, the grid's) hung for ever on one;
    # /dev/zero as a config was read until memory ran out.
    fifo = directory / "n1.toml"
    fifo.unlink()
    os.mkfifo(fifo)
    one_line_error(prevalence("node", "--config", str(fifo)), str(fifo), "not a regular file")
    status = prevalence("status", "--cluster", str(directory))
    assert "Traceback" not in status.stderr and str(fifo) in status.stdout + status.stderr, status
    one_line_error(prevalence("node", "--config", "/dev/zero"), "/dev/zero", "not a regular file")
    (directory / "layout.toml").unlink(missing_ok=True)
    os.mkfifo(directory / "layout.toml")  # an application's file, not a node's: not counted
    status = prevalence("status", "--cluster", str(directory))
    assert "Traceback" not in status.stderr and "layout.toml" not in status.stdout, status

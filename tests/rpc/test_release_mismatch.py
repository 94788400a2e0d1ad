"""Nodes and programs of different releases meet (the upgrade being a full restart, one
of them was left out): each side says in one line that the releases differ, and a
program does not spend its whole deadline on a refusal that retrying cannot change.

The "old node" here answers as the release before frame checksums (6d90183) did, word
for word: it refuses a hello of another version with its own reason, and closes without
a word on a hello of more fields than it knows (a node's hello now names the node it
dials)."""
from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

import rpc
from rpc import AuthenticationFailed, ServerAuthenticator, client_handshake
from rpc.wire import HELLO, MAX_FRAME, REFUSED, decode_message, encode_frame, read_frame

from .conftest import CLIENT_SECRET, HOST, KEYS, SECRET, free_port, wait_until

OLD_REFUSAL = ("unsupported handshake version 4 (this node speaks 2 to clients and 3 to nodes: a key per role, "
               "see docs/security.md)")


class OldNode:
    """A listener answering every hello as a node of the release before: a 3-field hello
    of a version it does not speak is refused with its reason; a longer one, closed."""

    def __init__(self, port: int = 0):
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind((HOST, port))
        self.ls.listen(16)
        self.address = self.ls.getsockname()
        self.hellos = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import msgpack
        while True:
            try:
                sock, _ = self.ls.accept()
            except OSError:
                return
            with sock:
                try:
                    hello = msgpack.unpackb(read_frame(sock, time.monotonic() + 2, MAX_FRAME))
                    self.hellos += 1
                    if len(hello) == 4:
                        sock.sendall(encode_frame(REFUSED, OLD_REFUSAL))
                except Exception:  # noqa: BLE001 - the dialler gave up: next
                    pass

    def close(self) -> None:
        self.ls.close()


@pytest.fixture
def old_node():
    node = OldNode()
    yield node
    node.close()


def test_a_node_logs_a_hello_of_another_release_as_such(caplog):
    """An old node dials an upgraded one: the upgraded node's log said only "unsupported
    handshake version 3", not that a node of another release was left running."""
    ls = socket.socket()
    ls.bind((HOST, 0))
    ls.listen(1)
    with ls, socket.create_connection(ls.getsockname(), timeout=2) as c:
        server, _ = ls.accept()
        c.sendall(encode_frame(HELLO, 3, "n2", b"c" * 32, "", 0))
        with caplog.at_level(logging.WARNING, logger="rpc.auth"), pytest.raises(Exception):
            ServerAuthenticator(KEYS, timeout=2, node_id="n1")(server)
    (line,) = [r.getMessage() for r in caplog.records if "refused connection" in r.getMessage()]
    assert "unsupported handshake version 3" in line and "same release" in line and "full restart" in line
    assert "\n" not in line


def test_a_program_refused_by_a_node_of_another_release_is_told_so_at_once(old_node):
    """A program of this release against nodes of the one before: it was told "a key per
    role" (the old node's words) and retried the refusal until its deadline, 10 s."""
    with socket.create_connection(old_node.address, timeout=2) as sock:
        with pytest.raises(AuthenticationFailed) as caught:
            client_handshake(sock, CLIENT_SECRET, "client", "op", timeout=2)
    assert "another release" in str(caught.value) and caught.value.key_refused
    began = time.monotonic()
    with rpc.connect([f"{HOST}:{old_node.address[1]}"], secret=CLIENT_SECRET, timeout=10) as c:
        with pytest.raises(AuthenticationFailed) as caught:
            c.status()
    assert time.monotonic() - began < 3
    assert "another release" in str(caught.value) and "\n" not in str(caught.value)


def test_a_node_an_old_node_hangs_up_on_says_the_release_may_differ(old_node):
    """An upgraded node dials one of the release before, which closes on a hello that
    names the node dialled: "connection closed during the handshake" named no cause."""
    with socket.create_connection(old_node.address, timeout=2) as sock:
        with pytest.raises(AuthenticationFailed) as caught:
            client_handshake(sock, SECRET, "peer", "n1", target="n2", timeout=2)
    assert "older release" in str(caught.value) and "full restart" in str(caught.value)


def test_a_peer_still_down_for_another_reason_is_logged(make_transport, caplog):
    """The upgraded node started before its peers listened ("cannot connect", INFO), then
    the old nodes came up and hung up on its hello: its log never said so, only up/down
    changes were logged, so the operator of the upgraded node saw no cause at all."""
    port = free_port()
    with caplog.at_level(logging.INFO, logger="rpc.transport"):
        t = make_transport("n1", {"n2": (HOST, port)}, backoff_max=0.2)
        t.send("n2", b"hello")
        assert wait_until(lambda: any("cannot connect" in r.getMessage() for r in caplog.records), 5)
        node = OldNode(port)
        try:
            assert wait_until(lambda: any("older release" in r.getMessage() and r.levelno == logging.WARNING
                                          for r in caplog.records), 5)
            assert wait_until(lambda: node.hellos >= 3, 5)  # more attempts, each closed alike: no more lines
        finally:
            node.close()
    lines = [r.getMessage() for r in caplog.records if "older release" in r.getMessage()]
    assert len(lines) == 1, lines


def test_a_backup_refused_by_nodes_of_another_release_says_why(tmp_path):
    """`prevalence backup` against nodes of the release before said "no leader accepted
    the backup (asked nobody: no node reachable)": no cause, though each node had said it."""
    from rpc.backup import fetch_backup
    from rpc.cluster import write_cluster
    from prevalence.errors import PrevalenceError

    for _ in range(20):  # three ports in a row, each answered as an old node
        base, nodes = free_port(), []
        try:
            nodes = [OldNode(base + i) for i in range(3)]
            break
        except OSError:
            for n in nodes:
                n.close()
    try:
        write_cluster(str(tmp_path / "c"), 3, base, "builtins:dict")
        with pytest.raises(PrevalenceError) as caught:
            fetch_backup(str(tmp_path / "c"), str(tmp_path / "out.backup"))
    finally:
        for n in nodes:
            n.close()
    assert "another release" in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "out.backup").exists()


def _status_rows(peer_protocols: dict) -> list[dict]:
    from rpc.status_report import status_row

    rows = []
    for i, (nid, proto) in enumerate(peer_protocols.items()):
        st = {"id": nid, "role": "leader" if i == 2 else "follower", "term": 2, "leader": "n3", "commit_index": 76,
              "applied_index": 76, "voters": list(peer_protocols)}
        if proto is not None:
            st["peer_protocol"] = proto
        rows.append(status_row(nid, f"127.0.0.1:{7100 + i}", f"/c/{nid}.toml", ["ok", st]))
    return rows


def test_status_names_the_node_of_another_release_among_nodes_that_answer(monkeypatch, capsys):
    """One node upgraded, two left on the release before (same program protocol, so
    status reaches all three): the table said "n3 leads (term 2)" and nothing else, the
    upgraded node a pre_candidate cut off from its peers with no cause given."""
    import json
    import argparse
    import rpc.cluster
    from rpc.cli import cmd_status

    monkeypatch.setattr(rpc.cluster, "cluster_status", lambda d: _status_rows({"n1": 6, "n2": None, "n3": None}))
    cmd_status(argparse.Namespace(cluster="/c", json=False))
    notes = [line for line in capsys.readouterr().out.splitlines() if "another release" in line]
    assert len(notes) == 1 and notes[0].startswith("n1: ") and "n2, n3" in notes[0] and "full restart" in notes[0]
    cmd_status(argparse.Namespace(cluster="/c", json=True))
    conditions = json.loads(capsys.readouterr().out)["conditions"]
    assert "another release" in conditions["n1"]["note"] and conditions["n2"]["note"] is None
    monkeypatch.setattr(rpc.cluster, "cluster_status", lambda d: _status_rows({"n1": 6, "n2": 6, "n3": 6}))
    cmd_status(argparse.Namespace(cluster="/c", json=False))
    assert "release" not in capsys.readouterr().out


def test_a_grid_command_against_nodes_of_another_release_says_so(old_node, tmp_path, capsys):
    """grid show of this release against a grid of the release before: at once, one line,
    and not "refused the key" (the key was right; the release was not)."""
    from app.cli import main
    from rpc.secret import generate_secret_file

    generate_secret_file(str(tmp_path / "client.secret"))
    began = time.monotonic()
    assert main(["show", "--cluster", f"{HOST}:{old_node.address[1]}", "--secret-file",
                 str(tmp_path / "client.secret")]) == 1
    err = capsys.readouterr().err
    assert time.monotonic() - began < 3 and err.count("\n") == 1, err
    assert "another release" in err and "refused the key" not in err, err


def test_a_node_of_the_release_before_frame_macs_is_refused_with_the_release_named(caplog):
    """Protocol 6 ended a peer's frames with a CRC-32, 7 with a MAC: a node of 6 would
    take a MAC for a damaged frame, and one of 7 every frame of 6 for a forged one. The
    hello says which; each side says in one line that the releases differ."""
    ls = socket.socket()
    ls.bind((HOST, 0))
    ls.listen(1)
    with ls, socket.create_connection(ls.getsockname(), timeout=2) as c:
        server, _ = ls.accept()
        c.sendall(encode_frame(HELLO, 6, "n2", b"c" * 32, "", 0, "n1"))
        with caplog.at_level(logging.WARNING, logger="rpc.auth"), pytest.raises(Exception):
            ServerAuthenticator(KEYS, timeout=2, node_id="n1")(server)
        (tag, (reason,)) = decode_message(read_frame(c, time.monotonic() + 2), (REFUSED,))
    assert reason.startswith("unsupported handshake version 6 (this node speaks 4 to clients and 7 to nodes")
    (line,) = [r.getMessage() for r in caplog.records if "refused connection" in r.getMessage()]
    assert "unsupported handshake version 6" in line and "same release" in line and "full restart" in line


def test_this_node_refused_by_a_node_of_the_release_before_frame_macs_is_told_so(monkeypatch, make_server,
                                                                                 make_transport, caplog):
    """The node of 6, as it answers (its versions, its words), dialled by this one."""
    import rpc.wire

    monkeypatch.setattr(rpc.wire, "VERSIONS", (4, 6))
    monkeypatch.setattr(rpc.wire, "PEER_PROTOCOL_VERSION", 6)
    old = make_server(node_id="n2")
    with socket.create_connection(old.address, timeout=2) as sock:
        with pytest.raises(AuthenticationFailed) as caught:
            client_handshake(sock, SECRET, "peer", "n1", target="n2", timeout=2)
    message = str(caught.value)
    assert "runs another release" in message and "unsupported handshake version 7" in message, message
    assert "6 to nodes" in message and "full restart" in message and caught.value.key_refused
    with caplog.at_level(logging.WARNING, logger="rpc.transport"):
        t = make_transport("n1", {"n2": old.address})
        t.send("n2", b"x")
        assert wait_until(lambda: any("runs another release" in r.getMessage() for r in caplog.records), 5)
    assert t.peer_status()["n2"]["delivered"] == 0

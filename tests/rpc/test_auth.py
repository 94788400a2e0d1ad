import logging
import socket
import struct
import threading
import time

import pytest
from rpyc.utils.authenticators import AuthenticationError

from prevalence.errors import PrevalenceError
from rpc import AuthenticationFailed, ConnectFailed, Identity, SecretError, ServerAuthenticator, client_handshake
from rpc.auth import _CLIENT_LABEL, _mac, _server_mac, _transcript
from rpc.wire import (
    CHALLENGE, HELLO, OK, PEER_PROTOCOL_VERSION, PROOF, PROTOCOL_VERSION, REFUSED, decode_message, encode_frame, read_frame,
)

from .conftest import ADMIN_SECRET, CLIENT_SECRET, HOST, KEYS, OTHER_SECRET, SECRET


@pytest.fixture
def listener():
    """A bare TCP listener on 127.0.0.1: tests run a server side on its accepted socket."""
    ls = socket.socket()
    ls.bind((HOST, 0))
    ls.listen(8)
    yield ls
    ls.close()


def run_server_side(listener, func):
    """Accept one connection and run func(sock) in a thread; returns a dict with the outcome."""
    out = {}

    def target():
        sock, _ = listener.accept()
        out["peer"] = sock.getpeername()
        try:
            out["result"] = func(sock)
        except BaseException as exc:  # noqa: BLE001 - recorded for the test
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    out["thread"] = t
    return out


def connect(listener):
    return socket.create_connection(listener.getsockname(), timeout=2)


def test_mutual_handshake_gives_identity(listener):
    server = run_server_side(listener, ServerAuthenticator(KEYS, timeout=2))
    with connect(listener) as sock:
        client_handshake(sock, SECRET, "peer", "n1", timeout=2)
        server["thread"].join(3)
    assert "error" not in server
    _, identity = server["result"]
    assert identity == Identity("peer", "n1") == ("peer", "n1")


def test_client_role(listener):
    server = run_server_side(listener, ServerAuthenticator(KEYS, timeout=2))
    with connect(listener) as sock:
        client_handshake(sock, CLIENT_SECRET, "client", "operator-7", timeout=2)
        server["thread"].join(3)
    assert server["result"][1] == ("client", "operator-7")


@pytest.mark.parametrize("expected", ["admin", "client"])
def test_the_admin_key_gets_the_admin_role(listener, expected):
    """A client program may hold the admin key: it gets what a client gets, and more."""
    server = run_server_side(listener, ServerAuthenticator(KEYS, timeout=2))
    with connect(listener) as sock:
        client_handshake(sock, ADMIN_SECRET, expected, "ops", timeout=2)
        server["thread"].join(3)
    assert server["result"][1] == ("admin", "ops")


@pytest.mark.parametrize("key, granted", [(CLIENT_SECRET, "client"), (ADMIN_SECRET, "admin")])
def test_the_role_is_the_key_s_not_the_one_claimed(listener, key, granted):
    """A client or admin key asking for the peer role gets its own role, and the client
    library says the wrong key file is configured; nothing in the handshake claims a role."""
    server = run_server_side(listener, ServerAuthenticator(KEYS, timeout=2))
    with connect(listener) as sock:
        with pytest.raises(AuthenticationFailed, match=f"took our key for its {granted} key, not the peer key"):
            client_handshake(sock, key, "peer", "n2", timeout=2)
        server["thread"].join(3)
    assert server["result"][1] == (granted, "n2")


def test_a_client_key_is_refused_where_only_peers_are_accepted(listener):
    server = run_server_side(listener, ServerAuthenticator(SECRET, timeout=2))  # bytes alone: the peer key
    with connect(listener) as sock:
        with pytest.raises(AuthenticationFailed, match="refused our authentication"):
            client_handshake(sock, CLIENT_SECRET, "client", "c1", timeout=2)
    server["thread"].join(3)
    assert isinstance(server["error"], AuthenticationError)


def test_a_version_1_hello_claiming_a_role_is_refused_by_its_version(listener):
    server = run_server_side(listener, ServerAuthenticator(KEYS, timeout=2))
    with connect(listener) as sock:
        sock.sendall(encode_frame(HELLO, 1, "peer", "n1", b"c" * 32))
        tag, (reason,) = decode_message(read_frame(sock, time.monotonic() + 2), (CHALLENGE, REFUSED))
    server["thread"].join(3)
    assert tag == REFUSED and "unsupported handshake version 1" in reason and "docs/security.md" in reason


def test_a_role_may_have_a_second_key_while_one_is_replaced(listener):
    """[rotation]: the old and the new key of a role are both accepted, as that role."""
    new_client = b"0f1e2d3c4b5a69780f1e2d3c4b5a6978"
    auth = ServerAuthenticator({"peer": SECRET, "client": (CLIENT_SECRET, new_client), "admin": ADMIN_SECRET},
                               timeout=2)
    for key in (CLIENT_SECRET, new_client):
        server = run_server_side(listener, auth)
        with connect(listener) as sock:
            client_handshake(sock, key, "client", "ui", timeout=2)
            server["thread"].join(3)
        assert server["result"][1] == ("client", "ui")


@pytest.mark.parametrize("keys, match", [
    ({"peer": (SECRET, CLIENT_SECRET), "client": CLIENT_SECRET}, "peer and client keys are the same key"),
    ({"peer": SECRET, "client": SECRET}, "peer and client keys are the same key"),
    ({"peer": SECRET, "admin": CLIENT_SECRET, "client": CLIENT_SECRET}, "admin and client keys are the same"),
    ({"peer": b"x" * 32}, "peer key: key too weak"),
    ({"root": SECRET}, "unknown role 'root'"),
    ({}, "no key"),
])
def test_a_server_refuses_keys_that_would_blur_the_roles(keys, match):
    with pytest.raises(SecretError, match=match):
        ServerAuthenticator(keys)


def test_wrong_secret_refused_on_both_sides(listener, caplog):
    caplog.set_level(logging.WARNING, logger="rpc.auth")
    server = run_server_side(listener, ServerAuthenticator(KEYS, timeout=2))
    with connect(listener) as sock:
        where = f"{HOST}:{listener.getsockname()[1]}"
        with pytest.raises(AuthenticationFailed) as ei:
            client_handshake(sock, OTHER_SECRET, "peer", "n1", timeout=2)
        server["thread"].join(3)
    assert where in str(ei.value) and "wrong key" in str(ei.value)
    assert isinstance(ei.value, PrevalenceError) and ei.value.address == where
    assert isinstance(server["error"], AuthenticationError)
    client_addr = f"{server['peer'][0]}:{server['peer'][1]}"
    lines = [r.getMessage() for r in caplog.records if r.name == "rpc.auth"]
    assert any(client_addr in m and "wrong key" in m and "'n1'" in m for m in lines), lines


def test_server_without_the_secret_is_not_trusted(listener, caplog):
    """An impostor that accepts any proof but cannot compute its own is refused by the client."""
    caplog.set_level(logging.WARNING, logger="rpc.auth")

    def impostor(sock):
        deadline = time.monotonic() + 2
        read_frame(sock, deadline)
        sock.sendall(encode_frame(CHALLENGE, b"s" * 32))
        read_frame(sock, deadline)
        sock.sendall(encode_frame(OK, b"\x00" * 32, "peer"))
        time.sleep(0.2)

    run_server_side(listener, impostor)
    with connect(listener) as sock:
        with pytest.raises(AuthenticationFailed, match="failed to prove knowledge of our key") as ei:
            client_handshake(sock, SECRET, "peer", "n1", timeout=2)
    assert str(listener.getsockname()[1]) in str(ei.value)
    assert any("failed to prove" in r.getMessage() for r in caplog.records)


def test_recorded_proof_cannot_be_replayed(listener):
    """Record a good client session, replay its HELLO and PROOF to a fresh server session."""
    auth = ServerAuthenticator(KEYS, timeout=2)
    server = run_server_side(listener, auth)
    nonce = b"c" * 32
    with connect(listener) as sock:
        deadline = time.monotonic() + 2
        sock.sendall(encode_frame(HELLO, PEER_PROTOCOL_VERSION, "n1", nonce))
        _, (ns,) = decode_message(read_frame(sock, deadline), (CHALLENGE,))
        proof = _mac(SECRET, _CLIENT_LABEL, _transcript(PEER_PROTOCOL_VERSION, "n1", nonce, ns))
        sock.sendall(encode_frame(PROOF, proof))
        tag, _ = decode_message(read_frame(sock, deadline), (OK, REFUSED))
        assert tag == OK
    server["thread"].join(3)
    assert "result" in server

    server = run_server_side(listener, auth)
    with connect(listener) as sock:
        deadline = time.monotonic() + 2
        sock.sendall(encode_frame(HELLO, PEER_PROTOCOL_VERSION, "n1", nonce))
        _, (ns2,) = decode_message(read_frame(sock, deadline), (CHALLENGE,))
        assert ns2 != ns
        sock.sendall(encode_frame(PROOF, proof))
        tag, (reason,) = decode_message(read_frame(sock, deadline), (OK, REFUSED))
    server["thread"].join(3)
    assert tag == REFUSED and reason == "authentication failed"
    assert isinstance(server["error"], AuthenticationError)


def test_an_older_node_is_refused_by_its_protocol(listener, caplog):
    """A party with the right peer key that says the client protocol (RPyC after the
    handshake), as a node of a release whose nodes spoke RPyC did: refused with a reason that
    names the mismatch, on both sides, instead of garbage later."""
    server = run_server_side(listener, ServerAuthenticator(KEYS, timeout=2))
    nonce = b"c" * 32
    with caplog.at_level(logging.WARNING, logger="rpc.auth"), connect(listener) as sock:
        deadline = time.monotonic() + 2
        sock.sendall(encode_frame(HELLO, PROTOCOL_VERSION, "n1", nonce))
        _, (ns,) = decode_message(read_frame(sock, deadline), (CHALLENGE,))
        sock.sendall(encode_frame(PROOF, _mac(SECRET, _CLIENT_LABEL, _transcript(PROTOCOL_VERSION, "n1", nonce, ns))))
        tag, (reason,) = decode_message(read_frame(sock, deadline), (OK, REFUSED))
        server["thread"].join(3)
    assert tag == REFUSED and "every node of a cluster must run the same release" in reason
    assert isinstance(server["error"], AuthenticationError)
    assert any("an older node's" in r.getMessage() for r in caplog.records)


def test_server_proof_is_not_a_client_proof():
    t = _transcript(2, "n1", b"a" * 32, b"b" * 32)
    assert _mac(SECRET, _CLIENT_LABEL, t) != _server_mac(SECRET, t, "peer")
    assert _transcript(2, "n2", b"a" * 32, b"b" * 32) != t  # the id is bound into the proof
    assert _server_mac(SECRET, t, "peer") != _server_mac(SECRET, t, "admin")  # and the role granted


def test_silent_client_is_dropped_within_the_timeout(listener, caplog):
    caplog.set_level(logging.WARNING, logger="rpc.auth")
    server = run_server_side(listener, ServerAuthenticator(KEYS, timeout=0.3))
    t0 = time.monotonic()
    with connect(listener) as sock:
        server["thread"].join(3)
        elapsed = time.monotonic() - t0
        assert sock.recv(10) == b""  # the server closed it
    assert isinstance(server["error"], AuthenticationError)
    assert 0.25 <= elapsed < 1.5
    assert any("not completed within 0.3 s" in r.getMessage() for r in caplog.records)


def test_slow_drip_client_is_bounded_by_one_deadline(listener):
    """A client sending one byte at a time still gets cut at the handshake deadline."""
    server = run_server_side(listener, ServerAuthenticator(KEYS, timeout=0.5))
    t0 = time.monotonic()
    with connect(listener) as sock:
        frame = encode_frame(HELLO, PROTOCOL_VERSION, "n1", b"c" * 32)
        try:
            for byte in frame:
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
                if not server["thread"].is_alive():
                    break
        except OSError:
            pass
        server["thread"].join(3)
    assert isinstance(server["error"], AuthenticationError)
    assert time.monotonic() - t0 < 1.5


def test_oversized_frame_refused(listener, caplog):
    caplog.set_level(logging.WARNING, logger="rpc.auth")
    server = run_server_side(listener, ServerAuthenticator(KEYS, timeout=2))
    with connect(listener) as sock:
        sock.sendall(struct.pack("!I", 10_000_000))
        server["thread"].join(3)
    assert isinstance(server["error"], AuthenticationError)
    assert "oversized handshake frame" in str(server["error"])
    assert any("oversized" in r.getMessage() and HOST in r.getMessage() for r in caplog.records)


def test_garbage_refused(listener):
    server = run_server_side(listener, ServerAuthenticator(KEYS, timeout=2))
    with connect(listener) as sock:
        sock.sendall(struct.pack("!I", 5) + b"\xc1\xc1\xc1\xc1\xc1")
        server["thread"].join(3)
    assert "malformed handshake frame" in str(server["error"])


def test_client_handshake_timeout_names_the_address(listener):
    # a "server" that accepts and never answers
    server = run_server_side(listener, lambda s: time.sleep(0.6))
    with connect(listener) as sock:
        t0 = time.monotonic()
        with pytest.raises(ConnectFailed, match=rf"{HOST}:\d+: handshake not answered within 0.3 s"):
            client_handshake(sock, SECRET, "peer", "n1", timeout=0.3)
        assert time.monotonic() - t0 < 1.0
    server["thread"].join(3)


def test_client_refuses_garbage_from_server(listener):
    run_server_side(listener, lambda s: (s.sendall(struct.pack("!I", 99999)), time.sleep(0.3)))
    with connect(listener) as sock:
        with pytest.raises(AuthenticationFailed, match="oversized"):
            client_handshake(sock, SECRET, "peer", "n1", timeout=2)


def test_client_validates_its_own_arguments():
    a, b = socket.socketpair()
    with a, b:
        with pytest.raises(AuthenticationFailed, match="role"):
            client_handshake(a, SECRET, "root", "n1")
        with pytest.raises(AuthenticationFailed, match="invalid peer id"):
            client_handshake(a, SECRET, "peer", "")
        with pytest.raises(PrevalenceError, match="too short"):
            client_handshake(a, b"short", "peer", "n1")


def _peer_handshake(listener, server_key, client_key):
    from rpc.auth import ClusterKey  # noqa: F401 - the keys below are ClusterKey or bytes

    server = run_server_side(listener, ServerAuthenticator(dict(KEYS, peer=server_key), timeout=2))
    try:
        with connect(listener) as sock:
            client_handshake(sock, client_key, "peer", "n2", timeout=2)
    finally:
        server["thread"].join(3)
    return server


@pytest.mark.parametrize("theirs, why", [(("b0b0b0b0", 0), "another cluster that shares the peer key"),
                                         (("a1a1a1a1", 0), "its data is from before a `cluster recover`"),
                                         (("a1a1a1a1", 2), "this node's data is from before a `cluster recover`")])
def test_a_peer_of_another_cluster_or_epoch_is_refused_with_both_ids_despite_the_right_key(listener, theirs, why):
    from rpc.auth import ClusterKey

    with pytest.raises(AuthenticationFailed) as err:
        _peer_handshake(listener, ClusterKey(SECRET, "a1a1a1a1", 1), ClusterKey(SECRET, *theirs))
    message = str(err.value)
    assert "cluster mismatch" in message and why in message and "wrong key" not in message
    assert f"cluster {theirs[0]} epoch {theirs[1]}" in message and "cluster a1a1a1a1 epoch 1" in message


def test_a_peer_or_client_without_a_cluster_id_is_not_compared(listener):
    from rpc.auth import ClusterKey

    server = _peer_handshake(listener, ClusterKey(SECRET, "a1a1a1a1", 1), SECRET)  # data from before cluster ids
    assert server["result"][1] == Identity("peer", "n2")
    server = run_server_side(listener, ServerAuthenticator(dict(KEYS, peer=ClusterKey(SECRET, "a1a1a1a1", 1)),
                                                           timeout=2))
    with connect(listener) as sock:
        client_handshake(sock, CLIENT_SECRET, "client", "op", timeout=2)
    server["thread"].join(3)
    assert server["result"][1] == Identity("client", "op")


def test_the_cluster_id_is_bound_into_the_proof(listener):
    from rpc.auth import ClusterKey

    # a hello whose cluster id was changed in transit no longer matches the proof
    assert _transcript(2, "n1", b"n" * 32, b"s" * 32, "a1", 1) != _transcript(2, "n1", b"n" * 32, b"s" * 32, "b2", 1)
    assert _transcript(2, "n1", b"n" * 32, b"s" * 32, "a1", 1) != _transcript(2, "n1", b"n" * 32, b"s" * 32, "a1", 2)
    server = _peer_handshake(listener, ClusterKey(SECRET, "a1", 1), ClusterKey(SECRET, "a1", 1))
    assert server["result"][1] == Identity("peer", "n2")


@pytest.mark.parametrize("version", [2, 3, PEER_PROTOCOL_VERSION + 1])
def test_a_hello_of_another_release_is_refused_naming_the_release_not_the_keys(listener, version):
    """2 and 3 are the releases before frame checksums (keys per role already): told "a
    key per role", their operator would look for a key problem that is not there."""
    server = run_server_side(listener, ServerAuthenticator(KEYS, timeout=2))
    with connect(listener) as sock:
        sock.sendall(encode_frame(HELLO, version, "n1", b"c" * 32))
        tag, (reason,) = decode_message(read_frame(sock, time.monotonic() + 2), (CHALLENGE, REFUSED))
    server["thread"].join(3)
    assert tag == REFUSED and f"unsupported handshake version {version}" in reason
    assert "same release" in reason and "key per role" not in reason

"""A node's hello names the node it dials, inside its proof: a party the leader dials
(a learner an admin added at its own address) cannot pass the leader's handshake on to
another node and be taken there as the leader (tests.cluster.test_fuzz_boundaries runs
the relay against real nodes)."""
from __future__ import annotations

import os
import socket
import time

import pytest

from rpc import AuthenticationFailed
from rpc.auth import _CLIENT_LABEL, _mac, _transcript
from rpc.peer_server import PeerServer
from rpc.transport import open_peer_channel
from rpc.wire import CHALLENGE, HELLO, OK, PEER_PROTOCOL_VERSION, PROOF, REFUSED, decode_message, encode_frame, read_frame

from .conftest import KEYS, SECRET, wait_until


@pytest.fixture
def node_n1():
    server = PeerServer("127.0.0.1", 0, KEYS, None, on_batch=lambda src, frames: [], node_id="n1")
    yield server
    server.close()


def test_a_hello_naming_this_node_is_served(node_n1):
    with open_peer_channel(node_n1.address, SECRET, ident="n2", target="n1") as chan:
        assert chan.call([b"x"]) == []


def test_a_hello_naming_another_node_is_refused_once_its_proof_matched(node_n1, caplog):
    with pytest.raises(AuthenticationFailed, match="this is node 'n1', not 'relay'") as err:
        open_peer_channel(node_n1.address, SECRET, ident="n2", target="relay")
    assert "wrong key" not in str(err.value) and not err.value.key_refused, err.value  # the key was right
    # the node logs once its refusal is sent: on its own thread, maybe after we read it
    assert wait_until(lambda: any("dialled node 'relay'" in r.getMessage() for r in caplog.records), 2.0), \
        caplog.text


def test_a_target_removed_from_a_relayed_hello_breaks_its_proof(node_n1):
    """The proof was made for a hello naming 'relay'; sent on without the name, it is a
    proof for another transcript: refused as a wrong key."""
    nonce = os.urandom(32)
    with socket.create_connection(node_n1.address, timeout=2.0) as sock:
        deadline = time.monotonic() + 2.0
        sock.sendall(encode_frame(HELLO, PEER_PROTOCOL_VERSION, "n2", nonce))  # the target stripped
        _, (ns,) = decode_message(read_frame(sock, deadline), (CHALLENGE,))
        made_for = _transcript(PEER_PROTOCOL_VERSION, "n2", nonce, ns, "", 0, "relay")
        sock.sendall(encode_frame(PROOF, _mac(SECRET, _CLIENT_LABEL, made_for)))
        tag, fields = decode_message(read_frame(sock, deadline), (OK, REFUSED))
    assert tag == REFUSED and fields[0] == "authentication failed", fields


def test_a_party_without_the_key_is_not_told_which_node_this_is(node_n1):
    """A hello naming any node, then a proof made with no key: before, the refusal came
    before the proof and named this node's id to whoever reached the port; the node's
    identity is for a party that proved a key (as the cluster mismatch is)."""
    nonce = os.urandom(32)
    with socket.create_connection(node_n1.address, timeout=2.0) as sock:
        deadline = time.monotonic() + 2.0
        sock.sendall(encode_frame(HELLO, PEER_PROTOCOL_VERSION, "n2", nonce, "", 0, "guess"))
        tag, fields = decode_message(read_frame(sock, deadline), (CHALLENGE, REFUSED))
        assert tag == CHALLENGE, fields
        sock.sendall(encode_frame(PROOF, b"\0" * 32))
        tag, fields = decode_message(read_frame(sock, deadline), (OK, REFUSED))
    assert tag == REFUSED and fields[0] == "authentication failed", fields
    assert "n1" not in fields[0]

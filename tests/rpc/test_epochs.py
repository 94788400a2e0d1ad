"""Epochs after `cluster recover`, in process: the directory's epoch file, and a program's
wanted epoch in the handshake, which a node of an older epoch refuses."""
from __future__ import annotations

import pytest

from prevalence.errors import PrevalenceError
from rpc.auth import AuthenticationFailed, ClusterKey, ServerAuthenticator, client_handshake
from rpc.config import ConfigError
from rpc.epochs import EPOCH_FILE, check_wanted, directory_epoch, secret_file_epoch, write_directory_epoch

from .conftest import CLIENT_SECRET, KEYS, SECRET
from .test_auth import connect, listener, run_server_side  # noqa: F401 - the fixture

CLUSTER = "a1a1a1a1"


def test_the_directory_names_the_epoch_its_clients_want(tmp_path):
    assert directory_epoch(str(tmp_path)) is None  # a directory of an earlier release: nothing wanted
    write_directory_epoch(str(tmp_path), CLUSTER, 2)
    assert directory_epoch(str(tmp_path)) == (CLUSTER, 2)
    (tmp_path / "client.secret").write_bytes(CLIENT_SECRET)
    assert secret_file_epoch(str(tmp_path / "client.secret")) == (CLUSTER, 2)
    (tmp_path / EPOCH_FILE).write_text('cluster = "a1a1a1a1"\nepoch = "two"\n')
    with pytest.raises(ConfigError, match=EPOCH_FILE):  # damaged: refused, never guessed
        directory_epoch(str(tmp_path))


def test_wanted_arguments_are_checked():
    assert check_wanted(None, None) is None
    assert check_wanted(CLUSTER, 3) == (CLUSTER, 3) and check_wanted(None, 3) == ("", 3)
    with pytest.raises(PrevalenceError, match="epoch"):
        check_wanted(CLUSTER, -1)
    with pytest.raises(PrevalenceError, match="cluster id"):
        check_wanted("has space", 1)


def _client(listener, node_key, want, role="client"):  # noqa: F811 - the fixture
    server = run_server_side(listener, ServerAuthenticator(dict(KEYS, peer=node_key), timeout=2, node_id="n3"))
    try:
        with connect(listener) as sock:
            client_handshake(sock, CLIENT_SECRET, role, "op", timeout=2, want=want)
    finally:
        server["thread"].join(3)
    return server


@pytest.mark.parametrize("node, want", [((CLUSTER, 1), None), ((CLUSTER, 1), (CLUSTER, 1)),
                                        ((CLUSTER, 2), (CLUSTER, 1)), (("", 0), (CLUSTER, 1)),
                                        ((CLUSTER, 1), ("", 1))])
def test_a_node_of_the_wanted_epoch_or_a_later_one_serves(listener, node, want):  # noqa: F811
    """A later epoch: the client's directory predates a recover made elsewhere. No id yet,
    or no want (a program of an earlier release): nothing compared."""
    assert "error" not in _client(listener, ClusterKey(SECRET, *node), want)


@pytest.mark.parametrize("node, want, why", [
    ((CLUSTER, 0), (CLUSTER, 1), "this node (n3) belongs to epoch 0, the cluster was recovered into epoch 1: "
                                 "stop it and rebuild it"),
    ((CLUSTER, 0), ("", 1), "this node (n3) belongs to epoch 0, the cluster was recovered into epoch 1"),
    (("b0b0b0b0", 5), (CLUSTER, 1), "this node (n3) is of cluster b0b0b0b0, the client wants cluster a1a1a1a1")])
def test_a_node_of_an_older_epoch_or_another_cluster_refuses_a_program(listener, node, want, why):  # noqa: F811
    for role in ("client", "admin"):
        key = CLIENT_SECRET if role == "client" else KEYS["admin"]
        server = run_server_side(listener, ServerAuthenticator(dict(KEYS, peer=ClusterKey(SECRET, *node)),
                                                               timeout=2, node_id="n3"))
        with connect(listener) as sock, pytest.raises(AuthenticationFailed) as err:
            client_handshake(sock, key, role, "op", timeout=2, want=want)
        server["thread"].join(3)
        message = str(err.value)
        assert why in message and "\n" not in message and "wrong key" not in message
        assert err.value.key_refused  # the client tries its other addresses, and stops once all refuse


def test_a_program_hello_with_a_wanted_epoch_is_one_a_node_of_this_protocol_already_reads():
    """The wanted pair rides in the hello's cluster and epoch fields, which every node of
    client protocol 4 decodes (and one that compares nothing for programs ignores): no
    new protocol version, a newer client still talks to such a node."""
    from rpc.wire import HELLO, PROTOCOL_VERSION, decode_message, encode_frame

    frame = encode_frame(HELLO, PROTOCOL_VERSION, "op", b"c" * 32, CLUSTER, 1)
    assert decode_message(frame[4:], (HELLO,))[1][3:5] == (CLUSTER, 1)


def test_a_client_opened_on_a_secret_file_takes_its_directory_s_epoch(tmp_path):
    import rpc

    (tmp_path / "client.secret").write_bytes(CLIENT_SECRET)
    with rpc.connect(["127.0.0.1:1"], secret_file=str(tmp_path / "client.secret")) as client:
        assert client.wanted is None
    write_directory_epoch(str(tmp_path), CLUSTER, 2)
    with rpc.connect(["127.0.0.1:1"], secret_file=str(tmp_path / "client.secret")) as client:
        assert client.wanted == (CLUSTER, 2)
    with rpc.connect(["127.0.0.1:1"], secret_file=str(tmp_path / "client.secret"), epoch=3) as client:
        assert client.wanted == ("", 3)  # given: the caller's word wins
    with rpc.connect(["127.0.0.1:1"], secret=CLIENT_SECRET) as client:
        assert client.wanted is None


def test_the_epoch_file_is_not_taken_for_a_node_configuration(tmp_path):
    from rpc.cluster import node_config_paths

    (tmp_path / "n1.toml").write_text('id = "n1"\nlisten = "127.0.0.1:7100"\n')
    write_directory_epoch(str(tmp_path), CLUSTER, 1)
    assert node_config_paths(str(tmp_path)) == [str(tmp_path / "n1.toml")]


def test_the_node_logs_whom_it_refused_and_what_was_wanted(listener, caplog):  # noqa: F811
    server = run_server_side(listener, ServerAuthenticator(dict(KEYS, peer=ClusterKey(SECRET, CLUSTER, 0)),
                                                           timeout=2, node_id="n3"))
    with connect(listener) as sock, pytest.raises(AuthenticationFailed):
        client_handshake(sock, CLIENT_SECRET, "client", "op", timeout=2, want=(CLUSTER, 1))
    server["thread"].join(3)
    logged = [r.getMessage() for r in caplog.records if "refused connection" in r.getMessage()]
    assert len(logged) == 1 and "'op' (client) wants cluster a1a1a1a1 epoch 1: this node (n3) belongs to epoch 0" \
        in logged[0], logged


def test_recover_names_the_epoch_in_the_directory_past_any_epoch_the_survivor_heard_of(tmp_path):
    """A survivor left out of an earlier recover (a peer of epoch 1 proved it, and it kept
    that in its data) recovered again: into epoch 2, not a second, different epoch 1 that
    the handshake could not tell from the first."""
    import os

    from replication.journal_storage import node_data_identity
    from rpc.cluster import free_port_block, write_cluster
    from rpc.config import load_config
    from rpc.epochs import read_superseded, write_superseded
    from rpc.recovery import recover_survivor

    directory = str(tmp_path)
    write_cluster(directory, 3, free_port_block(3), "tests.prevalence.domain:Store")
    data = load_config(os.path.join(directory, "n2.toml")).data
    cluster = node_data_identity(data, "n2").cluster
    write_superseded(data, cluster, 1)
    assert read_superseded(data) == (cluster, 1)
    kept = recover_survivor(directory, "n2")
    assert kept["epoch"] == 2 and directory_epoch(directory) == (cluster, 2)
    assert (node_data_identity(data, "n2").cluster, node_data_identity(data, "n2").epoch) == (cluster, 2)

"""Node configuration files: round trip, and a clear message for every wrong field."""
from __future__ import annotations

import pytest

from rpc.cluster import write_cluster
from rpc.config import ConfigError, NodeConfig, load_config, render_config


def good() -> NodeConfig:
    return NodeConfig(path="", id="n1", listen=("127.0.0.1", 7101), data="data/n1", root="app.model:Grid",
                      peers={"n1": ("127.0.0.1", 7101), "n2": ("127.0.0.1", 7102)})


def write(tmp_path, text):
    p = tmp_path / "node.toml"
    p.write_text(text)
    return str(p)


def test_round_trip_and_relative_paths(tmp_path):
    cfg = load_config(write(tmp_path, render_config(good())))
    assert cfg.id == "n1" and cfg.listen == ("127.0.0.1", 7101)
    assert cfg.data == str(tmp_path / "data" / "n1")  # relative to the file
    assert (cfg.peer_secret, cfg.client_secret, cfg.admin_secret) == \
        tuple(str(tmp_path / f"{role}.secret") for role in ("peer", "client", "admin"))
    assert cfg.peers == good().peers and cfg.fsync == "always" and cfg.tick == 0.025


@pytest.mark.parametrize(
    "old, new, message",
    [
        ('id = "n1"', "", "field 'id' is missing"),
        ('listen = "127.0.0.1:7101"', 'listen = "127.0.0.1"', "field 'listen': expected \"HOST:PORT\""),
        ('listen = "127.0.0.1:7101"', 'listen = "127.0.0.1:99999"', "port from 1 to 65535"),
        ('fsync = "always"', 'fsync = "often"', "field 'fsync' must be \"always\" or \"unsafe-no-fsync\", got 'often'"),
        ('fsync = "always"', "fsync = false", "field 'fsync' must be str, got False"),
        ('root = "app.model:Grid"', 'root = "app.model"', "field 'root' must be MODULE:FACTORY"),
        ("tick = 0.025", 'tick = "fast"', "field 'timeouts.tick' must be int or float"),
        ("tick = 0.025", "tick = -1", "field 'timeouts.tick' must be from 0.001 to 10 seconds"),
        ("election_ticks = 10", "election_ticks = 1", "field 'timeouts.election_ticks' must be from 3 to 100000"),
        ("heartbeat_ticks = 5", "heartbeat_ticks = 10", "heartbeat_ticks' must be smaller than election_ticks"),
        ('"n1" = "127.0.0.1:7101"', "", "must list this node ('n1')"),
        ('"n2" = "127.0.0.1:7102"', '"n2" = 7102', "field 'peers.n2' must be str"),
        ("keep = 2", "keep = 2\nkep = 3", "unknown field(s) snapshots.kep"),
        ('fsync = "always"', 'fsync = "always"\ncolour = "blue"', "unknown field(s) colour"),
        ("every = 10000", "every = true", "field 'snapshots.every' must be int"),
        ("[peers]", "[peers", "not valid TOML"),
        ('admin_secret = "admin.secret"', "", "field 'admin_secret' is missing"),
        ('peer_secret = "peer.secret"', "peer_secret = 1", "field 'peer_secret' must be str"),
        ("keep = 2", 'keep = 2\n[rotation]\nroot = "x.secret"', "unknown field(s) rotation.root"),
        ("keep = 2", "keep = 2\n[rotation]\npeer = 5", "field 'rotation.peer' must be str"),
    ],
)
def test_every_wrong_field_is_named(tmp_path, old, new, message):
    text = render_config(good())
    assert old in text
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text.replace(old, new, 1)))
    assert message in str(info.value) and str(tmp_path) in str(info.value)


@pytest.mark.parametrize("mode", ["batch", "never"])
def test_fsync_modes_that_acknowledge_before_the_disk_are_refused(tmp_path, mode):
    # The single-process engine offers them; a node would ack entries and votes that a
    # power failure can take back. One line that names the choice and what to write.
    text = render_config(good()).replace('fsync = "always"', f'fsync = "{mode}"')
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    msg = str(info.value)
    assert "\n" not in msg and str(tmp_path) in msg
    assert f"field 'fsync' = \"{mode}\" is not offered on a cluster node" in msg
    assert '"always"' in msg and '"unsafe-no-fsync"' in msg and "docs/operations.md" in msg


def test_unsafe_no_fsync_round_trips(tmp_path):
    cfg = good()
    cfg.fsync = "unsafe-no-fsync"
    assert load_config(write(tmp_path, render_config(cfg))).fsync == "unsafe-no-fsync"


@pytest.mark.parametrize("mode", ["batch", "never", "often"])
def test_a_config_with_a_refused_fsync_is_never_written(tmp_path, mode):
    # `prevalence cluster up` / LocalCluster(fsync=...): refused before any node starts
    cfg = good()
    cfg.fsync = mode
    with pytest.raises(ConfigError, match=f"node 'n1': field 'fsync'.*{mode}"):
        render_config(cfg)
    with pytest.raises(ConfigError, match=f"node 'n1': field 'fsync'.*{mode}"):
        write_cluster(str(tmp_path), 3, 7101, "app.model:Grid", fsync=mode)
    assert not list(tmp_path.glob("*.toml"))  # not even an empty file


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(str(tmp_path / "nope.toml"))


def test_tls_section_names_missing_files(tmp_path):
    text = render_config(good()) + '\n[tls]\ncert = "n1.crt"\nkey = "n1.key"\nca = "ca.crt"\n'
    with pytest.raises(ConfigError, match=r"field 'tls.cert': no such file .*n1\.crt"):
        load_config(write(tmp_path, text))
    (tmp_path / "n1.crt").write_text("x")
    (tmp_path / "n1.key").write_text("x")
    (tmp_path / "ca.crt").write_text("x")
    cfg = load_config(write(tmp_path, text))
    assert cfg.tls_ca == str(tmp_path / "ca.crt")
    from rpc.config import tls_contexts

    with pytest.raises(ConfigError, match=r"\[tls\] files cannot be used"):
        tls_contexts(cfg)  # not PEM


def test_a_key_being_replaced_round_trips(tmp_path):
    cfg = good()
    cfg.rotation = {"peer": "peer.secret.new"}
    again = load_config(write(tmp_path, render_config(cfg)))
    assert again.rotation == {"peer": str(tmp_path / "peer.secret.new")}


def test_a_config_with_the_one_shared_cluster_secret_names_the_way_on(tmp_path):
    """Before keys had roles every config named cluster.secret, which any client held: it
    stops with one line saying what to do, never starts with that weaker key."""
    text = render_config(good())
    for role in ("peer", "client", "admin"):
        text = text.replace(f'{role}_secret = "{role}.secret"\n', "")
    text = text.replace('root = "app.model:Grid"', 'root = "app.model:Grid"\nsecret_file = "cluster.secret"')
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message
    assert "cluster.secret" in message and "prevalence cluster keys" in message and "docs/security.md" in message


@pytest.mark.parametrize("text", ["10.0.0.1:7¹00", "10.0.0.1:²", "h:٣٣"])
def test_a_port_in_digits_of_another_script_is_one_line_not_a_traceback(text):
    """str.isdigit() is true for superscripts and other scripts' digits, which int()
    refuses: a config, `--address` or rpc.connect got a bare ValueError."""
    from rpc.config import parse_address

    with pytest.raises(ConfigError, match="with a port from 1 to 65535"):
        parse_address(text, "listen")


def test_a_node_listens_and_answers_on_an_ipv6_address(tmp_path):
    """`listen = "[::1]:PORT"` passed the config's check, then the node failed to start:
    "Address family for hostname not supported"."""
    import socket
    import time

    from rpc.cluster import cluster_status, free_port_block, node_config_paths
    from rpc.server import NodeProcess

    try:
        socket.socket(socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 here")
    directory = tmp_path / "c"
    write_cluster(str(directory), 1, free_port_block(1), "tests.prevalence.domain:Store")
    path = node_config_paths(str(directory))[0]
    text = open(path, encoding="utf-8").read().replace('"127.0.0.1:', '"[::1]:')
    open(path, "w", encoding="utf-8").write(text)
    process = NodeProcess(load_config(path)).start()
    try:
        deadline = time.monotonic() + 10
        while not process.node.is_leader and time.monotonic() < deadline:
            time.sleep(0.02)
        (row,) = cluster_status(str(directory))
        assert row["reachable"] and row["role"] == "leader" and row["address"].startswith("[::1]:"), row
    finally:
        process.stop()

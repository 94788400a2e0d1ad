"""node_config_paths on the cluster directory of PCs that each listen on every interface.

Each PC's node may listen on 0.0.0.0:7100 and be dialled at its own [peers] entry
(NodeConfig.address: status, admin and cluster add dial that). Keeping the nodes'
configs in one directory for `status --cluster DIR` is what that directory is for, but
a copy check compared the raw listen strings and refused every command there."""
from __future__ import annotations

import pytest

from rpc.cluster import node_config_paths
from rpc.config import ConfigError, NodeConfig, load_config, render_config

PEERS = {"n1": ("10.0.0.1", 7100), "n2": ("10.0.0.2", 7100), "n3": ("10.0.0.3", 7100)}


def write(directory, nid, **changes):
    cfg = NodeConfig(path="", id=nid, listen=("0.0.0.0", 7100), data=nid, root="app.model:Grid", peers=dict(PEERS))
    for k, v in changes.items():
        setattr(cfg, k, v)
    (directory / f"{nid}.toml").write_text(render_config(cfg))


def test_nodes_that_all_listen_on_every_interface_are_one_cluster(tmp_path):
    for nid in PEERS:
        write(tmp_path, nid)
    paths = node_config_paths(str(tmp_path))
    assert [load_config(p).address for p in paths] == list(PEERS.values())


def test_two_files_dialled_at_one_address_are_still_named(tmp_path):
    write(tmp_path, "n1")
    write(tmp_path, "n2", peers={**PEERS, "n2": ("10.0.0.1", 7100), "n1": ("10.0.0.9", 7100)})
    with pytest.raises(ConfigError, match="n1.toml and n2.toml"):
        node_config_paths(str(tmp_path))


def test_a_copy_of_a_node_file_is_still_named(tmp_path):
    write(tmp_path, "n1")
    (tmp_path / "n4.toml").write_text((tmp_path / "n1.toml").read_text())
    with pytest.raises(ConfigError, match="n1.toml and n4.toml"):
        node_config_paths(str(tmp_path))

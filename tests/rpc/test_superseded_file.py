"""What a node keeps of a later epoch that a peer proved (rpc.epochs, superseded.toml),
read back at its start, when the disk gives something else than what was written.

The file is written only after a peer's proof, atomically: one that is there but does
not read (a damaged sector, a file truncated by a failing disk, a directory in its
place) still says that a proof came. Taking it for none let the node serve its old
epoch again after a reboot while the new epoch's nodes were down: commands
acknowledged there are lost to the recovered cluster."""
from __future__ import annotations

import os

import pytest

from rpc.cluster import free_port_block, node_config_paths, write_cluster
from rpc.config import load_config
from rpc.epochs import SUPERSEDED_FILE, write_superseded
from rpc.server import NodeProcess


@pytest.fixture
def cfg(tmp_path):
    directory = str(tmp_path / "c")
    write_cluster(directory, 3, free_port_block(3), "tests.prevalence.domain:Store")
    return load_config(node_config_paths(directory)[0])



@pytest.mark.parametrize("damage", [
    lambda path: open(path, "wb").write(b"cluster = \"\xff\xfe"),  # not UTF-8
    lambda path: open(path, "wb").write(b"cluster = \"abc"),  # truncated: not TOML
    lambda path: open(path, "wb").write(b"cluster = 7\nepoch = -1\n"),  # not an identity
    lambda path: os.mkdir(path),  # not a file
])
def test_a_superseded_file_that_does_not_read_still_stops_the_node_taking_commands(cfg, damage, caplog):
    damage(os.path.join(cfg.data, SUPERSEDED_FILE))
    process = NodeProcess(cfg)
    try:
        why = process.superseded()
        assert why is not None and "takes no command" in why, why
        assert process.superseded_by() == process.identity.epoch + 1
        assert any(r.levelname == "ERROR" and SUPERSEDED_FILE in r.getMessage() for r in caplog.records)
    finally:
        process._abandon()


def test_a_readable_one_names_the_epoch_and_none_takes_commands(cfg):
    process = NodeProcess(cfg)
    cluster, epoch = process.identity.cluster, process.identity.epoch
    process._abandon()
    assert process.superseded() is None
    write_superseded(cfg.data, cluster, epoch + 3)
    process = NodeProcess(cfg)
    try:
        assert process.superseded_by() == epoch + 3
    finally:
        process._abandon()


def test_one_naming_another_cluster_or_an_epoch_not_later_is_no_proof_against_this_data(cfg):
    """Data recovered in place since (its epoch past the one heard of), or another
    cluster's file copied in: this node takes commands."""
    process = NodeProcess(cfg)
    cluster, epoch = process.identity.cluster, process.identity.epoch
    process._abandon()
    for named in (("b0b0b0b0", epoch + 1), (cluster, epoch)):
        write_superseded(cfg.data, *named)
        process = NodeProcess(cfg)
        try:
            assert process.superseded() is None, named
        finally:
            process._abandon()

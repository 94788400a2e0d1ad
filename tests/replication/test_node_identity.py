"""A node's data directory knows whose it is and that it was created: the checks a node
process makes before it opens its journal (rpc.server refuses to start on their errors)."""
from __future__ import annotations

import os

import pytest

from prevalence.entry import Entry
from replication.errors import RaftError
from replication.journal_storage import (
    HARD_STATE_FILE, IDENTITY_FILE, JournalStorage, NoDataError, create_node_data, node_data_identity,
)
from replication.membership import Membership
from replication.messages import HardState


def test_a_created_node_starts_and_its_data_is_created_once(tmp_path):
    made = create_node_data(str(tmp_path / "n1"), "n1", "new-cluster")
    assert node_data_identity(str(tmp_path / "n1"), "n1") == made
    with pytest.raises(RaftError, match="already holds node data"):
        create_node_data(str(tmp_path / "n1"), "n1", "join")


@pytest.mark.parametrize("leftover", [None, [], ["LOCK", "journal/", "snapshots/"]])
def test_a_missing_or_wiped_directory_is_no_data(tmp_path, leftover):
    d = tmp_path / "n2"
    if leftover is not None:
        d.mkdir()
        for name in leftover:  # what a refused start or an emptied journal leaves
            (d / name.rstrip("/")).mkdir() if name.endswith("/") else (d / name).write_text("")
    with pytest.raises(NoDataError):
        node_data_identity(str(d), "n2")
    create_node_data(str(d), "n2", "join")  # an empty directory (a mount point) can be made a node's
    assert node_data_identity(str(d), "n2").origin == "join"


def test_data_written_before_identity_files_is_adopted(tmp_path):
    s = JournalStorage(str(tmp_path), initial_membership=Membership(("n1",)))
    s.append([Entry(1, 1, 1, b"x")])
    s.sync()
    s.set_hard_state(HardState(1, "n1", 1))
    s.close()
    adopted = node_data_identity(str(tmp_path), "n1")
    assert adopted.node == "n1" and adopted.origin == "adopted"
    assert node_data_identity(str(tmp_path), "n1") == adopted  # written: the same from then on


def test_another_nodes_data_is_refused(tmp_path):
    create_node_data(str(tmp_path), "n3", "new-cluster")
    with pytest.raises(RaftError, match="holds the data of node 'n3'.*not of 'n2'"):
        node_data_identity(str(tmp_path), "n2")


def test_a_lost_hard_state_is_damage_not_a_first_start(tmp_path):
    # without it the node would start at term 0 with no vote: it could vote twice in a term
    create_node_data(str(tmp_path), "n1", "new-cluster")
    os.remove(tmp_path / HARD_STATE_FILE)
    with pytest.raises(RaftError, match=f"{HARD_STATE_FILE} is missing: the node would forget its term and vote"):
        node_data_identity(str(tmp_path), "n1")


def test_an_identity_of_a_newer_format_is_refused(tmp_path):
    create_node_data(str(tmp_path), "n1", "new-cluster")
    path = tmp_path / IDENTITY_FILE
    path.write_text(path.read_text().replace("format = 2", "format = 3"))
    with pytest.raises(RaftError, match="node identity format 3 is not one this version reads"):
        node_data_identity(str(tmp_path), "n1")


def test_the_cluster_id_and_epoch_are_kept_and_a_format_1_identity_still_reads(tmp_path):
    made = create_node_data(str(tmp_path / "a"), "n1", "new-cluster", cluster="c0ffee", epoch=3)
    assert node_data_identity(str(tmp_path / "a"), "n1") == made
    assert (made.cluster, made.epoch) == ("c0ffee", 3)
    create_node_data(str(tmp_path / "b"), "n1", "new-cluster")
    path = tmp_path / "b" / IDENTITY_FILE
    old = "".join(line + "\n" for line in path.read_text().splitlines()
                  if not line.startswith(("cluster", "epoch"))).replace("format = 2", "format = 1")
    path.write_text(old)
    got = node_data_identity(str(tmp_path / "b"), "n1")
    assert (got.cluster, got.epoch) == ("", 0)

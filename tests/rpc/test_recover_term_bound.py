"""`cluster recover` never writes a term past the largest a node takes (MAX_TERM).

Recovery appends its entry in a term above any the survivor has seen. From a survivor
at the bound (a member sent it a forged or corrupt term there) that term is one no node
takes: every message of the recovered node would be refused, and it reported success."""
from __future__ import annotations

import os

import pytest

from prevalence.entry import Entry
from replication.errors import RaftError
from replication.journal_storage import HardStateFile, JournalStorage
from replication.messages import MAX_TERM, HardState
from rpc.cluster import free_port_block, write_cluster
from rpc.config import load_config
from rpc.recovery import recover_survivor

ROOT = "tests.prevalence.domain:Store"


def _survivor(tmp_path, term: int) -> tuple[str, str]:
    directory = str(tmp_path)
    write_cluster(directory, 3, free_port_block(3), ROOT)
    data = load_config(os.path.join(directory, "n1.toml")).data
    s = JournalStorage(data)
    s.append([Entry(1, 1, 1, b"x")])
    s.sync()
    s.set_hard_state(HardState(term, None, 1))
    s.close()
    return directory, data


def test_a_survivor_at_the_term_bound_is_refused_and_left_as_it_was(tmp_path):
    directory, data = _survivor(tmp_path, MAX_TERM)
    with pytest.raises(RaftError, match="largest term"):
        recover_survivor(directory, "n1")
    assert HardStateFile(data).load().term == MAX_TERM
    s = JournalStorage(data)
    try:
        assert s.last_index() == 1
    finally:
        s.close()


def test_a_survivor_below_the_bound_is_recovered_at_most_to_it(tmp_path):
    directory, data = _survivor(tmp_path, MAX_TERM - 1)
    recover_survivor(directory, "n1")
    assert HardStateFile(data).load().term == MAX_TERM

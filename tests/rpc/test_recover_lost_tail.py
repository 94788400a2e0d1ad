"""`cluster recover` on a survivor whose journal lost its tail (a disk that cut it off).

Since the stored commit is refreshed as the log grows, a node refuses to start on a log
that ends before it: right for a node that would vote with the entries it acknowledged
missing. But `cluster recover` exists for the day a majority is gone for good: it keeps
what the survivor has, and says that entries acknowledged elsewhere may be lost. Refused
too, it left that cluster with no way back at all."""
from __future__ import annotations

import os

from prevalence.entry import Entry
from prevalence.journal import Journal
from replication.journal_storage import HardStateFile, JournalStorage
from replication.messages import HardState
from rpc.cluster import free_port_block, write_cluster
from rpc.config import load_config
from rpc.recovery import recover_survivor

ROOT = "tests.prevalence.domain:Store"


def test_a_survivor_whose_journal_lost_its_tail_can_still_be_recovered(tmp_path):
    directory = str(tmp_path)
    write_cluster(directory, 3, free_port_block(3), ROOT)
    data = load_config(os.path.join(directory, "n1.toml")).data
    s = JournalStorage(data)
    s.append([Entry(i, 1, 1, b"x") for i in range(1, 11)])
    s.sync()
    s.set_hard_state(HardState(1, "n1", 10))
    s.close()
    with Journal(os.path.join(data, "journal")) as j:  # the disk kept only the first five
        j.truncate_after(5)
    assert HardStateFile(data).load().commit == 10

    kept = recover_survivor(directory, "n1")
    assert kept["last_index"] == 5 and kept["epoch"] == 1 and kept["lost"] == 5 and kept["commit"] == 5

    again = JournalStorage(data)  # the recovered node starts: its log holds its stored commit
    try:
        assert again.last_index() == 6 and again.initial_state()[0].commit <= 6
    finally:
        again.close()

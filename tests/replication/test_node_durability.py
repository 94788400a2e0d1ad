"""A node promises only what its disk has: acks after the fsync, votes after raft-state.

Three in-process nodes on a LocalNetwork whose ports look at every message as it leaves
a node: an append acknowledgement for index i must find i fsynced in the sender's
journal, a granted vote must find (term, vote) in its raft-state file.
"""
from __future__ import annotations

import time

import pytest

from replication.errors import RaftError
from replication.journal_storage import HardStateFile, JournalStorage
from replication.membership import Membership
from replication.messages import AppendResp, VoteResp, decode
from replication.node import LocalNetwork, Node, NodeOptions
from tests.prevalence.domain import Add, Get, Store

IDS = ("n1", "n2", "n3")


class Watched:
    """The cluster, and what its nodes sent before their disk had it."""

    def __init__(self, tmp_path, fsync: str):
        self.dir, self.fsync = tmp_path, fsync
        self.net = LocalNetwork()
        self.acks = self.votes = 0
        self.early_acks: list[tuple[str, int, int]] = []  # (node, acked index, durable index)
        self.early_votes: list[tuple[str, int, tuple]] = []  # (node, term, stored hard state)
        for i in IDS:
            self.start(i)

    def start(self, i: str) -> Node:
        port = self.net.transport(i)
        real = port.send

        def send(to: str, payload: bytes) -> None:
            self.check(i, decode(payload))
            real(to, payload)

        port.send = send
        node = Node(i, str(self.dir / i), Store, port, membership=Membership(IDS),
                    options=NodeOptions(fsync=self.fsync))
        self.net.nodes[i] = node
        return node.start()

    def check(self, i: str, m) -> None:
        st = self.net.nodes[i].storage
        if type(m) is AppendResp and not m.reject:
            self.acks += 1
            durable = max(st.journal.durable_index, st.first_index() - 1)
            if m.index > durable:
                self.early_acks.append((i, m.index, durable))
        elif type(m) is VoteResp and not m.reject:
            self.votes += 1
            hs = HardStateFile(st.directory).load()
            if not (hs.term > m.term or (hs.term, hs.vote) == (m.term, m.dst)):
                self.early_votes.append((i, m.term, tuple(hs)))

    def leader(self, timeout: float = 5.0) -> Node:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leaders = [n for n in self.net.nodes.values() if n.is_leader]
            if len(leaders) == 1:
                return leaders[0]
            time.sleep(0.01)
        raise AssertionError("no single leader elected")

    def stop(self) -> None:
        for n in list(self.net.nodes.values()):
            n.stop(transfer=False)
        self.net.nodes.clear()

    def work(self) -> int:
        total = 0
        for _ in range(2):  # a failover, so votes are granted after entries were acked
            leader = self.leader()
            for _ in range(25):
                total = leader.execute(Add("x", 1))
            self.net.nodes.pop(leader.id).stop(transfer=False)
            self.leader()
            self.start(leader.id)
        return total


def test_acks_and_votes_wait_for_the_disk(tmp_path):
    c = Watched(tmp_path, "always")
    try:
        total = c.work()
        assert c.leader().execute(Add("x", 0)) == total
    finally:
        c.stop()
    assert c.acks > 0 and c.votes > 0
    assert c.early_acks == [] and c.early_votes == []
    for i in IDS:  # nor does raft-state name a commit the journal does not hold
        hs = HardStateFile(str(tmp_path / i)).load()
        reopened = JournalStorage(str(tmp_path / i), initial_membership=Membership(IDS))
        try:
            assert hs.commit <= reopened.last_index()
        finally:
            reopened.close()


def test_unsafe_no_fsync_acks_before_the_disk_and_says_so(tmp_path):
    # What the mode gives up, observed: the same check finds acks ahead of the fsync.
    c = Watched(tmp_path, "unsafe-no-fsync")
    try:
        total = c.work()
    finally:
        c.stop()
    assert c.early_acks, "unsafe-no-fsync fsynced every acked entry: the check above has no teeth"
    c = Watched(tmp_path, "unsafe-no-fsync")  # a clean stop fsyncs: nothing lost
    try:
        leader = c.leader()
        assert leader.execute(Add("x", 0)) == total
        assert leader.query(Get("x")) == total
    finally:
        c.stop()


@pytest.mark.parametrize("mode", ["batch", "never"])
def test_a_node_refuses_the_engines_faster_modes(tmp_path, mode):
    with pytest.raises(RaftError, match=f'fsync = "{mode}" is not offered on a cluster node'):
        Node("n1", str(tmp_path / "n1"), Store, LocalNetwork().transport("n1"), membership=Membership(IDS),
             options=NodeOptions(fsync=mode))

"""A command this very program could not read back from the log is refused before it is
proposed, as the embedded engine refuses it (prevalence.codec.journal_copy).

The replicated node journaled ``CODEC.to_plain(tx)`` unchecked: an object built in the
process (the application's own code calling ``Node.execute``, a leader hook, a plugin)
whose plain form does not decode (a float in an int field, a map with tuple keys) was
committed, and then every replica, the leader included, met an entry it cannot read:
once a crash loop of every node, now every node stuck before it (nothing applied, no
leader able to serve) until a program patched to read it runs, since an upgrade to any
release reads it no better."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

import prevalence
from prevalence.errors import CodecError
from tests.prevalence.domain import Get, Put, Store
from tests.replication.test_node import Cluster


@dataclass(frozen=True)
class _Cells(prevalence.Transaction, name="test.unreadable.Cells"):
    cells: dict[tuple[int, int], str]

    def execute(self, root: Store, ctx: prevalence.Context) -> None:
        root.values["cells"] = len(self.cells)


@pytest.mark.parametrize("tx", [Put("a", 1.5), _Cells({(1, 2): "x"})], ids=["float-in-int", "tuple-keys"])
def test_a_command_that_would_not_read_back_is_refused_and_the_cluster_applies_on(tmp_path, tx):
    c = Cluster(tmp_path)
    try:
        leader = c.leader()
        leader.execute(Put("a", 1))
        before = leader.core.log.last_index()
        with pytest.raises(CodecError, match="read back"):
            leader.execute(tx, timeout=5)
        assert leader.core.log.last_index() == before, "the command was proposed"
        with pytest.raises(CodecError, match="read back"):
            leader.propose_many([(Put("b", 2), None), (tx, None)]).wait(5)
        assert leader.execute(Put("a", 2), timeout=5) == 2
        c.converge("a", 2)
        assert all(n.status()["apply_blocked"] is None for n in c.net.nodes.values())
        assert leader.query(Get("b")) is None  # the batch was refused whole, before anything was proposed
    finally:
        c.stop()


_HUNGRY = {"on": False}


@dataclass(frozen=True)
class _Hungry(prevalence.Transaction, name="test.unreadable.Hungry"):
    n: int

    def __post_init__(self) -> None:
        if _HUNGRY["on"]:
            raise MemoryError()  # as a PC short of memory decoding a large command

    def execute(self, root: Store, ctx: prevalence.Context) -> None:
        root.values["hungry"] = self.n


def test_running_out_of_memory_while_decoding_an_entry_is_no_unreadable_entry():
    """A MemoryError is this PC's state, not the entry's: the node stops (fail-stop) and
    its restart decodes the entry again. Taken for an entry this program cannot read, it
    left the node stuck before it for good, saying "upgrade this node"."""
    from prevalence.codec import CODEC
    from prevalence.entry import Entry, EntryKind
    from prevalence.state import StateMachine, encode_command
    from replication.apply import Applier

    sm = StateMachine(Store())
    applier = Applier("n2", sm, None, lambda *a: None)
    entry = Entry(1, 1, int(EntryKind.COMMAND), encode_command(1, CODEC.to_plain(_Hungry(3))))
    _HUNGRY["on"] = True
    try:
        with pytest.raises(MemoryError):
            applier.apply(None, [entry], {})
    finally:
        _HUNGRY["on"] = False
    assert sm.unreadable is None and sm.applied_index == 0
    assert applier.apply(None, [entry], {}) is None and sm.root.values["hungry"] == 3


def test_running_out_of_memory_while_unpickling_a_snapshot_is_no_unreadable_snapshot(tmp_path, monkeypatch):
    """The same for a snapshot, from the leader or from the node's own disk at its start:
    on a 2 GB PC the whole state unpickled may not fit while something else runs. Taken
    for a snapshot of a newer release, the node at its start skipped it as damaged and,
    its journal compacted to it, started stuck on an empty state."""
    import prevalence.snapshots as snapshots
    import replication.apply as apply
    from prevalence.snapshots import SnapshotMeta, SnapshotStore, serialize
    from prevalence.state import StateMachine
    from replication.apply import Applier
    from tests.replication.test_node_unreadable import _newer_snapshot

    def hungry(body):
        raise MemoryError()

    snap = _newer_snapshot(40)
    monkeypatch.setattr(apply, "deserialize", hungry)
    sm = StateMachine(Store(), applied_index=12)
    with pytest.raises(MemoryError):
        Applier("n2", sm, None, lambda *a: None).apply(snap, [], {})
    assert sm.unreadable is None
    store = SnapshotStore(str(tmp_path))
    body, serializer = serialize(Store())
    store.write(SnapshotMeta(5, 1, 0, serializer), body)
    monkeypatch.setattr(snapshots, "deserialize", hungry)
    with pytest.raises(MemoryError):
        store.load(5)

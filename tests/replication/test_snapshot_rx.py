"""A follower's snapshot reassembly is bounded and never mixes two senders' bytes
(issue 15, item 3)."""
from __future__ import annotations

import random

from replication.config import RaftConfig
from replication.core import RaftNode
from replication.membership import Membership
from replication.messages import InstallSnapshot, SnapshotMeta, SnapshotResp
from replication.storage import MemoryStorage

MEMBERS = Membership(("n1", "n2", "n3"))
META = SnapshotMeta(50, 1, MEMBERS)


def follower(**cfg) -> RaftNode:
    return RaftNode("n3", MemoryStorage(MEMBERS), RaftConfig(election_tick=10, heartbeat_tick=1, **cfg),
                    random.Random(1))


def chunk(src: str, term: int, offset: int, data: bytes, done: bool, meta: SnapshotMeta = META) -> InstallSnapshot:
    return InstallSnapshot(src, "n3", term, meta, offset, data, done)


def outputs(node: RaftNode) -> tuple[list, bytes | None]:
    """(messages sent, data of the snapshot installed) since the last call."""
    msgs, installed = [], None
    while node.has_ready():
        rd = node.ready()
        msgs += rd.messages + rd.persisted_messages
        if rd.snapshot is not None:
            installed = rd.snapshot.data
        node.advance(rd)
    return msgs, installed


def test_a_new_sender_never_completes_another_senders_partial_snapshot():
    """Two leaders' snapshots at the same index may differ byte for byte (dill): the
    first half of one and the second half of the other is no snapshot at all."""
    node = follower()
    node.step(chunk("n1", 1, 0, b"A" * 10, False))
    msgs, installed = outputs(node)
    assert installed is None and [(type(m), m.next_offset) for m in msgs] == [(SnapshotResp, 10)]

    node.step(chunk("n2", 2, 10, b"B" * 10, True))  # the new leader, same snapshot meta
    msgs, installed = outputs(node)
    assert installed is None, f"installed a mix of two senders' bytes: {installed!r}"
    assert [(type(m), m.dst, m.next_offset) for m in msgs if type(m) is SnapshotResp] == [(SnapshotResp, "n2", 0)]

    node.step(chunk("n2", 2, 0, b"B" * 20, True))
    _msgs, installed = outputs(node)
    assert installed == b"B" * 20


def test_reassembly_is_bounded():
    node = follower(max_snapshot_bytes=25)
    node.step(chunk("n1", 1, 0, b"A" * 10, False))
    node.step(chunk("n1", 1, 10, b"A" * 10, False))
    outputs(node)
    node.step(chunk("n1", 1, 20, b"A" * 10, True))  # 30 bytes: over the bound
    _msgs, installed = outputs(node)
    assert installed is None and node._snap_rx is None  # dropped, not kept
    node.step(chunk("n1", 1, 0, b"C" * 20, True))  # a snapshot within the bound installs
    _msgs, installed = outputs(node)
    assert installed == b"C" * 20

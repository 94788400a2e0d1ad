"""What a node sends a peer fits the peer frame limit (issue 15, item 3): a journal entry
is bounded when it is proposed, and what goes back as a delivery's reply is one batch."""
from __future__ import annotations

import time

import pytest

from prevalence.errors import CodecError
from replication.config import RaftConfig
from replication.messages import Append, AppendResp, decode, encode
from tests.prevalence.domain import Get, Tags
from tests.replication.test_node import Cluster

MiB = 1 << 20


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.stop()


def test_an_entry_over_the_limit_is_refused_when_proposed(cluster):
    """Over the peer frame limit, an entry could never reach a follower: the cluster
    would stall behind it. It is refused at once, naming the sizes."""
    leader = cluster.leader()
    with pytest.raises(CodecError, match=r"over the limit of 8388608 bytes"):
        leader.execute(Tags("big", blob=b"x" * (9 * MiB)))
    assert leader.execute(Tags("fits", blob=b"x" * (7 * MiB))) is None
    assert leader.query(Get("big")) is None


def test_what_a_leader_returns_as_a_reply_is_at_most_one_batch(tmp_path):
    """A follower's ack that arrives through a delivery is stepped on the receiving
    thread, and what the leader then sends that follower goes back as the reply: one
    frame. After a probe succeeds that is a whole window of appends: with the window
    bounded by messages only (max_inflight_bytes=0, 1 MiB appends), 28 MB here, far over
    the peer frame limit. The reply keeps to one batch, the rest goes as messages."""
    raft = RaftConfig(election_tick=10, heartbeat_tick=5, max_size_per_msg=1 << 20, max_inflight_bytes=0)
    cluster = Cluster(tmp_path, raft=raft)
    try:
        _reply_within_one_batch(cluster)
    finally:
        cluster.stop()


def _reply_within_one_batch(cluster) -> None:
    leader = cluster.leader()
    lagging = next(i for i in cluster.ids if i != leader.id)
    # it holds the leader's first entry before the cut: a rejection of index 0 is what a
    # follower that lost its log sends (the leader then moves its match back, no probe)
    deadline = time.monotonic() + 5
    while leader.core.prs[lagging].match < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    cluster.net.cut |= {(leader.id, lagging), (lagging, leader.id)}
    for k in range(40):
        leader.execute(Tags(f"k{k}", blob=b"z" * 700_000))
    term = leader.core.term
    pr = leader.core.prs[lagging]
    # the follower is back: it rejects the append it last saw, and gets a probe
    replies = leader.receive_batch([encode(AppendResp(lagging, leader.id, term, pr.next - 1, True, pr.match))],
                                   reply_to=lagging)
    probes = [m for m in map(decode, replies) if type(m) is Append]
    assert len(probes) == 1, replies
    probe = probes[0]
    # it accepts the probe: the leader moves it to replicating and fills the window
    ack = AppendResp(lagging, leader.id, term, probe.prev_index + len(probe.entries))
    replies = leader.receive_batch([encode(ack)], reply_to=lagging)
    size = sum(map(len, replies))
    assert size <= MiB or len(replies) == 1, f"{len(replies)} replies, {size} bytes"

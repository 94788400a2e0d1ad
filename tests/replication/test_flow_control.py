"""Flow control towards a follower that catches up (issue 14, item 6).

A follower far behind must be fed a bounded amount at a time, or the leader spends its
core lock reading and encoding the whole backlog while heartbeats and the healthy
followers wait (an election follows). tests/cluster/test_catchup.py shows the effect
with real processes; these tests pin the rules in the core.
"""
from __future__ import annotations

import pytest

from replication.config import RaftConfig
from replication.errors import RaftError
from replication.messages import Append
from replication.progress import Inflights


def appended_bytes(msgs, to: str) -> int:
    return sum(len(e.data) for m in msgs if type(m) is Append and m.dst == to for e in m.entries)


def test_inflights_is_full_at_its_message_or_its_byte_limit():
    inf = Inflights(10, max_bytes=100)
    inf.add(5, 60)
    assert not inf.full()
    inf.add(9, 60)  # a message may take it past the limit; then nothing more goes out
    assert inf.full() and inf.bytes == 120
    inf.free_le(5)
    assert not inf.full() and inf.bytes == 60
    inf.reset()
    assert inf.bytes == 0 and inf.count() == 0
    assert not Inflights(10, max_bytes=0).full()  # 0: no byte limit


def test_a_negative_byte_window_is_refused():
    with pytest.raises(RaftError, match="max_inflight_bytes"):
        RaftConfig(max_inflight_bytes=-1).validate()


def test_a_follower_far_behind_is_sent_a_bounded_window_at_a_time(make_cluster):
    window, msg = 1000, 200
    c = make_cluster(["a", "b", "c"],
                     config=RaftConfig(heartbeat_tick=1, max_size_per_msg=msg, max_inflight_bytes=window))
    c.elect("a")
    c.settle()
    c.isolate("c")
    for i in range(300):  # 15,000 bytes the follower will miss
        c.propose("a", b"%050d" % i)
    c.settle()
    c.heal()
    rounds, worst = 0, 0
    while c.nodes["c"].log.last_index() < c.nodes["a"].log.last_index():
        assert rounds < 500, "the follower never caught up"
        c.tick("a")  # a heartbeat per round trip (two deliveries: there and back)
        for _ in range(2):
            rounds += 1
            worst = max(worst, appended_bytes(c.inflight, "c"))  # what the last round's steps sent it
            c.deliver()
    assert worst <= window + msg  # never the backlog at once...
    assert rounds >= 15_000 // (window + msg)  # ...but window after window
    c.settle()
    assert c.commands("c") == c.commands("a")

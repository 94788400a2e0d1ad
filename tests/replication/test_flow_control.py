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
from replication.messages import Append, Heartbeat
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


def test_answers_to_heartbeats_older_than_a_probe_do_not_resend_it(make_cluster):
    """A returning follower answers the heartbeats queued for it in one burst. Each used
    to resend the probe (a full Append): the burst cost a multiple of the backlog."""
    c = make_cluster(["a", "b", "c"], config=RaftConfig(heartbeat_tick=1))
    c.elect("a")
    c.settle()
    held = []

    def cut_c(m) -> bool:  # c is unreachable; the heartbeats for it stay queued
        if "c" not in (m.src, m.dst):
            return False
        if type(m) is Heartbeat:
            held.append(m)
        return True

    c.drop = cut_c
    for i in range(5):
        c.propose("a", b"x%d" % i)
        c.tick("a")
        c.settle()
    c.drop = lambda m: "c" in (m.src, m.dst)
    c.tick("a")  # one more tick: every held heartbeat is older than what follows
    c.settle()
    c.heal()
    assert len(held) >= 5
    c.inflight.extend(held)
    c.deliver()  # c answers them all at once
    c.deliver()  # the leader steps the burst: c's appends were lost, so it probes
    probes = [m for m in c.inflight if type(m) is Append and m.dst == "c"]
    assert len(probes) == 1, probes
    c.inflight = [m for m in c.inflight if m not in probes]  # the probe is lost too
    c.tick("a")  # a heartbeat sent after the probe...
    c.deliver()
    c.deliver()  # ...answered: the probe may be lost, so it goes out again
    assert len([m for m in c.inflight if type(m) is Append and m.dst == "c"]) == 1
    c.settle()
    assert c.commands("c") == c.commands("a")

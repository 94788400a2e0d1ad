"""Flow control towards a follower that catches up (issue 14, item 6).

A follower far behind must be fed a bounded amount at a time, or the leader spends its
core lock reading and encoding the whole backlog while heartbeats and the healthy
followers wait (an election follows). tests/cluster/test_catchup.py shows the effect
with real processes; these tests pin the rules in the core.
"""
from __future__ import annotations

import pytest

from prevalence.entry import Entry
from replication import raft_log
from replication.config import RaftConfig
from replication.errors import RaftError
from replication.membership import Membership
from replication.messages import Append, Heartbeat
from replication.progress import Inflights
from replication.raft_log import RaftLog
from replication.storage import MemoryStorage


def ents(lo: int, hi: int, term: int = 1, size: int = 10) -> list[Entry]:
    return [Entry(i, term, 1, b"%d" % term * size) for i in range(lo, hi + 1)]


def persist(st: MemoryStorage, log: RaftLog, truncate_from: int | None = None) -> None:
    """The host's part: write the unstable entries, report them durable."""
    if truncate_from is not None:
        st.truncate(truncate_from)
    st.append(log.unstable)
    last = log.unstable[-1]
    log.stable_to(last.index, last.term)


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


def test_entries_just_made_stable_read_back_as_stored_even_after_a_conflict_replaced_them():
    st = MemoryStorage(Membership(("a", "b", "c")))
    log = RaftLog(st)
    log.append(ents(1, 10))
    persist(st, log)
    assert log.slice(1, 11, None) == st.entries(1, 11, None)
    assert log.slice(3, 11, 25) == ents(3, 4)  # the byte limit as storage applies it
    log.append(ents(11, 12, term=2))  # unstable again, after the stable ones
    assert log.slice(9, 13, None) == ents(9, 10) + ents(11, 12, term=2)
    assert log.slice(10, 13, 15) == ents(10, 10)
    log.append(ents(6, 8, term=3))  # a new leader's suffix replaces stable entries 6..12
    assert log.slice(1, 9, None) == ents(1, 5) + ents(6, 8, term=3)
    persist(st, log, truncate_from=6)
    assert log.slice(1, 9, None) == st.entries(1, 9, None) == ents(1, 5) + ents(6, 8, term=3)


def test_entries_kept_in_memory_are_bounded_and_older_ones_come_from_storage(monkeypatch):
    monkeypatch.setattr(raft_log, "RECENT_BYTES", 10_000)
    st = MemoryStorage(Membership(("a", "b", "c")))
    log = RaftLog(st)
    for lo in range(1, 500, 10):
        log.append(ents(lo, lo + 9, size=100))
        persist(st, log)
        assert log.recent_bytes <= 10_000
    assert log.slice(1, 501, None) == st.entries(1, 501, None)
    assert log.slice(480, 501, None) == ents(480, 500, size=100)

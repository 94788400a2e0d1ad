"""The journal's clock: the voters' time, not one leader's (issue 13, item 6)."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from replication.clock import JournalClock

S = 1_000_000
T = 1_800_000_000 * S
DAY = 86_400 * S
VOTERS = ("n1", "n2", "n3")


def leader_clock(offsets: dict[str, int], mono: float = 100.0) -> JournalClock:
    c = JournalClock("n1")
    for node, off in offsets.items():
        c.observe(node, T + off, mono)
    return c


def test_a_leader_a_day_ahead_stamps_the_followers_time():
    c = leader_clock({"n2": 0, "n3": 2_000})
    c.saw_stamp(T - S)
    assert c.stamp(VOTERS, T + DAY, 100.0) == T + 2_000  # the median, not a day ahead: no session expires
    assert c.outliers(VOTERS, T + DAY, 100.0) == {"n1": DAY - 2_000}


def test_a_leader_a_day_behind_does_not_freeze_the_journal_time():
    c = leader_clock({"n2": 0, "n3": 1_000})
    c.saw_stamp(T - S)
    first = c.stamp(VOTERS, T - DAY, 100.0)
    later = c.stamp(VOTERS, T - DAY + 5 * S, 105.0)  # five seconds on, by the monotonic clock
    assert first == T and later == T + 5 * S


def test_readings_are_carried_forward_by_the_monotonic_clock():
    c = JournalClock("n1")
    c.observe("n2", T, 10.0)
    c.observe("n3", T, 10.0)
    assert c.stamp(VOTERS, T + 3 * S, 13.0) == T + 3 * S


def test_without_a_majority_of_readings_the_time_stands_still():
    c = JournalClock("n1")
    c.saw_stamp(T)
    assert c.stamp(VOTERS, T + DAY, 50.0) == T  # a new leader that heard from nobody yet
    c.observe("n2", T + 2 * S, 50.0)
    assert c.stamp(VOTERS, T + DAY, 50.0) == T + 2 * S  # n1 and n2: the lower one... of two
    assert JournalClock("n1").stamp(VOTERS, T, 0.0) == T  # a new cluster starts from its leader's clock


def test_one_voter_stamps_its_own_clock():
    c = JournalClock("solo")
    assert c.stamp(("solo",), T, 0.0) == T
    assert c.stamp(("solo",), T - DAY, 1.0) == T  # and never goes back


@given(good=st.lists(st.integers(-S // 10, S // 10), min_size=3, max_size=5),
       bad=st.lists(st.integers(-10 * DAY, 10 * DAY), min_size=0, max_size=2),
       leader_bad=st.booleans())
def test_a_minority_of_wrong_clocks_cannot_move_the_stamp_outside_the_good_ones(good, bad, leader_bad):
    bad = bad[: len(good) - 1]  # f wrong clocks among at least 2f + 1 voters
    clocks = ([*bad, *good] if leader_bad and bad else [*good, *bad])
    ids = tuple(f"n{i}" for i in range(len(clocks)))
    c = JournalClock(ids[0])
    for node, off in zip(ids[1:], clocks[1:]):
        c.observe(node, T + off, 7.0)
    stamp = c.stamp(ids, T + clocks[0], 7.0)
    assert T + min(good) <= stamp <= T + max(good)


def test_a_reading_delayed_on_the_way_does_not_make_a_good_clock_look_wrong():
    """A heartbeat answer that a lossy link held up for 0.8 s (TCP retransmissions) carries
    a wall clock reading 0.8 s old: the clock is right, the link was slow. The estimate
    keeps the least delayed of the recent readings, so the operator is not told to fix NTP."""
    c = JournalClock("n1")
    c.observe("n2", T, 10.0)                 # on time
    c.observe("n3", T, 10.0)
    c.observe("n2", T + S, 11.8)             # n2 read its clock at 11.0; heard at 11.8
    assert c.outliers(VOTERS, T + 2 * S, 12.0) == {}
    assert c.stamp(VOTERS, T + 2 * S, 12.0) == T + 2 * S


def test_a_clock_that_really_jumps_is_still_seen():
    c = JournalClock("n1")
    c.observe("n2", T, 10.0)
    c.observe("n3", T, 10.0)
    c.observe("n2", T + 1 * S + DAY, 11.0)    # set a day ahead
    assert c.outliers(VOTERS, T + 1 * S, 11.0) == {"n2": DAY}
    c = JournalClock("n1")
    c.observe("n2", T, 10.0)
    c.observe("n3", T, 10.0)
    for k in range(1, 3):                      # set a day behind: not a delay on the way, seen at once
        c.observe("n2", T + k * S - DAY, 10.0 + k)
        c.observe("n3", T + k * S, 10.0 + k)
    assert c.outliers(VOTERS, T + 3 * S, 13.0) == {"n2": -DAY}


def test_a_clock_set_back_a_little_is_seen_once_its_older_readings_age_out():
    """Set back by 1 s, a clock looks like a slow link at first: named once the readings
    from before the step are older than the window."""
    c = JournalClock("n1")
    c.observe("n3", T, 10.0)
    for k in range(0, 30):
        c.observe("n2", T + k * S - (S if k >= 5 else 0), 10.0 + k)   # one second back from k = 5
        if k == 12:
            assert c.outliers(VOTERS, T + k * S, 10.0 + k) == {}
    assert c.outliers(VOTERS, T + 29 * S, 39.0) == {"n2": -S}

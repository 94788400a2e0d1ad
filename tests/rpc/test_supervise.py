"""The supervisor of `grid up` and `cluster up`: when a dead node starts again, and what
the operator is told (the processes themselves: tests/app/test_grid.py)."""
from __future__ import annotations

from rpc.localcluster import QUICK_EXIT, RESTART_MAX_DELAY, Restarts, exit_reason


def test_a_node_that_keeps_exiting_soon_after_its_start_waits_twice_as_long_each_time():
    r = Restarts(3.0, now=0.0)
    assert r.died(1000.0) == 3.0  # it ran a long time: restarted as a PC reboots
    waits, now = [], 1003.0
    for _ in range(7):
        r.restarted(now)
        now += 0.5  # exits at once: a bad config, its data missing or in use
        waits.append(r.died(now))
        now += waits[-1]
    assert waits == [6.0, 12.0, 24.0, 48.0, RESTART_MAX_DELAY, RESTART_MAX_DELAY, RESTART_MAX_DELAY]
    r.restarted(now)
    assert r.died(now + QUICK_EXIT + 1) == 3.0  # the cause fixed, it ran: back to the first wait
    r.restarted(now)
    assert r.died(now + 0.5, code=-9) == 3.0  # killed from outside, however soon: not its fault
    r.restarted(now)
    assert r.died(now + 0.5, code=0) == 3.0  # asked to stop (SIGTERM): the same


def test_how_a_node_ended_is_said_with_its_last_line():
    assert exit_reason(-9, "anything") == "killed by signal 9"
    assert exit_reason(1, "INFO starting\nerror: n2.toml: node 'n2' has no data\n\n") == \
        "exit code 1: error: n2.toml: node 'n2' has no data"
    assert exit_reason(3, "") == "exit code 3"
    assert len(exit_reason(1, "x" * 5000)) < 320


def test_a_node_refused_for_days_keeps_the_longest_wait_and_zero_still_backs_off():
    r = Restarts(3.0, now=0.0)
    now = 0.0
    for _ in range(5000):  # 2 ** 5000 would overflow a float
        r.restarted(now)
        now += r.died(now + 0.1) + 0.1
    r.restarted(now)
    assert r.died(now + 0.1) == RESTART_MAX_DELAY
    z = Restarts(0.0, now=0.0)
    assert z.died(100.0) == 0.0  # asked for: at once after a long run
    z.restarted(100.0)
    assert z.died(100.1) == 2.0  # but a node that cannot start does not spin


def test_the_reason_comes_from_the_end_of_a_long_log(tmp_path):
    from rpc.localcluster import LocalCluster

    with open(tmp_path / "n1.log", "w") as f:
        f.write("INFO something happened\n" * 200_000)  # 5 MB: the supervisor reads its end only
        f.write("error: n1.toml: node 'n1' has no data\n")
    c = LocalCluster.__new__(LocalCluster)  # only its directory: no nodes
    c.dir = str(tmp_path)
    assert exit_reason(1, c.tail("n1", 5)) == "exit code 1: error: n1.toml: node 'n1' has no data"
    assert c.tail("n9") == ""  # no log (yet)

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

"""A leader on a slow disk hands leadership to a voter that keeps up (issue 14, item 7):
the followers commit without it, but it applies and answers only what its own disk
holds, so every client waits for its slowest fsync."""
from __future__ import annotations

import threading
import time

from replication.errors import ProposalRefused
from replication.journal_storage import JournalStorage
from tests.prevalence.domain import Add, Get
from tests.replication.test_node import Cluster


def test_a_leader_whose_disk_lags_the_followers_hands_leadership_over(tmp_path, monkeypatch):
    c = Cluster(tmp_path)
    try:
        slow = c.leader()
        original = JournalStorage.sync

        def sync(self):
            if self is slow.storage:
                time.sleep(0.3)  # about 3 fsyncs per second: a dying disk
            original(self)

        monkeypatch.setattr(JournalStorage, "sync", sync)
        acked = 0
        stop = threading.Event()

        def writer():
            nonlocal acked
            while not stop.is_set():
                leader = next((n for n in c.net.nodes.values() if n.is_leader), None)
                if leader is None:
                    time.sleep(0.01)
                    continue
                try:
                    leader.execute(Add("x", 1), timeout=5)
                    acked += 1
                except (ProposalRefused, TimeoutError):
                    pass

        threads = [threading.Thread(target=writer) for _ in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 6
        while slow.is_leader and time.monotonic() < deadline:
            time.sleep(0.05)
        moved = not slow.is_leader
        stop.set()
        for t in threads:
            t.join(10)
        assert moved, "the leader on a slow disk kept leadership"
        new = c.leader()
        assert new is not slow
        assert new.query(Get("x")) >= acked  # nothing acknowledged lost (a timed-out one may apply too)
    finally:
        c.stop()

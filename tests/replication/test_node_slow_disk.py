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


def test_when_every_disk_is_slow_a_leader_is_elected_and_keeps_serving(tmp_path, monkeypatch):
    """Three PCs on the same cheap SD card: every fsync takes 0.4 s, longer than the
    election timeout (0.25..0.5 s). A vote's round trip holds two fsyncs (the candidate's
    term and vote, then the voter's), so each candidate gave up before its votes came
    back and started over in a higher term: no leader for as long as it lasted (measured
    with node processes: 4 commands in 15 s, terms climbing to 39). And a leader whose
    disk lagged the commit by one fsync handed over to followers just as slow, an
    election each time. Now the slow disks only slow the commits."""
    from prevalence import fs

    original, original_dir = fs.OsFileSystem.fsync, fs.OsFileSystem.fsync_dir

    def slow_fsync(self, fd):
        time.sleep(0.4)
        original(self, fd)

    def slow_fsync_dir(self, path):
        time.sleep(0.4)
        original_dir(self, path)

    c = Cluster(tmp_path)
    try:
        leader = c.leader()
        leader.execute(Add("x", 1), timeout=5)
        monkeypatch.setattr(fs.OsFileSystem, "fsync", slow_fsync)
        monkeypatch.setattr(fs.OsFileSystem, "fsync_dir", slow_fsync_dir)
        c.kill(leader.id)  # an election on the slow disks
        c.start(leader.id)
        acked, terms = 1, set()
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline and acked < 5:
            now = next((n for n in c.net.nodes.values() if n.is_leader), None)
            if now is None:
                time.sleep(0.05)
                continue
            terms.add(now.core.term)
            try:
                now.execute(Add("x", 1), timeout=5)
                acked += 1
            except (ProposalRefused, TimeoutError):
                pass
        assert acked >= 5, f"{acked - 1} commands in 12 s on slow disks; leaders' terms seen {sorted(terms)}"
        assert max(terms) <= 6, f"elections again and again on slow disks: terms {sorted(terms)}"
    finally:
        monkeypatch.undo()
        c.stop()


def test_the_election_slack_follows_the_disk_and_is_given_back():
    """Twice the slowest recent write, in ticks; none for a disk faster than a tick;
    bounded; forgotten once the disk has been fast for SLOW_WRITE_MEMORY seconds."""
    from replication.runtime.disk_pace import MAX_SLACK, SLOW_WRITE_MEMORY, DiskPace

    pace = DiskPace("n1", 0.025, 10)
    assert pace.observe(0.004, 0.0) == 0
    assert pace.observe(0.5, 1.0) == 40  # 1 s: its own fsync and a voter's like it
    assert pace.observe(0.01, 2.0) == 40  # one fast write does not make the disk fast
    assert pace.observe(60.0, 3.0) == round(MAX_SLACK / 0.025)  # a stall: bounded
    assert pace.observe(0.0, 3.0 + SLOW_WRITE_MEMORY + 1) == 0

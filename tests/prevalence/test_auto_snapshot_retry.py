"""An automatic snapshot that fails is tried again at the next threshold, not at every
transaction: each attempt serializes the whole root under the read lock."""
from __future__ import annotations

from dataclasses import dataclass

import prevalence


class Unpicklable:
    attempts = 0

    def __init__(self) -> None:
        self.n = 0

    def __reduce_ex__(self, protocol):
        type(self).attempts += 1
        raise TypeError("this root cannot be pickled")


@dataclass(frozen=True)
class Bump(prevalence.Transaction, name="autosnap.Bump"):
    def execute(self, root: Unpicklable, ctx: prevalence.Context) -> None:
        root.n += 1


def test_a_failing_automatic_snapshot_waits_for_the_next_threshold(tmp_path):
    """Seen: snapshot_every=5 and a root pickle refuses: 26 attempts in 30 transactions,
    each a full serialization (pickle, then dill) holding off writers; the counters were
    reset only after a successful capture."""
    with prevalence.open(tmp_path, Unpicklable, snapshot_every=5) as db:
        Unpicklable.attempts = 0
        for _ in range(30):
            db.execute(Bump())
            t = db._snapshot_thread
            if t is not None:
                t.join()  # one attempt at a time, so the count does not depend on timing
        assert isinstance(db.snapshot_error, prevalence.SnapshotError)
        assert Unpicklable.attempts == 6 * 2, Unpicklable.attempts  # pickle, then dill, per attempt


class Plain:
    def __init__(self) -> None:
        self.n = 0


@dataclass(frozen=True)
class BumpPlain(prevalence.Transaction, name="autosnap.BumpPlain"):
    def execute(self, root: Plain, ctx: prevalence.Context) -> None:
        root.n += 1


def test_execute_does_not_wait_for_a_snapshot_under_way(tmp_path, monkeypatch):
    """Seen: while db.snapshot() wrote a large root in another thread, each execute that
    crossed snapshot_every waited for that whole snapshot: starting the automatic one took
    the lock the running snapshot held."""
    import threading
    import time

    from prevalence import snapshots

    release = threading.Event()
    real = snapshots.SnapshotStore.write

    def slow_write(self, meta, body, **kw):
        release.wait(10)  # a snapshot taking long to reach the disk
        return real(self, meta, body, **kw)

    monkeypatch.setattr(snapshots.SnapshotStore, "write", slow_write)
    with prevalence.open(tmp_path, Plain, snapshot_every=3) as db:
        manual = threading.Thread(target=db.snapshot)
        manual.start()
        time.sleep(0.2)
        t0 = time.monotonic()
        for _ in range(7):  # crosses the threshold twice
            db.execute(BumpPlain())
        took = time.monotonic() - t0
        release.set()
        manual.join(10)
        assert took < 2, f"execute waited {took:.1f} s for the snapshot under way"

"""The engine's contract as a user sees it."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import timezone

import attrs
import pytest

import prevalence
from tests.prevalence.domain import Add, Boom, Get, HalfThenFail, Put, Rejected, Snapshot, Stamp, Store


def test_execute_query_reopen(tmp_path):
    with prevalence.open(tmp_path, Store) as db:
        assert db.execute(Put("a", 1)) == 1
        assert db.execute(Add("a", 4)) == 5
        assert db.query(Get("a")) == 5
        assert db.last_index == 2
    with prevalence.open(tmp_path, Store) as db:
        assert db.query(Get("a")) == 5
        assert db.last_index == 2
        assert db.execute(Add("a", 1)) == 6


def test_check_rejects_and_journals_nothing(tmp_path):
    with prevalence.open(tmp_path, Store) as db:
        db.execute(Put("a", 1))
        with pytest.raises(Rejected):
            db.execute(Add("a", -5))
        assert db.last_index == 1
        assert db.journal.last_index == 1
    with prevalence.open(tmp_path, Store) as db:
        assert db.query(Get("a")) == 1
        assert db.last_index == 1


def test_exception_from_execute_reaches_caller_and_partial_change_replays(tmp_path):
    with prevalence.open(tmp_path, Store) as db:
        with pytest.raises(Boom, match="after touching k"):
            db.execute(HalfThenFail("k"))
        assert db.query(Get("k")) == 1  # the change made before raising stays
        assert db.last_index == 1
    with prevalence.open(tmp_path, Store) as db:
        assert db.query(Get("k")) == 1


def test_context_is_identical_on_replay_and_time_never_decreases(tmp_path):
    times = iter([5_000_000, 4_000_000, 9_000_000])  # the wall clock steps back once
    with prevalence.open(tmp_path, Store, clock=lambda: next(times)) as db:
        results = [db.execute(Stamp(t)) for t in "abc"]
        live = db.query(Snapshot())
    assert [r[1] for r in results] == [1, 2, 3]
    stamps = [r[2] for r in results]
    assert stamps == sorted(stamps)
    assert stamps[0] == stamps[1]  # the step back was clamped
    assert results[0][3] != results[1][3]  # ctx.random differs per entry
    with prevalence.open(tmp_path, Store) as db:
        assert db.query(Snapshot()) == live


def test_context_now_is_utc_aware():
    ctx = prevalence.Context(7, 1_700_000_000_123_456)
    assert ctx.now.tzinfo is timezone.utc
    assert ctx.now.microsecond == 123_456
    assert ctx.random.random() == prevalence.Context(7, 1_700_000_000_123_456).random.random()
    assert ctx.index == 7


def test_transaction_must_be_a_frozen_dataclass_or_attrs(tmp_path):
    class Plain(prevalence.Transaction, name="test.Plain"):
        def execute(self, root, ctx):
            return None

    @dataclass
    class Mutable(prevalence.Transaction, name="test.Mutable"):
        x: int = 0

        def execute(self, root, ctx):
            return None

    @attrs.frozen
    class ViaAttrs(prevalence.Transaction, name="test.ViaAttrs"):
        key: str

        def execute(self, root, ctx):
            root.values[self.key] = 42
            return 42

    with prevalence.open(tmp_path, Store) as db:
        with pytest.raises(prevalence.PrevalenceError, match="must be a dataclass or an attrs class"):
            db.execute(Plain())
        with pytest.raises(prevalence.PrevalenceError, match="must be frozen"):
            db.execute(Mutable())
        assert db.execute(ViaAttrs("z")) == 42
        assert db.last_index == 1


def test_not_a_transaction_is_refused(tmp_path):
    with prevalence.open(tmp_path, Store) as db:
        with pytest.raises(prevalence.PrevalenceError, match="neither a prevalence.Transaction"):
            db.execute("hello")
        assert db.last_index == 0


def test_directory_is_locked_against_a_second_engine(tmp_path):
    with prevalence.open(tmp_path, Store):
        with pytest.raises(prevalence.LockedError, match="in use by another process"):
            prevalence.open(tmp_path, Store)
    with prevalence.open(tmp_path, Store):
        pass


def test_closed_engine_refuses_work(tmp_path):
    db = prevalence.open(tmp_path, Store)
    db.close()
    db.close()
    with pytest.raises(prevalence.ClosedError):
        db.execute(Put("a", 1))
    with pytest.raises(prevalence.ClosedError):
        db.query(Get("a"))


@pytest.mark.parametrize("policy", ["always", "batch", "never"])
def test_fsync_policies_keep_acknowledged_work_across_reopen(tmp_path, policy):
    with prevalence.open(tmp_path, Store, fsync=policy) as db:
        for i in range(50):
            db.execute(Add("n", 1))
    with prevalence.open(tmp_path, Store) as db:
        assert db.query(Get("n")) == 50


def test_unknown_fsync_policy(tmp_path):
    with pytest.raises(prevalence.PrevalenceError, match="fsync must be one of"):
        prevalence.open(tmp_path, Store, fsync="sometimes")


def test_point_in_time_view_is_read_only_and_touches_nothing(tmp_path):
    with prevalence.open(tmp_path, Store, segment_bytes=4096) as db:
        for i in range(1, 201):
            db.execute(Put("k", i))
            if i == 120:
                db.snapshot()
    before = sorted((p.name, p.stat().st_size) for p in tmp_path.rglob("*") if p.is_file())
    with prevalence.state_at(tmp_path, Store, 150) as view:
        assert view.query(Get("k")) == 150
        assert view.last_index == 150
        with pytest.raises(prevalence.PrevalenceError, match="read-only"):
            view.execute(Put("k", 0))
    with prevalence.state_at(tmp_path, Store) as view:
        assert view.query(Get("k")) == 200
    with prevalence.state_at(tmp_path, Store, 121) as view:
        assert view.query(Get("k")) == 121
    with pytest.raises(prevalence.SnapshotError, match="as of index 1: the journal starts at index"):
        prevalence.state_at(tmp_path, Store, 1)  # compacted away, and no snapshot that old
    with pytest.raises(prevalence.PrevalenceError, match="beyond the end"):
        prevalence.state_at(tmp_path, Store, 999)
    after = sorted((p.name, p.stat().st_size) for p in tmp_path.rglob("*") if p.is_file())
    assert before == after


def test_many_threads_final_state_equals_serial_replay(tmp_path):
    results: dict[int, list] = {}

    def writer(t: int) -> None:
        out = results.setdefault(t, [])
        for i in range(60):
            out.append(db.execute(Add(f"k{t % 3}", 1)))
            db.execute(Stamp(f"{t}-{i}"))
            if i % 7 == 0:
                db.query(Snapshot())

    with prevalence.open(tmp_path, Store, fsync="always") as db:
        threads = [threading.Thread(target=writer, args=(t,)) for t in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        live = db.query(Snapshot())
        assert db.last_index == 12 * 120
    values, log = live
    assert values == {"k0": 240, "k1": 240, "k2": 240}
    for t, seen in results.items():
        assert seen == sorted(seen)  # each thread sees its own writes in order
    assert [entry[1] for entry in log] == sorted(entry[1] for entry in log)  # ctx.index increases
    with prevalence.open(tmp_path, Store) as db:
        assert db.query(Snapshot()) == live


def test_query_runs_alongside_queries_but_never_inside_a_transaction(tmp_path):
    inside = threading.Event()
    release = threading.Event()

    @dataclass(frozen=True)
    class Slow(prevalence.Transaction, name="test.Slow"):
        def execute(self, root, ctx):
            inside.set()
            release.wait(5)
            root.values["slow"] = 1

    with prevalence.open(tmp_path, Store) as db:
        t = threading.Thread(target=db.execute, args=(Slow(),))
        t.start()
        inside.wait(5)
        seen = []
        q = threading.Thread(target=lambda: seen.append(db.query(Get("slow"))))
        q.start()
        q.join(0.2)
        assert q.is_alive()  # blocked while the transaction runs
        release.set()
        t.join()
        q.join()
        assert seen == [1]


def test_concurrent_batches_keep_each_callers_own_outcome(tmp_path):
    """Rejections, failures and results all reach the right caller when calls are combined."""
    outcomes: dict[tuple[int, int], object] = {}

    def caller(t: int) -> None:
        for i in range(40):
            kind = (t + i) % 3
            tx = Add(f"t{t}", 1) if kind == 0 else Add(f"t{t}", -1000) if kind == 1 else HalfThenFail(f"h{t}")
            try:
                outcomes[(t, i)] = db.execute(tx)
            except (Rejected, Boom) as exc:
                outcomes[(t, i)] = type(exc)

    with prevalence.open(tmp_path, Store) as db:
        threads = [threading.Thread(target=caller, args=(t,)) for t in range(16)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        live = db.query(Snapshot())
        last = db.last_index
    for (t, i), got in outcomes.items():
        kind = (t + i) % 3
        expected_type = int if kind == 0 else Rejected if kind == 1 else Boom
        assert got is expected_type or isinstance(got, expected_type), (t, i, got)
    adds = [[v for (tt, i), v in sorted(outcomes.items()) if tt == t and isinstance(v, int)] for t in range(16)]
    assert all(a == list(range(1, len(a) + 1)) for a in adds)  # each caller got its own running total
    assert last == sum(1 for (t, i) in outcomes if (t + i) % 3 != 1)  # rejected ones journaled nothing
    with prevalence.open(tmp_path, Store) as db:
        assert db.query(Snapshot()) == live


def test_disk_failure_halts_the_engine_and_loses_nothing_acknowledged(tmp_path, monkeypatch):
    import os

    db = prevalence.open(tmp_path, Store)
    db.execute(Put("a", 1))
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(5, "Input/output error")))
    with pytest.raises(prevalence.EngineHaltedError, match="Input/output error"):
        db.execute(Put("a", 2))
    monkeypatch.setattr(os, "write", real_write)
    with pytest.raises(prevalence.EngineHaltedError, match="reopen"):
        db.execute(Put("a", 3))
    with pytest.raises(prevalence.EngineHaltedError):
        db.query(Get("a"))  # it would show the unacknowledged 2
    db.close()
    with prevalence.open(tmp_path, Store) as db:
        assert db.query(Get("a")) == 1
        assert db.execute(Put("a", 4)) == 4


def test_replicated_apply_checks_and_clamps_time_deterministically():
    """Entries checked only when applied (the Raft path) and stamped by leaders with clocks apart."""
    from prevalence.codec import CODEC
    from prevalence.state import StateMachine, encode_command

    def entry(index, ts, tx):
        return prevalence.Entry(index, 1, prevalence.EntryKind.COMMAND, encode_command(ts, CODEC.to_plain(tx)))

    log = [entry(1, 2_000, Stamp("a")), entry(2, 1_000, Stamp("b")), entry(3, 3_000, Add("k", -5)), entry(4, 3_000, Add("k", 2))]
    runs = []
    for _ in range(2):
        sm = StateMachine(Store())
        outcomes = [sm.apply_entry(e, check=True) for e in log]
        runs.append((sm.root.state(), sm.applied_index))
    assert runs[0] == runs[1]
    (values, stamps), applied = runs[0]
    assert applied == 4 and values == {"k": 2}
    assert isinstance(outcomes[2][1], Rejected)  # rejected on apply: nothing changed
    assert stamps[0][2] == stamps[1][2]  # the second leader's earlier clock was clamped

"""Tests for replication.linearizability (the history checker used by the sim and chaos tests)."""
from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from replication.linearizability import (
    CheckResult,
    CounterModel,
    KeyValueModel,
    LinearizabilityTimeout,
    Operation,
    RegisterModel,
    check_history,
    partition,
)

ROOT = Path(__file__).resolve().parents[2]


def op(client, call, ret, name, arg=None, result=None):
    return Operation(client, call, ret, name, arg, result)


def ok(model, history, **kw) -> bool:
    res = check_history(model, history, **kw)
    assert isinstance(res, CheckResult)
    assert (res.explanation == "") == res.ok
    return res.ok


# --------------------------------------------------------------------- register

def test_empty_and_only_unknown_histories_are_linearizable():
    assert ok(RegisterModel(), [])
    assert ok(RegisterModel(), [op("a", 0, None, "write", 1), op("b", 1, None, "read", None, 7)])


def test_sequential_write_then_read():
    h = [op("a", 0, 1, "write", 1), op("b", 2, 3, "read", None, 1)]
    assert ok(RegisterModel(), h)


def test_stale_read_after_completed_write_is_rejected():
    h = [op("a", 0, 1, "write", 1), op("a", 2, 3, "write", 2), op("b", 4, 5, "read", None, 1)]
    res = check_history(RegisterModel(), h)
    assert not res.ok
    assert "Not linearizable" in res.explanation
    assert "write(1)" in res.explanation and "write(2)" in res.explanation
    assert "* b: read(None) -> 1" in res.explanation  # the read that cannot be explained
    assert "2 of 3 operations" in res.explanation


def test_read_concurrent_with_write_may_see_either_value():
    for seen in (None, 1):
        h = [op("a", 0, 10, "write", 1), op("b", 2, 3, "read", None, seen)]
        assert ok(RegisterModel(), h), seen
    assert not ok(RegisterModel(), [op("a", 0, 10, "write", 1), op("b", 2, 3, "read", None, 5)])


def test_two_reads_seeing_values_in_impossible_order():
    base = [op("a", 0, 1, "write", 1), op("a", 2, 10, "write", 2)]
    bad = base + [op("b", 3, 4, "read", None, 2), op("c", 5, 6, "read", None, 1)]
    assert not ok(RegisterModel(), bad)
    # The same reads overlapping each other are fine (c linearizes first).
    fine = base + [op("b", 3, 6, "read", None, 2), op("c", 5, 7, "read", None, 1)]
    assert ok(RegisterModel(), fine)


def test_failed_write_may_take_effect_later():
    h = [
        op("a", 0, 1, "write", 1),
        op("a", 2, None, "write", 2),  # timed out
        op("b", 3, 4, "read", None, 1),
        op("b", 50, 51, "read", None, 2),
        op("c", 60, 61, "read", None, 2),
    ]
    assert ok(RegisterModel(), h)


def test_failed_write_may_never_take_effect():
    h = [op("a", 0, 1, "write", 1), op("a", 2, None, "write", 2),
         op("b", 3, 4, "read", None, 1), op("b", 50, 51, "read", None, 1)]
    assert ok(RegisterModel(), h)


def test_failed_write_cannot_take_effect_before_its_call():
    h = [op("a", 0, 1, "write", 1), op("b", 2, 3, "read", None, 2), op("a", 5, None, "write", 2)]
    assert not ok(RegisterModel(), h)


def test_failed_write_cannot_take_effect_then_vanish():
    h = [op("a", 0, 1, "write", 1), op("a", 2, None, "write", 2),
         op("b", 3, 4, "read", None, 2), op("b", 5, 6, "read", None, 1)]
    assert not ok(RegisterModel(), h)


def test_touching_intervals_count_as_concurrent():
    assert ok(RegisterModel(), [op("a", 0, 1, "write", 1), op("b", 1, 2, "read", None, None)])
    assert not ok(RegisterModel(), [op("a", 0, 1, "write", 1), op("b", 1.5, 2, "read", None, None)])


def test_cas():
    h = [op("a", 0, 1, "write", 1), op("b", 2, 3, "cas", (1, 5), True),
         op("c", 4, 5, "cas", (1, 6), False), op("a", 6, 7, "read", None, 5)]
    assert ok(RegisterModel(), h)
    assert not ok(RegisterModel(), h[:2] + [op("c", 4, 5, "cas", (1, 6), True)])
    # an unknown-outcome cas may have swapped
    h2 = [op("a", 0, 1, "write", 1), op("b", 2, None, "cas", (1, 9), None), op("c", 5, 6, "read", None, 9)]
    assert ok(RegisterModel(), h2)
    assert not ok(RegisterModel(), [h2[0], op("b", 2, None, "cas", (3, 9)), h2[2]])


def test_invalid_interval_and_unknown_op_raise():
    with pytest.raises(ValueError):
        check_history(RegisterModel(), [op("a", 5, 1, "write", 1)])
    with pytest.raises(ValueError):
        check_history(RegisterModel(), [op("a", 0, 1, "frobnicate", 1)])


# ---------------------------------------------------------------------- counter

def test_counter_concurrent_adds_and_partial_totals():
    adds = [op("a", 0, 10, "add", 1, 1), op("b", 0, 10, "add", 2, 3)]  # a's add first, then b's
    for seen in (0, 1, 3):
        assert ok(CounterModel(), adds + [op("c", 1, 2, "read", None, seen)]), seen
    for seen in (2, 4):  # 2 would need b's add before a's, contradicting their results
        assert not ok(CounterModel(), adds + [op("c", 1, 2, "read", None, seen)]), seen
    # with unobserved add results, b may go first
    assert ok(CounterModel(), [op("a", 0, 10, "add", 1), op("b", 0, 10, "add", 2),
                               op("c", 1, 2, "read", None, 2)])


def test_counter_add_results_must_match_total():
    assert not ok(CounterModel(), [op("a", 0, 1, "add", 1, 1), op("b", 2, 3, "add", 1, 1)])
    assert ok(CounterModel(), [op("a", 0, 1, "add", 1, None), op("b", 2, 3, "add", 1, 2)])


def test_counter_totals_cannot_go_backwards():
    h = [op("a", 0, 10, "add", 5, None), op("b", 1, 2, "read", None, 5), op("c", 3, 4, "read", None, 0)]
    assert not ok(CounterModel(), h)


def test_counter_unknown_add_optional():
    base = [op("a", 0, None, "add", 5), op("b", 1, 2, "add", 1, 1)]
    assert ok(CounterModel(), base + [op("c", 3, 4, "read", None, 1)])
    assert ok(CounterModel(), base + [op("c", 3, 4, "read", None, 6)])
    assert not ok(CounterModel(), base + [op("c", 3, 4, "read", None, 5)])


# -------------------------------------------------------------------- key-value

def test_kv_partition_groups_by_key_in_first_seen_order():
    h = [op("a", 0, 1, "put", ("y", 1)), op("b", 0, 1, "get", "x", None),
         op("c", 2, 3, "add", ("y", 2), 3), op("d", 2, 3, "get", "y", 3)]
    parts = partition(KeyValueModel(), h)
    assert list(parts) == ["y", "x"]
    assert parts["y"] == [h[0], h[2], h[3]] and parts["x"] == [h[1]]
    assert KeyValueModel().partition(h) == parts
    assert ok(KeyValueModel(), h)


def test_kv_violation_names_the_key():
    h = [op("a", 0, 1, "put", ("x", 1)), op("a", 2, 3, "put", ("y", 1)),
         op("b", 4, 5, "get", "x", 1), op("b", 6, 7, "get", "y", None)]
    res = check_history(KeyValueModel(), h)
    assert not res.ok
    assert "partition 'y'" in res.explanation


def test_kv_add_and_unknown_put():
    h = [op("a", 0, 1, "add", ("k", 2), 2), op("b", 2, None, "put", ("k", 10)),
         op("a", 3, 4, "add", ("k", 1), 11), op("c", 5, 6, "get", "k", 11)]
    assert ok(KeyValueModel(), h)
    assert not ok(KeyValueModel(), h[:3] + [op("c", 5, 6, "get", "k", 3)])


def test_check_history_uses_partition_key():
    calls = []

    class Spy(KeyValueModel):
        def partition_key(self, name, arg):
            calls.append(name)
            return super().partition_key(name, arg)

        def init(self):
            calls.append("init")
            return super().init()

    h = [op("a", 0, 1, "put", (k, 1)) for k in "abc"]
    assert ok(Spy(), h)
    assert calls.count("put") == 3 and calls.count("init") == 3


class _Unpartitioned:
    """KeyValueModel without partition_key: checked as a single history."""

    def __init__(self):
        self._m = KeyValueModel()

    def init(self):
        return self._m.init()

    def step(self, *a):
        return self._m.step(*a)

    def step_unknown(self, *a):
        return self._m.step_unknown(*a)


# ------------------------------------------------------------------ misc / perf

def test_timeout_raises_rather_than_reporting_a_violation():
    # 16 concurrent unknown-outcome writes and a read that nothing explains: the
    # search has to refute ~2^16 * 17 configurations (seconds) to say "violation".
    h = [op(f"w{i}", 0, None, "write", i) for i in range(16)]
    h += [op("r", 1, 2, "read", None, "never written")]
    assert issubclass(LinearizabilityTimeout, Exception)
    with pytest.raises(LinearizabilityTimeout):
        check_history(RegisterModel(), h, timeout=0.05)


def test_a_step_budget_gives_the_same_answer_on_any_machine():
    h = [op(f"w{i}", 0, None, "write", i) for i in range(16)]
    h += [op("r", 1, 2, "read", None, "never written")]
    with pytest.raises(LinearizabilityTimeout, match="budget of 5000 steps"):
        check_history(RegisterModel(), h, timeout=None, max_steps=5000)
    per_key = [op("a", 0, 1, "put", ("k", 1)), op("b", 2, 3, "get", "k", 1)]
    one = check_history(KeyValueModel(), per_key, timeout=None, max_steps=5000)
    two_keys = per_key + [op("a", 4, 5, "put", ("j", 1)), op("b", 6, 7, "get", "j", 1)]
    both = check_history(KeyValueModel(), two_keys, timeout=None, max_steps=5000)
    assert one.ok and both.ok and both.steps == 2 * one.steps
    with pytest.raises(LinearizabilityTimeout):  # the budget is for all partitions together
        check_history(KeyValueModel(), two_keys, timeout=None, max_steps=both.steps - 1)


def test_timeout_none_means_no_limit():
    assert ok(RegisterModel(), [op("a", 0, 1, "write", 1)], timeout=None)


_DETERMINISM_SCRIPT = textwrap.dedent("""
    from replication.linearizability import KeyValueModel, Operation, RegisterModel, check_history
    h = [Operation(c, t, t + 3, "put", (k, c)) for t, (c, k) in enumerate(
        [("alice", "k1"), ("bob", "k2"), ("carol", "k1"), ("dave", "k3"), ("erin", "k2")])]
    h += [Operation("zed", 10, 11, "get", "k1", "alice"), Operation("yan", 10, 11, "get", "k2", "nobody"),
          Operation("xi", 10, 11, "get", "k3", "nobody")]  # two bad keys: which one is reported?
    print(check_history(KeyValueModel(), h).explanation)
    r = [Operation(c, 0, 5, "write", c) for c in ["p", "q", "r", "s", "t"]]
    r += [Operation("x", 6, 7, "read", None, "p"), Operation("y", 8, 9, "read", None, "q")]
    print(check_history(RegisterModel(), r).explanation)
""")


def test_output_does_not_depend_on_hash_seed():
    outs = set()
    for seed in ("0", "1", "2", "3", "7", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        proc = subprocess.run([sys.executable, "-c", _DETERMINISM_SCRIPT], env=env, cwd=ROOT,
                              capture_output=True, text=True, check=True)
        outs.add(proc.stdout)
    assert len(outs) == 1
    assert "Not linearizable" in outs.pop()


# ------------------------------------------------- generated histories (hypothesis)

def build_history(model, draws, n_clients):
    """A linearizable-by-construction history.

    Each client issues operations one after another (random durations and gaps);
    every operation takes effect at a random instant inside its interval; results
    come from applying the model in the order of those instants.  `draws` yields
    (name, arg, duration, gap, fraction, unknown) per operation."""
    clock = [0] * n_clients
    timed = []
    for k, (name, arg, duration, gap, frac, unknown) in enumerate(draws):
        c = k % n_clients
        call = clock[c] + gap
        ret = call + duration
        clock[c] = ret + 1
        timed.append((call + frac * duration, k, f"c{c}", call, ret, name, arg, unknown))
    timed.sort()
    state, history = model.init(), []
    for _, _, client, call, ret, name, arg, unknown in timed:
        if unknown:  # took effect, but the client never heard back
            state = model.step_unknown(state, name, arg)
            history.append(op(client, call, None, name, arg))
            continue
        result = _observe(model, state, name, arg)
        legal, state = model.step(state, name, arg, result)
        assert legal
        history.append(op(client, call, ret, name, arg, result))
    return history


def _observe(model, state, name, arg):
    if isinstance(model, RegisterModel):
        return state if name == "read" else None
    if isinstance(model, CounterModel):
        return state if name == "read" else state + arg
    if name == "get":
        return dict(state).get(arg)
    if name == "add":
        return (dict(state).get(arg[0]) or 0) + arg[1]
    return None


timing = st.tuples(st.integers(0, 20), st.integers(0, 10), st.sampled_from([0, 0.25, 0.5, 0.75, 1]),
                   st.booleans())
register_ops = st.one_of(st.tuples(st.just("write"), st.integers(0, 4)), st.tuples(st.just("read"), st.none()))
counter_ops = st.one_of(st.tuples(st.just("add"), st.integers(1, 5)), st.tuples(st.just("read"), st.none()))
keys = st.sampled_from(["a", "b", "c"])
kv_ops = st.one_of(st.tuples(st.just("put"), st.tuples(keys, st.integers(0, 4))),
                   st.tuples(st.just("get"), keys),
                   st.tuples(st.just("add"), st.tuples(keys, st.integers(1, 3))))
MODELS = {"register": (RegisterModel, register_ops, "never written"),
          "counter": (CounterModel, counter_ops, -1),
          "kv": (KeyValueModel, kv_ops, "never written")}


@st.composite
def generated(draw, kind):
    model_cls, ops_st, _ = MODELS[kind]
    n_clients = draw(st.integers(1, 6))
    pairs = draw(st.lists(st.tuples(ops_st, timing), min_size=1, max_size=40))
    unknown = draw(st.lists(st.booleans(), min_size=len(pairs), max_size=len(pairs)))
    draws = [(name, arg, d, g, f, u and ukn) for ((name, arg), (d, g, f, ukn)), u in zip(pairs, unknown)]
    return model_cls(), build_history(model_cls(), draws, n_clients)


@pytest.mark.parametrize("kind", sorted(MODELS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_generated_histories_are_linearizable(kind, data):
    model, history = data.draw(generated(kind))
    res = check_history(model, history)
    assert res.ok, res.explanation


@pytest.mark.parametrize("kind", sorted(MODELS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_mutated_read_is_not_linearizable(kind, data):
    model, history = data.draw(generated(kind))
    reads = [i for i, o in enumerate(history) if o.op in ("read", "get") and o.ret is not None]
    assume(reads)
    i = data.draw(st.sampled_from(reads))
    bogus = MODELS[kind][2]
    history[i] = op(history[i].client, history[i].call, history[i].ret, history[i].op, history[i].arg, bogus)
    res = check_history(model, history)
    assert not res.ok
    assert "Not linearizable" in res.explanation


def brute_force(model, history) -> bool:
    """Reference: try every subset of unknown ops and every real-time-respecting order."""
    required = [o for o in history if o.ret is not None]
    optional = [o for o in history if o.ret is None]
    for r in range(len(optional) + 1):
        for extra in itertools.combinations(optional, r):
            for order in itertools.permutations(required + list(extra)):
                if any((b.ret is not None and b.ret < a.call)
                       for x, a in enumerate(order) for b in order[x + 1:]):
                    continue
                state, good = model.init(), True
                for o in order:
                    if o.ret is None:
                        state = model.step_unknown(state, o.op, o.arg)
                    else:
                        good, state = model.step(state, o.op, o.arg, o.result)
                        if not good:
                            break
                if good:
                    return True
    return False


small_register_op = st.builds(
    lambda client, call, dur, unknown, kind, a, b, res: op(
        client, call, None if unknown else call + dur, kind,
        {"write": a, "read": None, "cas": (a, b)}[kind],
        {"write": None, "read": res, "cas": res == a}[kind]),
    st.sampled_from("abc"), st.integers(0, 6), st.integers(0, 4), st.booleans(),
    st.sampled_from(["write", "read", "read", "cas"]), st.sampled_from([None, 1, 2]),
    st.sampled_from([1, 2]), st.sampled_from([None, 1, 2]))


@settings(max_examples=400, deadline=None)
@given(st.lists(small_register_op, max_size=6))
def test_agrees_with_brute_force_on_small_random_histories(history):
    assert check_history(RegisterModel(), history).ok == brute_force(RegisterModel(), history)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.builds(lambda c, t, d, u, kind, n, res: op(
    c, t, None if u else t + d, kind, n if kind == "add" else None, res),
    st.sampled_from("ab"), st.integers(0, 6), st.integers(0, 4), st.booleans(),
    st.sampled_from(["add", "read"]), st.integers(1, 2), st.sampled_from([None, 0, 1, 2, 3])), max_size=6))
def test_counter_agrees_with_brute_force(history):
    assert check_history(CounterModel(), history).ok == brute_force(CounterModel(), history)


def test_unpartitioned_kv_agrees_with_partitioned():
    rnd = random.Random(7)
    for _ in range(30):
        draws = [(*rnd.choice([("put", (rnd.choice("ab"), rnd.randint(0, 2))), ("get", rnd.choice("ab")),
                               ("add", (rnd.choice("ab"), 1))]),
                  rnd.randint(0, 8), rnd.randint(0, 3), rnd.random(), rnd.random() < 0.1) for _ in range(12)]
        h = build_history(KeyValueModel(), draws, 4)
        assert ok(KeyValueModel(), h) and ok(_Unpartitioned(), h)
        gets = [i for i, o in enumerate(h) if o.op == "get" and o.ret is not None]
        if gets:
            i = rnd.choice(gets)
            h[i] = op(h[i].client, h[i].call, h[i].ret, "get", h[i].arg, 99)
            assert not ok(KeyValueModel(), h) and not ok(_Unpartitioned(), h)


@pytest.mark.parametrize("kind", ["register", "counter"])
def test_thousand_ops_eight_clients_completes(kind):
    rnd = random.Random(2024)
    model_cls = MODELS[kind][0]
    draws = []
    for k in range(1000):  # writes of distinct values, 2% of ops time out, as in the sim
        if kind == "register":
            name, arg = ("write", k) if rnd.random() < 0.5 else ("read", None)
        else:
            name, arg = ("add", rnd.randint(1, 3)) if rnd.random() < 0.5 else ("read", None)
        draws.append((name, arg, rnd.randint(1, 10), rnd.randint(0, 3), rnd.random(), rnd.random() < 0.02))
    history = build_history(model_cls(), draws, 8)
    assert len(history) == 1000
    res = check_history(model_cls(), history, timeout=10.0)
    assert res.ok, res.explanation
    # and a single corrupted read near the end is found within the same budget
    i = max(i for i, o in enumerate(history) if o.op == "read" and o.ret is not None)
    history[i] = op(history[i].client, history[i].call, history[i].ret, "read", None, -1)
    assert not check_history(model_cls(), history, timeout=10.0).ok

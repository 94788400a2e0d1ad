"""Linearizability checking of recorded client histories.

The deterministic Raft simulator and the multi-process chaos tests record what
clients *observed* (invocation time, response time, result).  This module
decides whether those observations are explained by some sequential execution
of a model that respects real-time order, i.e. whether the replicated master
behaved like one atomic copy.  A violation is a bug; a timeout is "unknown".

Algorithm: Wing & Gong's search over linearization points with Lowe's
memoisation, as in Knossos/Porcupine.  Call and return events sit in a
time-ordered doubly linked list.  The search linearizes the earliest call whose
model step is legal (unlinking its call and return), and backtracks when it
meets the return of an operation it has not linearized yet.  Each configuration
(bitset of linearized operations, model state) is explored at most once.
Operations with an unknown outcome (``ret is None``) return at +infinity and
are optional.  Models that define ``partition_key(op, arg)`` are checked one
partition at a time (P-compositionality), which keeps the search small.

Cost: linearizable histories are found almost greedily (1000 ops from 8
clients: tens of ms).  Refuting a violation means exhausting the reachable
configurations, which grows with concurrency and especially with unknown-outcome
ops (they stay concurrent with everything after their call); hence the budget: a
wall-clock ``timeout`` and/or a number of search steps (``max_steps``, which gives the
same answer on any machine, as a seeded simulator needs).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Hashable, Iterable, Protocol

__all__ = [
    "Operation", "CheckResult", "Model", "LinearizabilityTimeout", "RegisterModel",
    "CounterModel", "KeyValueModel", "check_history", "partition",
]

_SHOWN = 20  # at most this many prefix operations are printed in an explanation


class LinearizabilityTimeout(Exception):
    """The search exceeded its budget (time or steps): the answer is unknown, which
    is neither a pass nor a violation."""


@dataclass(frozen=True)
class Operation:
    client: str
    call: float          # invocation time
    ret: float | None    # response time; None = outcome unknown (optional, may take effect any time after call)
    op: str
    arg: object = None     # hashable
    result: object = None  # hashable; ignored when ret is None


@dataclass
class CheckResult:
    ok: bool
    explanation: str = ""
    steps: int = 0  # search steps taken, over all partitions


class Model(Protocol):
    def init(self) -> Hashable: ...

    def step(self, state: Hashable, op: str, arg: object, result: object) -> tuple[bool, Hashable]:
        """(is `result` a legal response to op(arg) in `state`, the next state)."""

    def step_unknown(self, state: Hashable, op: str, arg: object) -> Hashable:
        """The state after op(arg) took effect with an unobserved result."""


class RegisterModel:
    """A single register, initially None.  write(v) -> (any); read() -> v;
    cas((expected, new)) -> True/False."""

    def init(self) -> Hashable:
        return None

    def step(self, state, op, arg, result):
        if op == "write":
            return True, arg
        if op == "read":
            return result == state, state
        if op == "cas":
            expected, new = arg
            swapped = state == expected
            return result == swapped, new if swapped else state
        raise ValueError(f"RegisterModel: unknown op {op!r}")

    def step_unknown(self, state, op, arg):
        if op == "read":
            return state
        return self.step(state, op, arg, state == arg[0] if op == "cas" else None)[1]


class CounterModel:
    """An integer counter, initially 0.  add(n) -> new total (None = not
    observed); read() -> total."""

    def init(self) -> Hashable:
        return 0

    def step(self, state, op, arg, result):
        if op == "add":
            total = state + arg
            return result is None or result == total, total
        if op == "read":
            return result == state, state
        raise ValueError(f"CounterModel: unknown op {op!r}")

    def step_unknown(self, state, op, arg):
        return state if op == "read" else self.step(state, op, arg, None)[1]


class KeyValueModel:
    """A map; absent keys read as None.  put((k, v)) -> (any); get(k) -> v or None;
    add((k, n)) -> new value (absent counts as 0; None = not observed).
    Histories are checked per key (see `partition_key`)."""

    def init(self) -> Hashable:
        return frozenset()

    @staticmethod
    def _set(state, key, value):
        return frozenset([*((k, v) for k, v in state if k != key), (key, value)])

    def step(self, state, op, arg, result):
        if op == "put":
            return True, self._set(state, *arg)
        if op == "get":
            return result == dict(state).get(arg), state
        if op == "add":
            key, n = arg
            new = (dict(state).get(key) or 0) + n
            return result is None or result == new, self._set(state, key, new)
        raise ValueError(f"KeyValueModel: unknown op {op!r}")

    def step_unknown(self, state, op, arg):
        return state if op == "get" else self.step(state, op, arg, None)[1]

    def partition_key(self, op: str, arg: object) -> Hashable:
        return arg if op == "get" else arg[0]

    def partition(self, operations: Iterable[Operation]) -> dict[Hashable, list[Operation]]:
        return partition(self, operations)


def partition(model, operations: Iterable[Operation]) -> dict[Hashable, list[Operation]]:
    """Split a history by `model.partition_key(op, arg)`, keys in first-seen order."""
    parts: dict[Hashable, list[Operation]] = {}
    for o in operations:
        parts.setdefault(model.partition_key(o.op, o.arg), []).append(o)
    return parts


def check_history(model: Model, operations: Iterable[Operation], *,
                  timeout: float | None = 10.0, max_steps: int | None = None) -> CheckResult:
    """Is the history linearizable w.r.t. `model`?  Raises LinearizabilityTimeout
    if the search takes longer than `timeout` seconds or `max_steps` steps in all
    (None = no limit)."""
    ops = list(operations)
    for o in ops:
        if o.ret is not None and o.ret < o.call:
            raise ValueError(f"operation returns before it is called: {o}")
    deadline = None if timeout is None else time.monotonic() + timeout
    if hasattr(model, "partition_key"):
        parts = partition(model, ops)
    else:
        parts = {None: ops}
    steps = 0
    for key, sub in parts.items():
        explanation, used = _check(model, sub, deadline, None if max_steps is None else max_steps - steps)
        steps += used
        if explanation:
            if len(parts) > 1 or key is not None:
                explanation = f"In the sub-history of partition {key!r}:\n{explanation}"
            return CheckResult(False, explanation, steps)
    return CheckResult(True, "", steps)


def _check(model, ops: list[Operation], deadline: float | None, max_steps: int | None) -> tuple[str, int]:
    """Search one (sub-)history; return ("" if linearizable, else an explanation;
    the steps taken)."""
    n = len(ops)
    unknown = [o.ret is None for o in ops]
    required = n - sum(unknown)
    if required == 0:
        return "", 0  # every operation is optional: the empty linearization works
    # Events ordered by time, calls before returns at equal times (touching
    # intervals count as concurrent), then by input position: deterministic.
    events = sorted([(o.call, 0, i) for i, o in enumerate(ops)]
                    + [(math.inf if o.ret is None else o.ret, 1, i) for i, o in enumerate(ops)])
    head, tail = 2 * n, 2 * n + 1  # sentinel nodes; nodes 0..2n-1 are the events
    nxt = list(range(1, 2 * n + 1)) + [0, -1]
    prv = [head] + list(range(2 * n - 1)) + [-1, 2 * n - 1]
    nxt[2 * n - 1] = tail
    node_op = [i for _, _, i in events]
    is_ret = [kind == 1 for _, kind, _ in events]
    call_node, ret_node = [0] * n, [0] * n
    for node, (_, kind, i) in enumerate(events):
        (ret_node if kind else call_node)[i] = node

    # Lowe's memo: a configuration (bitset of linearized ops, model state) that
    # was entered once is never explored again (it failed, or is being explored).
    state, bits = model.init(), 0
    stack: list[tuple[int, Hashable, int]] = []  # (op index, state before, bits before)
    seen: set[tuple[int, Hashable]] = set()
    best: tuple | None = None  # (prefix op indices, state, open op indices, blocking op)
    entry, steps = nxt[head], 0
    limit = math.inf if max_steps is None else max_steps
    while True:
        steps += 1
        if steps > limit or (deadline is not None and not steps & 1023 and time.monotonic() > deadline):
            what = f"budget of {max_steps} steps" if steps > limit else "timeout"
            raise LinearizabilityTimeout(
                f"linearizability search of {n} operations exceeded its {what} "
                f"after {steps} steps (best prefix so far: {len(best[0]) if best else 0} ops)")
        if not is_ret[entry]:  # a candidate: try to linearize it next
            i = node_op[entry]
            entry = nxt[entry]
            o = ops[i]
            if unknown[i]:
                new_state = model.step_unknown(state, o.op, o.arg)
                if new_state == state:
                    continue  # an optional no-op may as well be left out
            else:
                legal, new_state = model.step(state, o.op, o.arg, o.result)
                if not legal:
                    continue
            new_bits = bits | 1 << i
            if (new_bits, new_state) in seen:
                continue
            seen.add((new_bits, new_state))
            stack.append((i, state, bits))
            state, bits = new_state, new_bits
            for x in (call_node[i], ret_node[i]):  # unlink (dancing links)
                nxt[prv[x]], prv[nxt[x]] = nxt[x], prv[x]
            if not unknown[i]:
                required -= 1
                if required == 0:
                    return "", steps
            entry = nxt[head]
            continue
        # The return of an op not yet linearized: dead end, backtrack.
        if best is None or len(stack) > len(best[0]):
            open_ops, x = [], nxt[head]
            while x != entry:
                if not is_ret[x]:
                    open_ops.append(node_op[x])
                x = nxt[x]
            best = ([s[0] for s in stack], state, open_ops, node_op[entry])
        if not stack:
            return _explain(ops, *best), steps
        i, state, bits = stack.pop()
        for x in (ret_node[i], call_node[i]):  # relink in reverse order
            nxt[prv[x]] = prv[nxt[x]] = x
        if not unknown[i]:
            required += 1
        entry = nxt[call_node[i]]


def _fmt(o: Operation) -> str:
    if o.ret is None:
        return f"{o.client}: {o.op}({o.arg!r}) -> ? (unknown outcome)  [called {o.call}, no response]"
    return f"{o.client}: {o.op}({o.arg!r}) -> {o.result!r}  [called {o.call}, returned {o.ret}]"


def _explain(ops, prefix, state, open_ops, blocking) -> str:
    lines = [f"Not linearizable. Longest linearizable prefix found: {len(prefix)} of {len(ops)} operations"]
    if len(prefix) > _SHOWN:
        lines.append(f"  ... ({len(prefix) - _SHOWN} earlier operations omitted)")
    start = max(0, len(prefix) - _SHOWN)
    lines += [f"  {k + 1}. {_fmt(ops[i])}" for k, i in enumerate(prefix[start:], start)]
    if isinstance(state, (set, frozenset)):  # set reprs depend on the hash seed
        state = "{" + ", ".join(sorted(map(repr, state))) + "}"
    else:
        state = repr(state)
    lines.append(f"Model state after that prefix: {state}")
    lines.append(f"No way to linearize next, before t={ops[blocking].ret}, any of:")
    lines += [f"  {'*' if i == blocking else '-'} {_fmt(ops[i])}" for i in open_ops]
    lines.append("(* = operation whose response could not be explained in time)")
    return "\n".join(lines)

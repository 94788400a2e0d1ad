"""Chaos with real processes: clients execute and read while leaders are SIGKILLed and
links are cut; the recorded history must be linearizable, and every acknowledged command
applied exactly once."""
from __future__ import annotations

import random
import sys
import threading
import time

import pytest

import rpc
from replication.linearizability import KeyValueModel, Operation, check_history
from tests.cluster.test_partition import ProxiedCluster
from tests.prevalence.domain import Add, Get, Snapshot, Stamp

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")]


def test_linearizable_and_exactly_once_under_kills_and_partitions(tmp_path):
    c = ProxiedCluster(tmp_path)
    history: list[Operation] = []
    tags_acked: list[str] = []
    tags_unknown: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(k: int) -> None:
        rng = random.Random(k)
        with c.client(timeout=4.0) as cl:
            n = 0
            while not stop.is_set():
                key = rng.choice("ab")
                write = rng.random() < 0.6
                amount = rng.randint(1, 5)
                start = time.monotonic()
                try:
                    if write:
                        result = cl.execute(Add(key, amount))
                        op = Operation(f"c{k}", start, time.monotonic(), "add", (key, amount), result)
                    else:
                        result = cl.query(Get(key))
                        op = Operation(f"c{k}", start, time.monotonic(), "get", key, result)
                except rpc.ClusterUnavailable:
                    # outcome unknown: the add may or may not have applied, at any time after
                    # its call; an unanswered read constrains nothing
                    op = Operation(f"c{k}", start, None, "add", (key, amount), None) if write else None
                with lock:
                    if op is not None:
                        history.append(op)
                if k == 0 and not stop.is_set():  # one client also leaves tags: exactly-once count
                    tag = f"t{n}"
                    n += 1
                    try:
                        cl.execute(Stamp(tag))
                        with lock:
                            tags_acked.append(tag)
                    except rpc.ClusterUnavailable:
                        with lock:
                            tags_unknown.append(tag)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        for round_no in range(4):
            time.sleep(0.8)
            leader = c.leader()
            if round_no % 2 == 0:
                c.kill(leader)
                c.leader(exclude={leader})
                time.sleep(0.4)
                c.start(leader)
            else:
                c.isolate(leader)  # cut off from the other nodes, still reachable by clients
                c.leader(exclude={leader})
                time.sleep(0.6)
                c.isolate(leader, cut=False)
        time.sleep(0.8)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    try:
        result = check_history(KeyValueModel(), history, timeout=60)
        assert result.ok, result.explanation
        assert len(history) > 50
        with c.client() as cl:
            tags = [item[0] for item in cl.query(Snapshot())[1]]
        assert len(tags) == len(set(tags)), "a command was applied twice"
        assert set(tags_acked) <= set(tags), "an acknowledged command is missing"
        assert set(tags) <= set(tags_acked) | set(tags_unknown), "something applied that nobody sent"
    finally:
        c.stop()

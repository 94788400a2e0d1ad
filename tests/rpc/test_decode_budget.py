"""rpc.decode_budget: the request bytes a node decodes at once, across its client
connections. A command's data may nest and decodes to up to ~56 bytes of objects per
byte, so without a budget 128 connections decoding 1 MiB each could take ~7 GB."""
from __future__ import annotations

import threading
import time

import pytest

import rpc.service as service
from prevalence.errors import CodecError
from rpc.decode_budget import BUDGET, DecodeBudget


def test_bytes_past_the_budget_wait_for_room():
    budget = DecodeBudget(100)
    first = budget.take(60)
    took = []
    t = threading.Thread(target=lambda: took.append(budget.take(60)))
    t.start()
    time.sleep(0.05)
    assert not took, "two takes of 60 fit in a budget of 100"
    budget.give(first)
    t.join(5)
    assert took == [60] and budget.used == 60
    budget.give(60)
    assert budget.take(10_000) == 100  # larger than the whole budget: takes all of it, once empty
    budget.give(100)
    assert budget.used == 0
    with pytest.raises(ValueError):
        DecodeBudget(0)


class _SlowCodec:
    """Decodes nothing; records how many bytes were decoding at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.now = self.most = 0

    def loads(self, data: bytes):
        with self.lock:
            self.now += len(data)
            self.most = max(self.most, self.now)
        time.sleep(0.05)
        with self.lock:
            self.now -= len(data)
        raise CodecError("malformed message")


class _Node:
    def execute(self, tx, **kw):
        raise AssertionError("nothing decoded, nothing executed")

    query = submit = execute

    def propose_many(self, items, decisive=()):
        from replication.proposals import Proposals

        assert not items, "nothing decoded, nothing proposed"
        return Proposals(0)


SESSION = 1 << 62  # an id a node mints (a smaller one is refused as expired before it is decoded)


class _Host:
    node = _Node()

    def address_of(self, node_id):
        return None


@pytest.mark.parametrize("method", ["query", "execute", "execute_session", "execute_batch"])
def test_clients_decoding_at_once_stay_within_the_process_budget(monkeypatch, method):
    codec = _SlowCodec()
    monkeypatch.setattr(service, "CODEC", codec)
    size = 1 << 20
    data = b"\x90" * size

    def call() -> None:
        svc = service.ClientService(_Host(), "client")
        if method == "query":
            reply = svc.exposed_query(data)
        elif method == "execute":
            reply = svc.exposed_execute(data)
        elif method == "execute_session":
            reply = svc.exposed_execute(data, SESSION, 1)
        else:
            reply = svc.exposed_execute_batch(((data[:size // 2], SESSION, 1), (data[:size // 2], SESSION + 1, 1)))
        replies.append(reply)

    replies: list[bytes] = []
    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(replies) == 6 and all(b"malformed message" in r for r in replies), replies[:1]
    assert codec.most > 0
    assert codec.most <= BUDGET.limit, f"{codec.most} bytes decoding at once, over the budget of {BUDGET.limit}"
    assert BUDGET.used == 0


def test_small_requests_do_not_wait_behind_large_ones():
    """A client whose large requests decode for a second each held up every status
    request and honest command while they did (found by review)."""
    budget = DecodeBudget(1000, small=10, small_limit=30)
    large = budget.take(5000)  # the whole large share
    assert large == 1000
    started = time.monotonic()
    small = [budget.take(10) for _ in range(3)]  # at once: their own share
    assert time.monotonic() - started < 0.5 and budget.used_small == 30
    took = []
    t = threading.Thread(target=lambda: took.append(budget.take(5)))
    t.start()
    time.sleep(0.05)
    assert not took, "the small share is bounded too"
    budget.give(small[0])
    t.join(5)
    assert took == [5]
    for held in small[1:] + took + [large]:
        budget.give(held)
    assert budget.used == budget.used_small == 0
    assert BUDGET.small > 0  # the process's budget has the small share

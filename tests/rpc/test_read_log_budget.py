"""read_log describes journaled commands (decodes them whole) for subscribers: within the
process's decode budget, as requests are. A client's command may be 1 MiB of small items
(25-70 MB of objects), and every subscriber reads up to 1 MiB of them per call."""
from __future__ import annotations

import threading
import time

import msgpack

import prevalence.state
import rpc.service as service
from prevalence.entry import Entry, EntryKind
from rpc.decode_budget import BUDGET

SIZE = 1 << 20


class _SlowDescribe:
    """Records how many entry bytes were being described at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.now = self.most = 0

    def __call__(self, data: bytes) -> dict:
        with self.lock:
            self.now += len(data)
            self.most = max(self.most, self.now)
        time.sleep(0.05)
        with self.lock:
            self.now -= len(data)
        return {"timestamp_us": 1, "type": "test.Tags", "version": 1, "fields": {}}


class _SM:
    skipped: set = set()


class _Node:
    sm = _SM()

    def wait_applied(self, index: int, timeout: float) -> bool:
        return True

    def committed_log(self, start: int, limit: int):
        return 1, [Entry(start, 1, int(EntryKind.COMMAND), b"\x90" * SIZE)]


class _Host:
    node = _Node()

    def address_of(self, node_id):
        return None


def test_subscribers_describe_the_log_within_the_process_budget(monkeypatch):
    describe = _SlowDescribe()
    monkeypatch.setattr(prevalence.state, "describe_command", describe)
    replies: list[bytes] = []

    def call() -> None:
        replies.append(service.ClientService(_Host(), "subscriber").exposed_read_log(1, 1, 0.0))

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert [msgpack.unpackb(r)[:2] for r in replies] == [["ok", 2]] * 6, replies[:1]
    assert describe.most > 0
    assert describe.most <= BUDGET.limit, f"{describe.most} bytes described at once, over the budget of {BUDGET.limit}"
    assert BUDGET.used == 0

"""The leader checks that a command reads back from the log before proposing it
(replication.node, CODEC.journal_copy): a second decode of the whole command. It must
happen within the process's decode budget (rpc.decode_budget), as the first does:
else 128 connections each sending 1 MiB commands decode copies of ~70 MB at once."""
from __future__ import annotations

from concurrent.futures import Future

import msgpack
import pytest

import rpc.service as service
from prevalence.codec import CODEC
from tests.prevalence.domain import Put


class _Node:
    def __init__(self) -> None:
        self.held: list[int] = []

    def _now(self) -> None:
        self.held.append(service.BUDGET.used + service.BUDGET.used_small)

    def submit(self, tx, session=None) -> Future:
        self._now()
        f: Future = Future()
        f.set_result(("ok", 1) if session else 1)
        return f

    def propose_many(self, items, decisive=()):
        self._now()

        class _Done:
            def wait(self, timeout):
                return None

            def outcome(self, j):
                return ("ok", 1)
        return _Done()


class _Host:
    def __init__(self, node) -> None:
        self.node = node

    def address_of(self, node_id):
        return None


@pytest.mark.parametrize("how", ["once", "session", "batch"])
def test_the_proposal_and_its_read_back_happen_within_the_decode_budget(how):
    node = _Node()
    svc = service.ClientService(_Host(node), "client")
    data = CODEC.dumps(Put("a", 1))
    if how == "once":
        reply = svc.exposed_execute(data)
    elif how == "session":
        reply = svc.exposed_execute(data, 1 << 62, 1)
    else:
        reply = svc.exposed_execute_batch(msgpack.packb([(data, 1 << 62, 1)], use_bin_type=True))
    assert msgpack.unpackb(reply)[0] == "ok", msgpack.unpackb(reply)
    assert node.held and all(h >= len(data) for h in node.held), node.held
    assert service.BUDGET.used == 0 and service.BUDGET.used_small == 0  # all given back

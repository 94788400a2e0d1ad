"""A command waiting to commit holds its bytes, not its decoded objects.

A client's command data decodes to up to ~70 bytes of objects per byte (nested small
lists), and a command may wait seconds for its commit (a slow follower disk, a lost
quorum until the leader steps down). Six 1 MiB commands waiting so held 402 MB on a
node (found by review). Once proposed, a command is journal bytes in the Raft log; the
service must let go of the objects it decoded to validate it."""
from __future__ import annotations

import gc
import threading
import time
import weakref

import msgpack
import pytest

import rpc.service as service
from prevalence.codec import CODEC
from replication.config import RaftConfig
from tests.prevalence.domain import Tags
from tests.replication.test_node import Cluster


SESSION = 1 << 62  # an id a node mints (a smaller one is refused as expired before the log)


class _Host:
    def __init__(self, node):
        self.node = node

    def address_of(self, node_id):
        return None


@pytest.mark.parametrize("how", ["execute_batch", "execute_session", "execute_once"])
def test_a_command_waiting_for_its_commit_holds_no_decoded_objects(tmp_path, monkeypatch, how):
    # an election timeout of 1-2 s: the cut leader still leads while the test looks
    c = Cluster(tmp_path, raft=RaftConfig(election_tick=40, heartbeat_tick=5))
    try:
        leader = c.leader(timeout=15)
        others = [i for i in c.ids if i != leader.id]
        decoded: list[weakref.ref] = []
        load = service.ClientService._load

        def watched(self, data):
            obj = load(self, data)
            decoded.append(weakref.ref(obj))
            return obj

        monkeypatch.setattr(service.ClientService, "_load", watched)
        svc = service.ClientService(_Host(leader), "client")
        data = CODEC.dumps(Tags("big", tags=tuple(f"t{k}" for k in range(20_000))))
        before = leader.core.log.last_index()
        c.net.cut.update((leader.id, o) for o in others)  # nothing commits
        replies: list[bytes] = []
        if how == "execute_batch":
            call = lambda: svc.exposed_execute_batch(msgpack.packb([(data, SESSION, 1)], use_bin_type=True))  # noqa: E731
        elif how == "execute_session":
            call = lambda: svc.exposed_execute(data, SESSION, 1)  # noqa: E731
        else:
            call = lambda: svc.exposed_execute(data)  # noqa: E731
        t = threading.Thread(target=lambda: replies.append(call()), daemon=True)
        t.start()
        deadline = time.monotonic() + 5
        while leader.core.log.last_index() == before and time.monotonic() < deadline:
            time.sleep(0.005)
        assert leader.core.log.last_index() == before + 1, "the command was never proposed"
        time.sleep(0.05)
        assert t.is_alive() and not replies, "the command must still be waiting for its commit"
        gc.collect()
        assert len(decoded) == 1
        assert decoded[0]() is None, "the waiting command's decoded objects are still held"
        c.net.cut.clear()
        t.join(10)
        assert replies, "the command never completed once the leader's messages got through"
    finally:
        c.stop()


def test_a_command_without_a_session_sent_to_a_stopped_node_is_refused_not_unknown(tmp_path):
    """A node that had stopped answered such a command "its outcome is unknown", though
    the command never reached its core: a client that trusts that answer does not
    retry a command that was certainly not applied."""
    c = Cluster(tmp_path)
    try:
        leader = c.leader()
        svc = service.ClientService(_Host(leader), "client")
        assert msgpack.unpackb(svc.exposed_execute(CODEC.dumps(Tags("x")))) == ["ok", None]
        leader.stop(transfer=False)
        reply = msgpack.unpackb(svc.exposed_execute(CODEC.dumps(Tags("y"))))
        assert reply[0] == "not_leader", reply  # nothing was proposed: the client retries elsewhere
    finally:
        c.stop()


def test_a_command_without_a_session_that_timed_out_waiting_is_unknown_not_retryable(tmp_path, monkeypatch):
    """A command without a session that was proposed, then waited past the service's
    timeout for its commit (the leader cut off from the others), was answered
    ["unavailable", ...]: the reply a client retries at once with the same request
    ("the session makes the retry safe", but there is none). The command is in the
    leader's log and may still commit: its outcome is unknown, as for NodeHalted."""
    c = Cluster(tmp_path, raft=RaftConfig(election_tick=40, heartbeat_tick=5))
    try:
        leader = c.leader(timeout=15)
        others = [i for i in c.ids if i != leader.id]
        svc = service.ClientService(_Host(leader), "client")
        monkeypatch.setattr(service, "BATCH_TIMEOUT", 0.3)
        before = leader.core.log.last_index()
        c.net.cut.update((leader.id, o) for o in others)  # nothing commits
        reply = msgpack.unpackb(svc.exposed_execute(CODEC.dumps(Tags("once"))))
        assert leader.core.log.last_index() == before + 1, "the command was proposed"
        c.net.cut.clear()
        assert reply[0] not in ("unavailable", "not_leader"), reply  # a retry could apply it twice
        assert reply[0] == "error" and "unknown" in reply[1], reply
    finally:
        c.stop()

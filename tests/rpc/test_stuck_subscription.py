"""A subscription polling a node that cannot apply the log (rolling upgrade: an older
node meets the newer leader's entries) must move to a node that can.

The stuck node answered each long poll "ok, nothing new" for as long as it stayed on
the older release: the subscriber (the grid window, an operator's program) saw a state
frozen as of the entry before, with no error, while commands went on through the
leader. It now refuses to serve the log past its state, with the leader as a hint, and
the subscription reconnects elsewhere, from the same index."""
from __future__ import annotations

import threading
import time

import msgpack

import rpc.service as service
from replication.errors import CannotApply
from rpc.subscription import Subscription


class _Unreadable:
    index, snapshot = 8, False


class _Guard:
    def refusal(self):
        return CannotApply("node 'n2' cannot apply the log past entry 7 (a newer release wrote it): upgrade this node",
                           "n1")


class _Machine:
    apply_guard = _Guard()


class _Sm:
    def __init__(self, unreadable):
        self.unreadable, self.applied_index, self.skipped = unreadable, 7, set()


class _StuckNode:
    def __init__(self, unreadable=_Unreadable()):
        self.sm, self.machine, self.waited = _Sm(unreadable), _Machine(), []

    def wait_applied(self, index, timeout):
        self.waited.append(timeout)
        return self.sm.applied_index >= index

    def committed_log(self, start, limit):
        return start, []


class _Host:
    def __init__(self, node):
        self.node = node

    def address_of(self, node_id):
        return {"n1": "10.0.0.1:7100"}.get(node_id)


def test_a_stuck_node_refuses_to_serve_the_log_past_its_state_naming_the_leader():
    node = _StuckNode()
    svc = service.ClientService(_Host(node), "client")
    assert msgpack.unpackb(svc.exposed_read_log(8, 256, 1.0)) == ["not_leader", "n1", "10.0.0.1:7100"]
    assert not node.waited, "it waited for an entry it never applies"
    # what it has applied, it serves
    assert msgpack.unpackb(svc.exposed_read_log(7, 256, 0.0))[0] == "ok"
    node.sm.unreadable = None  # applying: a poll past its state waits, as any node's
    assert msgpack.unpackb(svc.exposed_read_log(8, 256, 0.0)) == ["ok", 8, []]


class _Line:
    addr = "10.0.0.2:7100"


class _Client:
    timeout, attempt_timeout, _closed = 5.0, 1.5, False

    def __init__(self):
        self.line = _Line()
        self.moved: list = []
        self.calls: list = []
        self.lock = threading.Lock()

    def _open_line(self):
        return self.line

    def _close_line(self, line):
        pass

    def _move_line(self, line, leader_addr):
        self.moved.append((line, leader_addr))

    def _call(self, deadline, method, start, limit, wait, any_node=False, line=None):
        with self.lock:
            self.calls.append(start)
            n = len(self.calls)
        if n == 1:
            return ["not_leader", "n1", "10.0.0.1:7100"]
        if n == 2:
            return ["ok", 9, [[8, 1_000_000, "test.Add", {"key": "x", "amount": 1}]]]
        time.sleep(0.02)
        return ["ok", start, []]


def test_the_subscription_moves_to_where_the_stuck_node_points_and_resumes_at_the_same_index():
    client = _Client()
    seen: list = []
    sub = Subscription(client, seen.append, 8)
    try:
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        sub.close()
    assert client.moved == [(client.line, "10.0.0.1:7100")]
    assert client.calls[:2] == [8, 8] and [e.index for e in seen] == [8]


class _StuckForReads:
    is_leader = True

    def query(self, q, linearizable=True):
        raise _Guard().refusal()


def test_a_local_read_on_a_stuck_node_says_why_not_where_the_leader_is():
    """A `local` read goes to whichever node the client is on (any_node): a "not_leader"
    reply there is the answer, and the client raised it as an error whose whole text was
    the leader's address ("10.0.0.1:7100"), or "None"."""
    from prevalence.codec import CODEC
    from tests.prevalence.domain import Get

    svc = service.ClientService(_Host(_StuckForReads()), "client")
    reply = msgpack.unpackb(svc.exposed_query(CODEC.dumps(Get("a")), "local"))
    assert reply[0] == "error" and "cannot apply the log past entry 7" in reply[1], reply
    # the other consistencies still send the client to the leader
    assert msgpack.unpackb(svc.exposed_query(CODEC.dumps(Get("a")), "linearizable"))[0] == "not_leader"

"""Session ids below 2**62 are the index of a version-1 RegisterSession (before ids were
random): small and consecutive, so guessable. A client holding one keeps it alive for as
long as it sends commands, across the cluster's upgrade; the node refuses new commands
under such an id as it refuses an expired session, and the client registers a new one."""
from __future__ import annotations

import msgpack

from prevalence.codec import CODEC
from rpc.service import ClientService
from tests.prevalence.domain import Add


class _Node:
    def __init__(self):
        self.submitted = []

    def submit(self, tx, *, session=None):
        self.submitted.append(session)
        raise AssertionError("a command under a guessable session id reached the node")

    def propose_many(self, items, decisive=()):
        self.submitted.extend(s for _tx, s in items)
        if items:
            raise AssertionError("a command under a guessable session id reached the node")
        return _NoProposals()


class _NoProposals:
    def wait(self, timeout):
        pass


class _Host:
    def __init__(self):
        self.node = _Node()

    def address_of(self, node_id):
        return None


def test_a_command_under_a_guessable_session_id_is_refused_as_expired_before_the_log():
    """Before, client B sent Add under A's old session 7 and the number A would send
    next: B's command applied, and A's retry got B's result."""
    host = _Host()
    svc = ClientService(host, "c")
    data = CODEC.dumps(Add("x", 1))
    reply = msgpack.unpackb(svc.exposed_execute(data, 7, 3), raw=False)
    assert reply[0] == "expired" and "session 7" in reply[1], reply
    reply = msgpack.unpackb(svc.exposed_execute_batch(((data, 7, 3),)), raw=False)
    assert reply[0] == "ok" and reply[1][0][0] == "expired", reply
    assert host.node.submitted == []

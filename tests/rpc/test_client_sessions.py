"""A command refused because its session expired: sent again on a new session when its
only request was that refusal (it certainly did not apply), reported as an unknown
outcome when an earlier request of it may have applied. A fake node answers the client."""
from __future__ import annotations

import msgpack
import pytest

from prevalence.sessions import SessionExpired
from tests.prevalence.domain import Add
from tests.rpc.test_client_replies import client_with


class _Node:
    """Sessions the way a node keeps them, with ``expired`` ones refused; ``lose`` replies
    to execute_batch are lost on the way back (the request arrived)."""

    def __init__(self) -> None:
        self.next_id, self.expired, self.applied, self.lose = 1, set(), [], 0
        self.expire_after: int | None = None  # this session expires once the next batch is handled

    def register(self, _args) -> list:
        self.next_id += 1
        return ["ok", self.next_id - 1]

    def batch(self, args) -> list:
        replies = []
        for _data, sid, seq in msgpack.unpackb(args[0], raw=False):
            if sid in self.expired:
                replies.append(["expired", f"session {sid} is unknown or expired: whether command {seq} was applied "
                                           "is unknown"])
            else:
                self.applied.append((sid, seq))
                replies.append(["ok", len(self.applied)])
        if self.expire_after is not None:
            self.expired.add(self.expire_after)
            self.expire_after = None
        if self.lose:
            self.lose -= 1
            raise EOFError("connection lost")
        return ["ok", replies]


def test_the_first_command_after_the_session_expired_applies_on_a_new_session(monkeypatch):
    """An operator's first command after a long idle failed with "outcome unknown" though
    the cluster had refused it on its only request: it had certainly not applied."""
    node = _Node()
    c = client_with(monkeypatch, {"register_session": node.register, "execute_batch": node.batch}, timeout=5)
    try:
        assert c.execute(Add("k", 1)) == 1
        node.expired.add(1)  # idle past the expiry
        assert c.execute(Add("k", 1)) == 2
        assert node.applied == [(1, 1), (2, 1)]  # once, on the new session
    finally:
        c.close()


def test_a_command_whose_earlier_request_may_have_applied_is_not_sent_again_when_its_session_expired(monkeypatch):
    node = _Node()
    c = client_with(monkeypatch, {"register_session": node.register, "execute_batch": node.batch}, timeout=5)
    try:
        assert c.execute(Add("k", 1)) == 1
        node.lose, node.expire_after = 1, 1  # the next request applies, its reply is lost, the session expires
        with pytest.raises(SessionExpired):  # the retry is refused: the outcome is unknown to the client
            c.execute(Add("k", 1))
        assert node.applied == [(1, 1), (1, 2)]  # applied by the lost request, never sent again
    finally:
        c.close()

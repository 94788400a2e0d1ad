"""ReadIndex bookkeeping on the leader (Raft dissertation 6.4).

A read request records the commit index when it arrived; the leader then sends a
heartbeat round carrying the request's context, and once a quorum of voters has
answered that round the leader knows it was still the leader at that moment. Requests
are confirmed in arrival order: confirming one confirms every earlier one.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class ReadRequest:
    ctx: bytes
    index: int
    requester: str
    acks: set = field(default_factory=set)


class ReadOnly:
    __slots__ = ("_pending", "_queue")

    def __init__(self) -> None:
        self._pending: dict[bytes, ReadRequest] = {}
        self._queue: list[bytes] = []

    def add(self, index: int, ctx: bytes, requester: str) -> bool:
        """Queue a request; False if a request with this context is already queued."""
        if ctx in self._pending:
            return False
        self._pending[ctx] = ReadRequest(ctx, index, requester)
        self._queue.append(ctx)
        return True

    def ack(self, node_id: str, ctx: bytes) -> set | None:
        """Record a heartbeat answer for ``ctx``; the set of acks, or None if unknown."""
        req = self._pending.get(ctx)
        if req is None:
            return None
        req.acks.add(node_id)
        return req.acks

    def release(self, ctx: bytes) -> list[ReadRequest]:
        """Pop the requests up to and including ``ctx`` (all confirmed by its round)."""
        if ctx not in self._pending:
            return []
        out = []
        while self._queue:
            c = self._queue.pop(0)
            out.append(self._pending.pop(c))
            if c == ctx:
                break
        return out

    def last_ctx(self) -> bytes | None:
        return self._queue[-1] if self._queue else None

    def __len__(self) -> int:
        return len(self._queue)

    def clear(self) -> None:
        self._pending.clear()
        self._queue.clear()

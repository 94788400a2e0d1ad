"""The callers a node owes an answer, each by the token its input carries.

Apart from :class:`replication.node.Node`'s threads because any of them may answer a
token (the machine's step, the applier, a halt, stop()), once only, and because after
stop() the tokens are what tells a caller that was certainly not proposed from one
that may have been.
"""
from __future__ import annotations

import itertools
from concurrent.futures import Future
from typing import Any

from replication.errors import NodeHalted, NodeStopped
from replication.proposals import Proposals

__all__ = ["Callers"]


class Callers:
    """Token -> the caller's Future, or ``(Proposals, k)`` for one of a batch."""

    __slots__ = ("_waiting", "_tokens", "_last_stepped")

    def __init__(self) -> None:
        self._waiting: dict[int, Future | tuple[Proposals, int]] = {}
        self._tokens = itertools.count(1)
        self._last_stepped = -1  # set by closed(), see refuse_late

    def take(self) -> tuple[int, Future]:
        token, fut = next(self._tokens), Future()
        # running from the start: a caller's cancel() is refused instead of making the
        # thread that completes it (the stepping or the apply thread) raise and halt
        fut.set_running_or_notify_cancel()
        self._waiting[token] = fut
        return token, fut

    def take_batch(self, batch: Proposals) -> list[int]:
        """One token for each of ``batch``'s proposals, in order."""
        tokens, waiting = self._tokens, self._waiting
        taken = []
        for k in range(len(batch)):
            token = next(tokens)
            waiting[token] = (batch, k)
            taken.append(token)
        return taken

    def forget(self, token: int) -> None:
        """The caller gave up waiting (its own timeout)."""
        self._waiting.pop(token, None)

    def complete(self, token: int, value: Any = None, exc: BaseException | None = None) -> None:
        """Answer a caller (any thread); once only: a node that halted answered it already."""
        fut = self._waiting.pop(token, None)
        if fut is None:
            return
        if type(fut) is tuple:  # one of a batch (propose_many)
            fut[0].settle(fut[1], value, exc)
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)

    def fail_all(self, exc: BaseException) -> None:
        for token in list(self._waiting):
            self.complete(token, exc=exc)

    def closed(self) -> None:
        """Nothing steps the machine any more: a token taken after this was not proposed."""
        self._last_stepped = next(self._tokens)

    def refuse_late(self, node_id: str) -> None:
        """Answer the callers that came after stop(): one whose token was taken once
        nothing stepped the machine was certainly not proposed (NodeStopped: retry it
        anywhere); an earlier one, registered as stop() answered the others, may have
        been (NodeHalted: its outcome is the cluster's)."""
        mark = self._last_stepped
        late = NodeStopped(f"node {node_id!r} is stopped: nothing was proposed")
        halted = NodeHalted(f"node {node_id!r} is stopped")
        for token in list(self._waiting):
            self.complete(token, exc=late if token > mark else halted)

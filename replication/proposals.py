"""What a batch of proposals came to, waited for at once.

A ``concurrent.futures.Future`` per command costs about 5 µs to make, complete and
read (a Condition and an RLock each), and a leader carries thousands of commands a
second; the futures took about a fifth of its interpreter time in a pipelined run
(docs/benchmarks.md). A client's batch is answered as a whole, so its commands share
one :class:`Proposals`: one lock and one event for all of them.
"""
from __future__ import annotations

import threading
from typing import Any

_UNSETTLED = object()


class Proposals:
    """The outcomes of ``n`` proposals, in the order proposed: each a value or an
    exception, settled once each by whichever thread learns it (``Node._complete``)."""

    __slots__ = ("_outcomes", "_left", "_lock", "_done")

    def __init__(self, n: int) -> None:
        self._outcomes: list[Any] = [_UNSETTLED] * n
        self._left = n
        self._lock = threading.Lock()
        self._done = threading.Event()
        if n == 0:
            self._done.set()

    def settle(self, k: int, value: Any = None, exc: BaseException | None = None) -> None:
        """Proposal ``k`` came to ``value``, or failed with ``exc``; later settlements of
        the same one are ignored."""
        with self._lock:
            if self._outcomes[k] is not _UNSETTLED:
                return
            self._outcomes[k] = (value, exc)
            self._left -= 1
            last = self._left == 0
        if last:
            self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once every proposal is settled; False if ``timeout`` passed first."""
        return self._done.wait(timeout)

    def outcome(self, k: int) -> Any:
        """Proposal ``k``'s value, or its exception raised; TimeoutError while unsettled
        (as ``Future.result`` would, at its deadline)."""
        got = self._outcomes[k]
        if got is _UNSETTLED:
            raise TimeoutError(f"proposal {k} of {len(self._outcomes)} is not settled yet")
        value, exc = got
        if exc is not None:
            raise exc
        return value

    def __len__(self) -> int:
        return len(self._outcomes)

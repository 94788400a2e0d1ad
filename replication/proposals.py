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
    exception, settled once each by whichever thread learns it (``Callers.complete``).

    An exception of a ``decisive`` type (the service's: not the leader any more)
    decides the whole batch once every proposal before it is settled, so the waiter
    wakes then instead of waiting for the ones after it, which may never settle here."""

    __slots__ = ("_outcomes", "_lock", "_done", "_decisive", "_prefix", "_decided_at")

    def __init__(self, n: int, decisive: type[BaseException] | tuple[type[BaseException], ...] = ()) -> None:
        self._outcomes: list[Any] = [_UNSETTLED] * n
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._decisive = decisive
        self._prefix = 0  # how many at the front are settled (all of them: done)
        self._decided_at = n  # the first decisive exception's index
        if n == 0:
            self._done.set()

    def settle(self, k: int, value: Any = None, exc: BaseException | None = None) -> None:
        """Proposal ``k`` came to ``value``, or failed with ``exc``; later settlements of
        the same one are ignored."""
        outcomes = self._outcomes
        with self._lock:
            if outcomes[k] is not _UNSETTLED:
                return
            outcomes[k] = (value, exc)
            if exc is not None and k < self._decided_at and isinstance(exc, self._decisive):
                self._decided_at = k
            while self._prefix < len(outcomes) and outcomes[self._prefix] is not _UNSETTLED:
                self._prefix += 1
            wake = self._prefix == len(outcomes) or self._decided_at < self._prefix
        if wake:
            self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once every proposal is settled, or a decisive exception is settled with
        every one before it; False if ``timeout`` passed first."""
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

"""How many request bytes a node decodes at once, across all its client connections.

A command's data is the application's plain data and may nest, so msgpack decodes it to
up to about 70 bytes of Python objects per byte received (an empty map is one byte and
a 64-byte object, and msgpack builds an array's slots at its header): a 1 MiB command of
nested arrays of empty maps took 74 MB. Per connection
that is bounded by the request limit; across 128 connections decoding at once it was
not (about 9 GB). Past the budget, a connection waits for the others to finish decoding,
which takes milliseconds for an honest request, about 0.1 s for 1 MiB of msgpack, and
up to about 1 s when cattrs structures 1 MiB of list items one by one.

RPyC's decoding of a request's arguments (brine.load, in rpc.peer_server) takes the
budget too, after rpc.brine_shape has bounded what it builds (its bytes and strings,
and at most 8,192 other objects). Requests of at most 64 KiB have a share of their own
(2 MiB), so large ones never hold them up.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

#: Request bytes decoding at once in one process: two requests of the default limit
#: (1 MiB), so at most about 150 MB of msgpack-decoded objects however many clients send.
DECODE_BUDGET = 2 << 20
#: Requests up to this size (every honest command, query and status request) take a
#: share of their own, so that large requests decoding slowly never hold them up.
SMALL_REQUEST = 64 << 10
SMALL_BUDGET = 2 << 20


class DecodeBudget:
    """Counts of bytes being decoded, bounded by ``limit``; ``take`` waits for room.

    With ``small``, a request of at most that many bytes counts against a second
    limit, ``small_limit``, instead: a client sending large requests that decode for a
    second each (brine, or cattrs structuring a long list) makes other large requests
    wait, not a status request or an honest command."""

    def __init__(self, limit: int = DECODE_BUDGET, *, small: int = 0, small_limit: int = SMALL_BUDGET) -> None:
        if limit < 1 or small < 0 or small_limit < max(1, small):
            raise ValueError("a decode budget holds at least one byte, and its small share a small request")
        self.limit, self.small, self.small_limit = limit, small, small_limit
        self.used = 0  # bytes of large requests decoding
        self.used_small = 0
        self._room = threading.Condition(threading.Lock())

    def take(self, size: int) -> int:
        """Wait until ``size`` bytes fit (a request larger than the whole budget waits
        for it to be empty, then takes all of it); returns what to give back."""
        size = max(0, size)
        with self._room:
            if size <= self.small:
                while self.used_small + size > self.small_limit:
                    self._room.wait()
                self.used_small += size
                return size
            size = max(self.small + 1, min(size, self.limit))  # stays in the large share
            while self.used + size > self.limit and self.used:
                self._room.wait()
            self.used += size
        return size

    @contextmanager
    def holding(self, size: int) -> Iterator[None]:
        """``take(size)`` for the time of a ``with`` block."""
        held = self.take(size)
        try:
            yield
        finally:
            self.give(held)

    def give(self, size: int) -> None:
        with self._room:
            if size <= self.small:
                self.used_small -= size
            else:
                self.used -= size
            self._room.notify_all()


#: The process's budget, shared by every connection's requests (rpc.peer_server decodes
#: RPyC's part of a request within it, rpc.service the commands and queries).
BUDGET = DecodeBudget(small=SMALL_REQUEST)

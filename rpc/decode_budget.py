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
budget too: brine makes up to about 118 bytes per byte (empty frozensets), and a client
frame may be 4 MiB, so one frame alone can still decode to about 470 MB.
"""
from __future__ import annotations

import threading

#: Request bytes decoding at once in one process: two requests of the default limit
#: (1 MiB), so at most about 150 MB of decoded objects however many clients send.
DECODE_BUDGET = 2 << 20


class DecodeBudget:
    """A count of bytes being decoded, bounded by ``limit``; ``take`` waits for room."""

    def __init__(self, limit: int = DECODE_BUDGET) -> None:
        if limit < 1:
            raise ValueError("a decode budget holds at least one byte")
        self.limit = limit
        self.used = 0
        self._room = threading.Condition(threading.Lock())

    def take(self, size: int) -> int:
        """Wait until ``size`` bytes fit (a request larger than the whole budget waits
        for it to be empty, then takes all of it); returns what to give back."""
        size = max(0, min(size, self.limit))
        with self._room:
            while self.used + size > self.limit:
                self._room.wait()
            self.used += size
        return size

    def give(self, size: int) -> None:
        with self._room:
            self.used -= size
            self._room.notify_all()


#: The process's budget, shared by every ClientService (one per client connection).
BUDGET = DecodeBudget()

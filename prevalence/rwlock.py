"""A readers-writer lock: queries run together, transactions alone.

Writers queue on a plain lock, which new readers also pass through (a turnstile): a
waiting writer therefore holds back new queries and cannot be starved, and writers
waiting for each other block in C rather than in a Python condition loop. Plain acquire
and release methods, because the engine takes it once per transaction on its hot path.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class RWLock:
    def __init__(self) -> None:
        self._turnstile = threading.Lock()  # held by the writer, crossed by readers
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0

    def acquire_read(self) -> None:
        with self._turnstile:
            with self._cond:
                self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        self._turnstile.acquire()
        # No new reader can enter now; wait for those already inside to leave.
        if self._readers:
            with self._cond:
                while self._readers:
                    self._cond.wait()

    def release_write(self) -> None:
        self._turnstile.release()

    @contextmanager
    def read(self) -> Iterator[None]:
        self.acquire_read()
        try:
            yield
        finally:
            self.release_read()

    @contextmanager
    def write(self) -> Iterator[None]:
        self.acquire_write()
        try:
            yield
        finally:
            self.release_write()

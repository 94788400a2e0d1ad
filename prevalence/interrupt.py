"""Ctrl-C ends a command-line command, even when Python loses the KeyboardInterrupt.

A KeyboardInterrupt raised while a finalizer runs (a connection or socket collected
between two retries: ``__del__``, a weakref callback) is printed as "Exception ignored"
and dropped, so a command waiting on a cluster that does not answer went on waiting
after Ctrl-C (seen: ``grid show`` against a node that never answers, about one Ctrl-C in
twenty on a loaded PC). Once Ctrl-C has been pressed, the command therefore ends within
``GRACE`` seconds whatever became of the exception: one line, exit code 130.

Only for commands: a node, and the foreground commands that stop nodes on Ctrl-C, set
their own handlers afterwards and replace this one.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

GRACE = 2.0  # seconds from Ctrl-C to the exit when the KeyboardInterrupt was lost
EXIT_INTERRUPTED = 130  # what a shell reports for a command ended by Ctrl-C

_pressed = threading.Event()
_said = threading.Event()
_active = threading.Event()  # a command runs under the guard (not a program calling main() in-process after)


@contextmanager
def guarded() -> Iterator[None]:
    """Run a command so that Ctrl-C raises KeyboardInterrupt as usual and ends the
    process GRACE s later if the command has not returned by then; the previous handler
    is back afterwards. Off the main thread (no signals there), nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _pressed.clear()
    _said.clear()
    previous = signal.signal(signal.SIGINT, _on_sigint)
    _active.set()
    try:
        yield
    finally:
        _active.clear()
        signal.signal(signal.SIGINT, previous)


def say_interrupted() -> int:
    """The one line a command interrupted by Ctrl-C prints; returns its exit code."""
    if not _said.is_set():
        _said.set()
        print("interrupted", file=sys.stderr, flush=True)
    return EXIT_INTERRUPTED


def _on_sigint(signum: int, frame: object) -> None:  # noqa: ARG001
    if not _pressed.is_set():
        _pressed.set()
        threading.Thread(target=_end_soon, name="ctrl-c", daemon=True).start()
    raise KeyboardInterrupt


def _end_soon() -> None:
    time.sleep(GRACE)
    if _active.is_set():  # still in the command: the exception was lost
        say_interrupted()
        os._exit(EXIT_INTERRUPTED)

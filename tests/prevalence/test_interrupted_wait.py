"""A caller interrupted (Ctrl-C) while its transaction waits in the combining queue must
not leave the queue without a head: later callers would wait forever."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import pytest

import prevalence

GATE = threading.Event()


class Counter:
    def __init__(self) -> None:
        self.n = 0


@dataclass(frozen=True)
class Slow(prevalence.Transaction, name="interrupted.Slow"):
    def execute(self, root: Counter, ctx: prevalence.Context) -> None:
        GATE.wait(10)
        root.n += 1


@dataclass(frozen=True)
class Bump(prevalence.Transaction, name="interrupted.Bump"):
    def execute(self, root: Counter, ctx: prevalence.Context) -> int:
        root.n += 1
        return root.n


@pytest.mark.skipif(sys.platform == "win32", reason="a SIGINT to the own process is a POSIX test device")
def test_a_caller_interrupted_in_the_queue_leaves_it_usable(tmp_path):
    """Seen: the main thread, queued behind a running transaction, got KeyboardInterrupt
    while it waited; the leader then handed the head of the queue to that caller, which
    was gone, and every later execute waited forever."""
    GATE.clear()
    db = prevalence.open(tmp_path, Counter)
    slow = threading.Thread(target=db.execute, args=(Slow(),), daemon=True)
    slow.start()
    time.sleep(0.2)  # Slow leads and holds the queue
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        db.execute(Bump())  # queued behind Slow, interrupted while it waits
    GATE.set()
    slow.join(5)
    done: list = []
    later = threading.Thread(target=lambda: done.append(db.execute(Bump())), daemon=True)
    later.start()
    later.join(5)
    assert done, "a later execute hung: the queue has a head nobody serves"
    db.close()
    with prevalence.open(tmp_path, Counter) as db:
        assert db.last_index == 2  # Slow and the later Bump; the interrupted one never applied

"""SIGKILL a writer at random moments, again and again, over one directory."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import pytest

import prevalence
from tests.prevalence.domain import Snapshot, Store

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_acknowledged_transactions_survive_sigkill(tmp_path):
    rng = random.Random(20261126)
    acked: list[int] = []
    next_value = 0
    for round_no in range(25):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.prevalence.crash_worker", str(tmp_path), str(next_value)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.15))
        proc.kill()  # SIGKILL on POSIX: no cleanup, no flush
        out, _ = proc.communicate()
        got = [int(line) for line in out.split()]
        acked.extend(got)
        with prevalence.open(tmp_path, Store) as db:
            tags = [int(entry[0]) for entry in db.query(Snapshot())[1]]
        assert tags[: len(acked)] == acked, f"round {round_no}: an acknowledged transaction is missing"
        extra = tags[len(acked) :]
        assert len(extra) <= 1, f"round {round_no}: more than one unacknowledged extra: {extra}"
        assert len(set(tags)) == len(tags), "a transaction applied twice"
        acked.extend(extra)  # an applied-but-unacknowledged one is part of history now
        next_value = (acked[-1] + 1) if acked else 0
    assert len(acked) > 100  # the test really wrote something

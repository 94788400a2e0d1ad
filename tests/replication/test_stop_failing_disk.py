"""stop() on a node whose disk fails as it closes (storage.close raises: the journal's
fsync or the hard state's write): stop() raises before _stopped is set and before
_fail_waiting, so what waits, and every caller after it, waits out its whole timeout
instead of hearing NodeHalted at once (the promise of 493743f)."""
from __future__ import annotations

import errno
import time

import pytest

from replication.errors import ProposalRefused
from tests.prevalence.domain import Add
from tests.replication.test_node import Cluster, cluster  # noqa: F401 - the fixture


def test_a_node_whose_disk_fails_on_close_still_refuses_late_callers_at_once(cluster):
    node = cluster.leader()
    real_close = node.storage.close

    def failing_close():
        real_close()
        raise OSError(errno.EIO, "Input/output error")  # fsync/write on close failed

    node.storage.close = failing_close
    with pytest.raises(OSError):
        node.stop(transfer=False)
    started = time.monotonic()
    with pytest.raises(ProposalRefused, match="stopped"):
        node.submit(Add("x", 1)).result(2)  # TimeoutError after 2 s instead
    batch = node.propose_many([(Add("x", 1), None)] * 2)
    assert batch.wait(2), "a batch sent to the stopped node waits out its whole timeout"
    assert time.monotonic() - started < 1.0

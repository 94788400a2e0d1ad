"""Fixtures of the multi-process tests."""
from __future__ import annotations

import pytest

from tests.cluster.harness import LocalCluster


@pytest.fixture
def cluster(tmp_path):
    """Three node processes with a leader elected."""
    c = LocalCluster(tmp_path, 3)
    c.leader()
    yield c
    c.stop()

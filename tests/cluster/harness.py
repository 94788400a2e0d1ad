"""The multi-process tests' cluster: rpc.localcluster with the test domain as the root."""
from __future__ import annotations

import os
from typing import Any

from rpc import localcluster
from rpc.cluster import free_port_block

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEST_ROOT = "tests.prevalence.domain:Store"
__all__ = ["LocalCluster", "ROOT", "TEST_ROOT", "free_port_block"]


class LocalCluster(localcluster.LocalCluster):
    """Nodes run in the repository, so that they import tests.prevalence.domain."""

    def __init__(self, directory: Any, nodes: int = 3, root: str = TEST_ROOT, **options: Any):
        super().__init__(str(directory), nodes, root, cwd=ROOT, **options)

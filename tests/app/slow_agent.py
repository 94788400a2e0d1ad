"""A grid node whose agent (on n3 only) answers each status call 1.3 s late, as a
loaded PC does: ``[app] plugin = "tests.app.slow_agent:attach"``."""
from __future__ import annotations

import time

from app.node import GridApp, attach as grid_attach

SLOW_NODE, DELAY = "n3", 1.3


def attach(process, settings) -> GridApp:
    app = grid_attach(process, settings)
    if process.cfg.id == SLOW_NODE:
        status = process.handlers["agent.status"]

        def slow(data: bytes) -> bytes:
            time.sleep(DELAY)
            return status(data)
        process.handlers["agent.status"] = slow
    return app

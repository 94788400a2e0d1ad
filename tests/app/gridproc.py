"""A 3x3 grid of real node processes for the end-to-end tests, up and in sync."""
from __future__ import annotations

import contextlib
from typing import Iterator

from app.local import LocalGrid, grid_view, in_sync, write_grid


@contextlib.contextmanager
def running_grid(directory: str, rows: int = 3, columns: int = 3) -> Iterator[LocalGrid]:
    """The grid with ``.c``, a client of it; every node process is stopped at the end."""
    write_grid(directory, rows, columns)
    g = LocalGrid.open(directory)
    g.start()
    g.c = g.client(timeout=20.0)
    try:
        g.wait_for("layout applied, all in sync", lambda: (v := grid_view(g.c)) and v["layout_digest"] and in_sync(v), 60)
        yield g
    finally:
        g.c.close()
        g.stop()

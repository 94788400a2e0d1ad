"""Executes Stamp transactions forever, printing each value once it is acknowledged.

    python -m tests.prevalence.crash_worker DATA_DIR FIRST_VALUE
"""
from __future__ import annotations

import sys

import prevalence
from tests.prevalence.domain import Stamp, Store


def main() -> None:
    path, value = sys.argv[1], int(sys.argv[2])
    with prevalence.open(path, Store, fsync="always", segment_bytes=4096, snapshot_every=37) as db:
        print("ready", flush=True)
        while True:
            db.execute(Stamp(str(value)))
            print(value, flush=True)
            value += 1


if __name__ == "__main__":
    main()

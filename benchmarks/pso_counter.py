"""The PySyncObj side of benchmarks/throughput_bench.py: the same counter as
tests.prevalence.domain.Add, as a PySyncObj replicated object, and a voter process.

    python3 benchmarks/pso_counter.py SELF_ADDR PARTNER_ADDR... --dir DIR

A voter keeps its journal (``journalFile``) and full dump (``fullDumpFile``) in DIR.
PySyncObj 0.3.17 has no fsync setting: its journal is an mmap that it never flushes
while running, so an entry is on disk when the OS writes the page back (it survives a
killed process, not a power cut).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from pysyncobj import SyncObj, SyncObjConf, replicated

#: Election timeout matched to our node defaults; PySyncObj requires the heartbeat
#: (appendEntriesPeriod) below a third of it (its defaults: 0.4-1.4 s and 0.1 s).
TIMEOUTS = dict(raftMinTimeout=0.25, raftMaxTimeout=0.5, appendEntriesPeriod=0.08)


class Counter(SyncObj):
    def __init__(self, self_addr: str | None, partners: list[str], conf: SyncObjConf):
        super().__init__(self_addr, partners, conf)
        self.values: dict[str, int] = {}

    @replicated
    def add(self, key: str, amount: int) -> int:
        self.values[key] = self.values.get(key, 0) + amount
        return self.values[key]


def voter_conf(directory: str, name: str, batch: bool = True) -> SyncObjConf:
    return SyncObjConf(journalFile=os.path.join(directory, f"{name}.journal"),
                       fullDumpFile=os.path.join(directory, f"{name}.dump"), appendEntriesUseBatch=batch, **TIMEOUTS)


def readonly_conf(batch: bool = True) -> SyncObjConf:
    """A non-voting member (self address None): in-memory journal, receives the log and
    forwards its commands to the leader."""
    return SyncObjConf(appendEntriesUseBatch=batch, **TIMEOUTS)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("self_addr")
    ap.add_argument("partners", nargs="+")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--no-batch", action="store_true", help="appendEntriesUseBatch=False")
    args = ap.parse_args()
    name = args.self_addr.replace(":", "_")
    obj = Counter(args.self_addr, args.partners, voter_conf(args.dir, name, not args.no_batch))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    while not done.wait(0.5):
        pass
    obj.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Engine benchmarks: durable throughput against the disk's raw fsync rate, the Python
cost per transaction, replay speed, snapshot write/load, codec cost.

    python3 benchmarks/engine_bench.py [--quick] [--repeat 3] [--dir DIR]

Each figure is the median of --repeat runs; ratios are computed inside one run so that
a noisy shared machine moves both sides together. --dir chooses the disk measured
(default: a temporary directory).
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import prevalence  # noqa: E402
from bench_domain import Bank, Catalog, Deposit  # noqa: E402  (not __main__: snapshots pickle them by name)
from prevalence.codec import CODEC  # noqa: E402
from prevalence.state import decode_command, encode_command  # noqa: E402


def raw_fsync_rate(directory: str, seconds: float) -> float:
    """One small append and one fsync per write: what a naive journal would get."""
    path = os.path.join(directory, "raw.bin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0), 0o644)
    record = b"x" * 60
    n, start = 0, time.perf_counter()
    try:
        while time.perf_counter() - start < seconds:
            os.write(fd, record)
            os.fsync(fd)
            n += 1
    finally:
        os.close(fd)
        os.remove(path)
    return n / (time.perf_counter() - start)


def durable_rate(directory: str, threads: int, seconds: float, fsync: str = "always") -> float:
    d = tempfile.mkdtemp(dir=directory)
    try:
        with prevalence.open(d, Bank, fsync=fsync) as db:
            stop = time.perf_counter() + seconds
            counts = [0] * threads

            def writer(k: int) -> None:
                tx = Deposit(f"acct-{k}", 1)
                n = 0
                while time.perf_counter() < stop:
                    db.execute(tx)
                    n += 1
                counts[k] = n

            ts = [threading.Thread(target=writer, args=(k,)) for k in range(threads)]
            start = time.perf_counter()
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            return sum(counts) / (time.perf_counter() - start)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def replay_rate(directory: str, entries: int) -> tuple[float, float]:
    """Write ``entries`` transactions (fsync=never), then time a cold open that replays them."""
    d = tempfile.mkdtemp(dir=directory)
    try:
        with prevalence.open(d, Bank, fsync="never") as db:
            for i in range(entries):
                db.execute(Deposit(f"acct-{i % 1000}", 1))
        start = time.perf_counter()
        with prevalence.open(d, Bank) as db:
            took = time.perf_counter() - start
            assert db.last_index == entries
        size = sum(os.path.getsize(os.path.join(d, "journal", f)) for f in os.listdir(os.path.join(d, "journal")))
        return entries / took, size / entries
    finally:
        shutil.rmtree(d, ignore_errors=True)


def snapshot_times(directory: str, objects: int) -> tuple[float, float, float, int]:
    """(capture s, write-to-disk s, load s, bytes) for a root of ``objects`` small objects."""
    d = tempfile.mkdtemp(dir=directory)
    try:
        with prevalence.open(d, lambda: Catalog(objects), fsync="never") as db:
            db.execute(Deposit("x", 1))  # something in the journal
            start = time.perf_counter()
            meta, body = db._sm.capture()
            capture = time.perf_counter() - start
            start = time.perf_counter()
            db.snapshot()
            write_total = time.perf_counter() - start
        gc.collect()
        start = time.perf_counter()
        with prevalence.open(d, lambda: Catalog(0)) as db:
            load = time.perf_counter() - start
            assert len(db._sm.root.items) == objects
        return capture, write_total, load, len(body)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def stage_costs(n: int) -> tuple[float, float]:
    """Microseconds per transaction for framing a record and applying it to the root."""
    from prevalence.segment import frame
    from prevalence.state import StateMachine

    data = encode_command(1, CODEC.to_plain(Deposit("alice", 10)))
    start = time.perf_counter()
    for i in range(n):
        frame(i, 0, 1, data)
    framing = (time.perf_counter() - start) / n
    sm = StateMachine(Bank())
    tx = Deposit("alice", 10)
    start = time.perf_counter()
    for i in range(n):
        sm.apply_command(i, 1, tx)
    apply = (time.perf_counter() - start) / n
    return framing * 1e6, apply * 1e6


def codec_cost(n: int) -> tuple[float, float]:
    tx = Deposit("alice", 10)
    start = time.perf_counter()
    for _ in range(n):
        data = encode_command(1, CODEC.to_plain(tx))
    enc = (time.perf_counter() - start) / n
    start = time.perf_counter()
    for _ in range(n):
        decode_command(data)
    dec = (time.perf_counter() - start) / n
    return enc * 1e6, dec * 1e6


def median(f, repeat: int):
    results = [f() for _ in range(repeat)]
    if isinstance(results[0], tuple):
        return tuple(statistics.median(r[i] for r in results) for i in range(len(results[0])))
    return statistics.median(results)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="directory on the disk to measure")
    args = ap.parse_args()
    base = args.dir or tempfile.mkdtemp(prefix="engine-bench-")
    secs = 0.5 if args.quick else 2.0
    replay_n = 50_000 if args.quick else 1_000_000
    snap_n = 50_000 if args.quick else 1_000_000
    r = args.repeat
    print(f"python {sys.version.split()[0]} on {sys.platform}, {os.cpu_count()} cores, disk: {base}")

    raw = median(lambda: raw_fsync_rate(base, secs), r)
    print(f"raw fsync rate (one write + fsync each):     {raw:10,.0f} /s")
    for threads in (1, 8, 32):
        rate = median(lambda: durable_rate(base, threads, secs), r)
        print(f"durable tx/s, fsync=always, {threads:2d} writer(s): {rate:10,.0f} /s  ({rate / raw:4.1f}x raw fsync)")
    for threads in (1, 8):
        rate = median(lambda: durable_rate(base, threads, secs, fsync="never"), r)
        print(f"tx/s, fsync=never, {threads} writer(s):          {rate:10,.0f} /s  ({1e6 / rate:5.1f} us per transaction)")
    enc, dec = median(lambda: codec_cost(50_000), r)
    print(f"codec: encode {enc:.2f} us, decode {dec:.2f} us per transaction")
    framing, apply = median(lambda: stage_costs(50_000), r)
    print(f"frame a record {framing:.2f} us, apply to the root {apply:.2f} us per transaction "
          "(the rest of a fsync=never transaction is locking, the write call and thread hand-off)")
    rate, per_entry = median(lambda: replay_rate(base, replay_n), max(1, r - 2) if not args.quick else r)
    print(f"replay of {replay_n:,} entries: {rate:10,.0f} tx/s ({per_entry:.0f} bytes per entry on disk)")
    cap, write, load, size = median(lambda: snapshot_times(base, snap_n), 1 if not args.quick else r)
    print(f"snapshot of {snap_n:,} objects ({size / 1e6:.1f} MB): capture {cap:.2f} s (writers wait this long), "
          f"write incl. capture {write:.2f} s, load on open {load:.2f} s")
    if not args.dir:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

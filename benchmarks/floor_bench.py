"""The floor under one replicated, fsynced commit on this machine, with nothing but RPyC.

    python3 benchmarks/floor_bench.py [--commands 3000] [--repeat 3] [--size 120]

Three bare RPyC ``ThreadedServer`` processes on 127.0.0.1 and a client process, no Raft,
no codec, no sessions, no authentication: the client calls the "leader" with a byte
string; the leader sends it to both "followers" (asynchronous RPyC calls), appends it to
its own file at the same time, and answers once its own write and the first follower's
reply are done; a follower appends and answers. With ``fsync`` each append is followed
by ``os.fsync``. That is the least any replicated, durable commit over RPyC costs here:
one client round trip, one leader-follower round trip, one fsync on each side in
parallel. Our sequential latency and single-caller rate are measured against it: a
rate above ``1 / floor`` would need a cheaper transport or no fsync, not a faster core.

Prints p10 / p50 / p99 per command and the single-caller rate (1 / p50) for fsync on
and off, median of ``--repeat`` runs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import rpyc
from rpyc.utils.server import ThreadedServer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE)]

from rpc.cluster import free_port_block  # noqa: E402

HOST = "127.0.0.1"
CONFIG = {"sync_request_timeout": 10}


def _appender(fsync: bool):
    directory = tempfile.mkdtemp(prefix="floor-")
    fd = os.open(os.path.join(directory, "journal"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def append(data: bytes) -> None:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    return append


def serve_follower(port: int, fsync: bool) -> None:
    append = _appender(fsync)

    class Follower(rpyc.Service):
        def exposed_deliver(self, data: bytes) -> bytes:
            append(data)
            return b"ok"

    ThreadedServer(Follower, hostname=HOST, port=port, protocol_config=CONFIG).start()


def serve_leader(port: int, follower_ports: list[int], fsync: bool) -> None:
    append = _appender(fsync)
    conns = [rpyc.connect(HOST, p, config=CONFIG) for p in follower_ports]
    delivers = [rpyc.async_(c.root.deliver) for c in conns]

    class Leader(rpyc.Service):
        def exposed_execute(self, data: bytes) -> bytes:
            for c in conns[1:]:
                c.poll_all(0)  # take in the other followers' earlier replies, never wait for them
            replies = [deliver(data) for deliver in delivers]  # both sent before the write
            append(data)
            replies[0].wait()  # the leader and one follower are a majority of three
            return b"ok"

    ThreadedServer(Leader, hostname=HOST, port=port, protocol_config=CONFIG).start()


def run(commands: int, size: int, fsync: bool) -> list[float]:
    base = free_port_block(3)
    flag = "1" if fsync else "0"
    me = os.path.abspath(__file__)
    procs = [subprocess.Popen([sys.executable, me, "--follower", str(base + k), flag]) for k in (1, 2)]
    try:
        time.sleep(0.5)
        procs.append(subprocess.Popen([sys.executable, me, "--leader", str(base), flag, str(base + 1), str(base + 2)]))
        conn = None
        for _ in range(100):
            try:
                conn = rpyc.connect(HOST, base, config=CONFIG)
                break
            except OSError:
                time.sleep(0.05)
        if conn is None:
            raise SystemExit("the leader process did not start")
        execute = conn.root.execute
        data = b"x" * size
        for _ in range(min(300, commands)):
            execute(data)
        lat = []
        for _ in range(commands):
            t = time.perf_counter()
            execute(data)
            lat.append(time.perf_counter() - t)
        conn.close()
        return sorted(lat)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--follower":
        serve_follower(int(sys.argv[2]), sys.argv[3] == "1")
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--leader":
        serve_leader(int(sys.argv[2]), [int(p) for p in sys.argv[4:]], sys.argv[3] == "1")
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commands", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size", type=int, default=120, help="bytes per command (about one journal entry)")
    args = ap.parse_args()
    print(f"{'fsync':6} {'p10 ms':>7} {'p50 ms':>7} {'p99 ms':>7} {'commits/s (1 / p50)':>20}   runs (p50 ms)")
    for fsync in (True, False):
        runs = [run(args.commands, args.size, fsync) for _ in range(args.repeat)]
        p = {q: statistics.median(r[int(len(r) * q)] for r in runs) for q in (0.1, 0.5, 0.99)}
        each = " / ".join(f"{r[len(r) // 2] * 1e3:.3f}" for r in runs)
        print(f"{'on' if fsync else 'off':6} {p[0.1] * 1e3:7.3f} {p[0.5] * 1e3:7.3f} {p[0.99] * 1e3:7.3f} "
              f"{1 / p[0.5]:20.0f}   {each}")


if __name__ == "__main__":
    main()

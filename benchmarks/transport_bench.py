"""Peer transport benchmarks on loopback (127.0.0.1 only).

    python3 benchmarks/transport_bench.py [--messages 200000] [--size 100] [--rounds 2000] [--repeat 3]

Figures:
  one-way rate    messages/s from one PeerTransport.send() loop until the receiving
                  PeerServer's on_message has seen the last one (batching + pipelining)
  batch RTT       one batch of one frame over an authenticated peer connection, sent
                  and answered, one at a time (p50 / p99)
  ping-pong RTT   node A sends through its PeerTransport, B's on_message answers through
                  B's PeerTransport, A's on_message sees the answer (p50 / p99): two
                  one-way trips through queues, sender threads and batches
Each figure is the median of --repeat runs.

    python3 benchmarks/transport_bench.py --idle-seconds 10

instead gives the CPU that one process holding a transport connected to 8 peers, and
the 8 peer servers, uses with no traffic (Unix: getrusage).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE)]

from rpc import PeerServer, PeerTransport, open_peer_channel  # noqa: E402

HOST = "127.0.0.1"
SECRET = b"benchmark-secret-0123456789abcdef"


def one_way(messages: int, size: int) -> float:
    done = threading.Event()
    count = 0

    def on_message(sender, payload):
        nonlocal count
        count += 1
        if count == messages:
            done.set()

    srv = PeerServer(HOST, 0, SECRET, on_message)
    t = PeerTransport("a", SECRET, {"b": srv.address}, queue_limit=messages + 1,
                      queue_bytes_limit=(size + 64) * messages + 1)
    try:
        while not t.peer_status()["b"]["connected"]:
            time.sleep(0.01)
        payload = b"x" * size
        t0 = time.perf_counter()
        for _ in range(messages):
            t.send("b", payload)
        if not done.wait(120):
            raise RuntimeError(f"only {count} of {messages} messages arrived")
        elapsed = time.perf_counter() - t0
        assert t.peer_status()["b"]["dropped"] == 0
        return messages / elapsed
    finally:
        t.close()
        srv.close()


def batch_rtt(rounds: int, size: int) -> tuple[float, float]:
    srv = PeerServer(HOST, 0, SECRET, lambda s, p: None)
    conn = open_peer_channel(srv.address, SECRET, ident="bench", write_timeout=5)
    try:
        batch = [b"x" * size]
        for _ in range(200):
            conn.call(batch)
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            conn.call(batch)
            samples.append(time.perf_counter() - t0)
        return _pct(samples, 50), _pct(samples, 99)
    finally:
        conn.close()
        srv.close()


def ping_pong(rounds: int, size: int) -> tuple[float, float]:
    got = threading.Event()
    holder = {}

    def on_a(sender, payload):
        got.set()

    def on_b(sender, payload):
        holder["tb"].send("a", payload)

    sa = PeerServer(HOST, 0, SECRET, on_a)
    sb = PeerServer(HOST, 0, SECRET, on_b)
    peers = {"a": sa.address, "b": sb.address}
    ta = PeerTransport("a", SECRET, peers)
    tb = holder["tb"] = PeerTransport("b", SECRET, peers)
    try:
        payload = b"p" * size
        samples = []
        for i in range(rounds + 200):
            got.clear()
            t0 = time.perf_counter()
            ta.send("b", payload)
            if not got.wait(5):
                raise RuntimeError("ping lost")
            if i >= 200:
                samples.append(time.perf_counter() - t0)
        return _pct(samples, 50), _pct(samples, 99)
    finally:
        ta.close()
        tb.close()
        sa.close()
        sb.close()


def idle_cost(peers: int, seconds: float) -> float:
    """CPU % of one core that a transport connected to ``peers`` peers, and their
    servers, use with no traffic (getrusage of this process over ``seconds``)."""
    import resource

    servers = [PeerServer(HOST, 0, SECRET, lambda s, p: None) for _ in range(peers)]
    t = PeerTransport("a", SECRET, {f"p{i}": srv.address for i, srv in enumerate(servers)})
    try:
        deadline = time.monotonic() + 5
        while not all(st["connected"] for st in t.peer_status().values()):
            if time.monotonic() > deadline:
                raise RuntimeError("peers did not connect")
            time.sleep(0.05)
        time.sleep(1.0)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        time.sleep(seconds)
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        return cpu / (t1 - t0) * 100
    finally:
        t.close()
        for srv in servers:
            srv.close()


def _pct(samples: list[float], p: int) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * p / 100))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=100, help="payload bytes")
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--idle-seconds", type=float, default=0,
                    help="instead: the idle CPU of a transport connected to 8 peers (Unix)")
    args = ap.parse_args()
    if args.idle_seconds:
        print(f"idle, 8 peers connected: {idle_cost(8, args.idle_seconds):.2f} % of one core "
              f"over {args.idle_seconds:g} s")
        return

    rates, d50, d99, p50, p99 = [], [], [], [], []
    for _ in range(args.repeat):
        rates.append(one_way(args.messages, args.size))
        a, b = batch_rtt(args.rounds, args.size)
        d50.append(a)
        d99.append(b)
        a, b = ping_pong(args.rounds, args.size)
        p50.append(a)
        p99.append(b)
    med = statistics.median
    print(f"python {sys.version.split()[0]} on {sys.platform}, {os.cpu_count()} CPUs; "
          f"payload {args.size} B, median of {args.repeat} runs")
    print(f"one-way rate      {med(rates):>10,.0f} messages/s   ({args.messages} messages)")
    print(f"batch RTT         p50 {med(d50) * 1e3:6.3f} ms   p99 {med(d99) * 1e3:6.3f} ms   ({args.rounds} batches)")
    print(f"ping-pong RTT     p50 {med(p50) * 1e3:6.3f} ms   p99 {med(p99) * 1e3:6.3f} ms   ({args.rounds} rounds)")


if __name__ == "__main__":
    main()

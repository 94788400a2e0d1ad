"""Bounded input figures (issue 15): peak RSS of a node that receives a frame announcing
4 GiB, and a 1 GB payload compressed to under 1 MB, from an authenticated client and
from an authenticated peer. The bound: idle RSS + 2 x that role's maximum frame size.

    python3 benchmarks/bounds_bench.py [--bomb-bytes 1000000000] [--push-mb 256] [--code DIR]

Three node processes on 127.0.0.1; the leader is attacked. Before each attack its peak
RSS (VmHWM) is reset to its current RSS (/proc/<pid>/clear_refs), so the figure is the
peak the attack caused. The 4 GiB frame's sender then pushes up to --push-mb of body as
fast as the node takes it. --code runs the nodes from another checkout (e.g. an older
commit, for a "before" figure; keep --bomb-bytes small there: it inflates it all).
Linux only (reads /proc).
"""
from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import tempfile
import threading
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT]

import rpc.secret  # noqa: E402
import rpc.transport as transport  # noqa: E402
from rpc.auth import client_handshake  # noqa: E402
from rpc.localcluster import LocalCluster  # noqa: E402
from rpc.secret import load_secret  # noqa: E402

DOMAIN_ROOT = "tests.prevalence.domain:Store"
HEADER = struct.Struct("!LB")  # RPyC's frame header: length, compressed flag
LIMIT = {"client": transport.CLIENT_MAX_FRAME, "peer": transport.PEER_MAX_FRAME}


def kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


def key(c: LocalCluster, role: str) -> bytes:
    if role == "client":
        return c.secret
    return load_secret(os.path.join(c.dir, getattr(rpc.secret, "KEY_FILES", {}).get(role, "cluster.secret")))


def authenticated(c: LocalCluster, nid: str, role: str) -> socket.socket:
    sock = socket.create_connection(c.configs[nid].listen, timeout=5.0)
    return client_handshake(sock, key(c, role), role, "n2" if role == "peer" else "bench", timeout=5.0)


def wait_closed(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the node closes ``sock`` (None: still open after ``timeout``)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        sock.settimeout(max(0.01, timeout - (time.monotonic() - t0)))
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - t0
        except socket.timeout:
            return None
        except OSError:
            return time.monotonic() - t0
    return None


def compressed_zeros(n: int) -> bytes:
    z = zlib.compressobj(9)
    chunk = b"\0" * (1 << 20)
    parts, left = [], n
    while left > 0:
        parts.append(z.compress(chunk[:min(left, len(chunk))]))
        left -= len(chunk)
    return b"".join(parts) + z.flush()


def attack_4gib(c: LocalCluster, nid: str, role: str, push_mb: int) -> dict:
    sock = authenticated(c, nid, role)
    sent = 0

    def push() -> None:
        nonlocal sent
        junk = b"\xaa" * (1 << 20)
        try:
            for _ in range(push_mb):
                sock.sendall(junk)
                sent += len(junk)
        except OSError:
            pass

    try:
        sock.sendall(HEADER.pack(0xFFFFFFFF, 0))
        t = threading.Thread(target=push, daemon=True)
        t.start()
        closed = wait_closed(sock, 30.0)
        t.join(30)
    finally:
        sock.close()
    return {"closed_after_s": closed, "body_sent_mb": sent >> 20}


def attack_bomb(c: LocalCluster, nid: str, role: str, body: bytes) -> dict:
    sock = authenticated(c, nid, role)
    try:
        try:
            sock.sendall(HEADER.pack(len(body), 1) + body + b"\n")
        except OSError:
            pass
        closed = wait_closed(sock, 60.0)
    finally:
        sock.close()
    return {"closed_after_s": closed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bomb-bytes", type=int, default=1_000_000_000, help="zeros before compression (1 GB)")
    ap.add_argument("--push-mb", type=int, default=256, help="body pushed after the 4 GiB header at most")
    ap.add_argument("--code", default=ROOT, help="the checkout the nodes run from (default: this one)")
    args = ap.parse_args()
    if not sys.platform.startswith("linux"):
        print("Linux only (reads /proc)", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    bomb = compressed_zeros(args.bomb_bytes)
    print(f"bomb: {args.bomb_bytes:,} bytes of zeros compressed to {len(bomb):,} bytes "
          f"({time.monotonic() - t0:.1f} s to make)")
    with tempfile.TemporaryDirectory() as d:
        c = LocalCluster(d, 3, DOMAIN_ROOT, cwd=args.code)
        try:
            nid = c.leader()
            pid = c.procs[nid].pid
            time.sleep(1.0)
            rows = []
            bomb_name = f"{args.bomb_bytes / 1e6:,.0f} MB of zeros compressed to {len(bomb) / 1e6:.2f} MB"
            for what in ("4 GiB announced", bomb_name):
                for role in ("client", "peer"):
                    idle = kb(pid, "VmRSS")
                    reset_peak(pid)
                    if what == "4 GiB announced":
                        extra = attack_4gib(c, nid, role, args.push_mb)
                    else:
                        extra = attack_bomb(c, nid, role, bomb)
                    time.sleep(0.2)
                    peak = kb(pid, "VmHWM")
                    c.check_alive()
                    bound = idle + 2 * LIMIT[role] // 1024
                    rows.append((what, role, idle, peak, bound, extra))
                    c.leader()  # still serving
            print(f"\nnode {nid} (pid {pid}), frame limits: client {LIMIT['client'] >> 20} MiB, "
                  f"peer {LIMIT['peer'] >> 20} MiB\n")
            print("| input | role | idle RSS | peak RSS | bound (idle + 2 x frame limit) | within | node closed it after |")
            print("|---|---|---|---|---|---|---|")
            for what, role, idle, peak, bound, extra in rows:
                closed = extra["closed_after_s"]
                pushed = f" ({extra['body_sent_mb']} MiB of body sent)" if "body_sent_mb" in extra else ""
                print(f"| {what} | {role} | {idle / 1024:.1f} MiB | {peak / 1024:.1f} MiB | {bound / 1024:.1f} MiB | "
                      f"{'yes' if peak <= bound else 'NO'} | "
                      f"{'%.3f s' % closed if closed is not None else 'still open'}{pushed} |")
        finally:
            c.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the hostile-input tests share: the keys a party of each role holds, raw
authenticated sockets and RPyC frames, and the checks that a node still serves."""
from __future__ import annotations

import os
import socket
import struct
import sys
import time

import rpc.secret
from prevalence.codec import CODEC
from rpc.auth import client_handshake
from rpc.secret import load_secret
from rpc.transport import NodeLink
from tests.cluster.harness import LocalCluster
from tests.prevalence.domain import Add, Get

HEADER = struct.Struct("!LB")  # RPyC's frame header: length, compressed flag


def key(c: LocalCluster, role: str) -> bytes:
    """The key a party of ``role`` holds: the cluster's one secret, or its role's key file."""
    if role == "client":
        return c.secret  # LocalCluster's key for operator programs
    name = getattr(rpc.secret, "KEY_FILES", {}).get(role, "cluster.secret")
    return load_secret(os.path.join(c.dir, name))


def authenticated(c: LocalCluster, nid: str, role: str, ident: str | None = None) -> socket.socket:
    """A socket past the handshake, as ``role``: what follows is RPyC frames."""
    sock = socket.create_connection(c.configs[nid].listen, timeout=2.0)
    ident = ident or ("n2" if role == "peer" else "hostile")
    return client_handshake(sock, key(c, role), role, ident, timeout=2.0)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True if the other side closes ``sock`` within ``seconds`` (whatever it sends first)."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            if sock.recv(65536) == b"":
                return True
        except socket.timeout:
            return False
        except OSError:
            return True


def proc_kb(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` figure in KiB (VmRSS, VmHWM); Linux only."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def reset_peak(pid: int) -> None:
    """Start VmHWM (peak RSS) afresh from the current RSS (Linux >= 4.0)."""
    with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


class Target:
    """The attacked node and what must hold after every case: it answers status and a
    real execute within 1 s each, its state is what the checks themselves made it, and
    (on Linux) its RSS stays under idle RSS + ``rss_margin``."""

    def __init__(self, c: LocalCluster, nid: str, rss_margin: int = 64 << 20):
        self.c, self.nid = c, nid
        self.pid = c.procs[nid].pid
        self.link = NodeLink(c.configs[nid].listen, key(c, "client"), ident="checker", timeout=1.0)
        self.probes = self._probes()
        self.value = self.link.call("query", CODEC.dumps(Get("x")))[1]
        self.rss_margin = rss_margin
        self.idle_rss = None
        self.cases = 0
        if sys.platform.startswith("linux"):
            for _ in range(20):  # warm the paths the checks take before measuring
                self.check("warm-up")
            self.idle_rss = proc_kb(self.pid, "VmRSS") * 1024
        self.peak_rss = self.idle_rss

    def _probes(self) -> int:
        reply = self.link.call("query", CODEC.dumps(Get("probe")))
        return reply[1] or 0

    def check(self, case: object) -> None:
        self.cases += 1
        try:
            for what, call in (("status", lambda: self.link.call("status")),
                               ("execute", lambda: self.link.call("execute", CODEC.dumps(Add("probe", 1))))):
                t0 = time.monotonic()
                reply = call()
                took = time.monotonic() - t0
                assert took < 1.0, f"{what} took {took:.2f} s"
                if what == "status":
                    assert reply[0] == "ok", reply
                else:
                    self.probes += 1
                    assert reply == ["ok", self.probes], reply
            reply = self.link.call("query", CODEC.dumps(Get("x")))
            assert reply == ["ok", self.value], f"the state changed: x is {reply}"
        except Exception as exc:
            self.c.check_alive()
            raise AssertionError(f"after case {case!r:.300}: {type(exc).__name__}: {exc}") from None
        if self.idle_rss is not None:
            rss = proc_kb(self.pid, "VmRSS") * 1024
            self.peak_rss = max(self.peak_rss, rss)
            assert rss < self.idle_rss + self.rss_margin, (
                f"after case {case!r:.300}: RSS {rss >> 20} MiB, idle {self.idle_rss >> 20} MiB")

    def close(self) -> None:
        self.link.close()


class CreatesFile:
    """A pickle whose loading creates ``path``: proof that a snapshot ran code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def handshake_frame(sock: socket.socket) -> bytes:
    """One handshake frame, header included, as it came."""
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack("!I", data[:4])[0]:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("closed")
        data += chunk
    return data

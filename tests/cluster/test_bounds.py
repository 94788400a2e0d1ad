"""Bounded input against real node processes (issue 15, item 3): a compressed bomb and a
frame announcing 4 GiB leave a node within idle RSS + 2 x the frame limit, and a node
that runs out of file descriptors keeps listening."""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
import zlib

import msgpack
import pytest

import rpc.transport as transport
from prevalence._platform import child_dies_with_parent
from prevalence.codec import CODEC
from rpc.channel import frame
from rpc.cluster import start_node
from rpc.transport import NodeLink
from tests.cluster.attack import HEADER, authenticated, closed_within, key, proc_kb, reset_peak
from tests.cluster.harness import ROOT, LocalCluster
from tests.prevalence.domain import Add, Get, Tags

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sys.platform != "linux", reason="reads /proc, sets RLIMIT_NOFILE in a child")]

# the frame limits by role (the defaults, also to run this against code without them)
LIMIT = {"client": getattr(transport, "CLIENT_MAX_FRAME", 4 << 20), "peer": getattr(transport, "PEER_MAX_FRAME", 16 << 20)}


def serves(c: LocalCluster, nid: str, value: int) -> bool:
    """The node answers status and a real execute within 1 s each."""
    with NodeLink(c.configs[nid].listen, key(c, "client"), timeout=1.0) as link:
        assert link.call("status")[0] == "ok"
        reply = link.call("execute", CODEC.dumps(Add("probe", 1)))
    assert reply == ["ok", value], reply
    return True


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    c = LocalCluster(tmp_path_factory.mktemp("bounds"), 1)
    leader = c.leader()
    c.probes = 0
    yield c, leader
    c.stop()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """128 MiB of zeros, compressed to ~130 KB."""
    z = zlib.compressobj(9)
    chunk = b"\0" * (1 << 20)
    return b"".join(z.compress(chunk) for _ in range(128)) + z.flush()


def idle_rss(pid: int) -> int:
    time.sleep(0.3)
    return proc_kb(pid, "VmRSS") * 1024


@pytest.mark.parametrize("role", ["client", "peer"])
def test_a_compressed_bomb_leaves_the_node_within_its_memory_bound(node, bomb, role):
    """195 KB of compressed bytes once took a node to 619 MB in 1.6 s."""
    c, nid = node
    pid = c.procs[nid].pid
    idle = idle_rss(pid)
    reset_peak(pid)
    sock = authenticated(c, nid, role)
    try:
        t0 = time.monotonic()
        try:
            sock.sendall(HEADER.pack(len(bomb), 1) + bomb + b"\n")
        except OSError:
            pass  # refused from the header on: what we want
        closed = closed_within(sock, 10.0)
        took = time.monotonic() - t0
    finally:
        sock.close()
    peak = proc_kb(pid, "VmHWM") * 1024
    assert peak <= idle + 2 * LIMIT[role], f"peak {peak >> 20} MiB, idle {idle >> 20} MiB"
    assert closed and took < 1.0, (closed, took)
    c.probes += 1
    assert serves(c, nid, c.probes)


@pytest.mark.parametrize("role", ["client", "peer"])
def test_a_frame_announcing_4_gib_is_refused_at_its_header(node, role):
    """RPyC read any announced length: a sender that announced 4 GiB and then trickled
    (or went silent) grew the node, or held a thread, for as long as it liked."""
    c, nid = node
    pid = c.procs[nid].pid
    idle = idle_rss(pid)
    reset_peak(pid)
    sock = authenticated(c, nid, role)
    sent = 0

    def push() -> None:  # 96 MiB of body, as fast as the node takes it
        nonlocal sent
        junk = b"\xaa" * (1 << 20)
        try:
            for _ in range(96):
                sock.sendall(junk)
                sent += len(junk)
        except OSError:
            pass

    try:
        sock.sendall(HEADER.pack(0xFFFFFFFF, 0))
        pusher = threading.Thread(target=push, daemon=True)
        pusher.start()
        assert closed_within(sock, 1.0), "the node kept reading a 4 GiB frame"
        pusher.join(10)
    finally:
        sock.close()
    peak = proc_kb(pid, "VmHWM") * 1024
    assert peak <= idle + 2 * LIMIT[role], f"peak {peak >> 20} MiB, idle {idle >> 20} MiB, {sent >> 20} MiB sent"
    c.probes += 1
    assert serves(c, nid, c.probes)


def test_a_node_out_of_file_descriptors_keeps_listening(tmp_path):
    """RPyC's accept loop closed the listener for good on EMFILE (reproduced with
    ulimit -n 64 and 80 half-open connections): the node never listened again."""
    c = LocalCluster(tmp_path, 1, start=False)
    cfg = c.configs["n1"]
    die_with_us = child_dies_with_parent()

    def small_fd_limit() -> None:  # in the child, before exec
        import resource

        if die_with_us is not None:
            die_with_us()
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    c.procs["n1"] = start_node(cfg.path, os.path.join(c.dir, "n1.log"), cwd=ROOT, preexec_fn=small_fd_limit)
    try:
        c.leader()
        assert serves(c, "n1", 1)
        half_open = []
        try:
            for _ in range(100):  # connect, never speak: each holds a descriptor on the node
                half_open.append(socket.create_connection(cfg.listen, timeout=2.0))
            time.sleep(1.5)  # the node meets EMFILE meanwhile
        finally:
            for s in half_open:
                s.close()
        c.check_alive()
        c.wait_for("the node to serve again", lambda: serves(c, "n1", 2), 10.0)
        with NodeLink(cfg.listen, key(c, "client"), timeout=1.0) as link:
            assert msgpack.unpackb(msgpack.packb(link.call("query", CODEC.dumps(Get("probe"))))) == ["ok", 2]
        log = c.log("n1")
        assert "Too many open files" in log
        assert log.count("cannot accept connections") == 1, log  # once, not per attempt
        assert "accepting connections on" in log and "again" in log
    finally:
        c.stop()


def test_a_follower_far_behind_catches_up_within_the_frame_limits(tmp_path):
    """A leader answering a follower's ack steps it on the receiving thread, and what it
    then sends that follower goes back as the reply: after a probe succeeds, a whole
    window of appends (up to 256 x 1 MiB). The reply is one frame, so it must stay under
    the peer frame limit, or the follower refuses it and never catches up."""
    c = LocalCluster(tmp_path, 3)
    try:
        leader = c.leader()
        behind = next(n for n in c.configs if n != leader)
        c.kill(behind)
        blob = b"\x5a" * 700_000
        with c.client(timeout=30) as client:
            for k in range(40):  # 28 MB of log the follower lacks
                client.execute(Tags(f"k{k}", blob=blob))
        c.start(behind)
        c.wait_converged(behind, timeout=30)
        assert "bytes announced, limit" not in c.log(behind) + c.log(leader)
    finally:
        c.stop()


def test_a_request_of_countless_small_objects_leaves_the_node_within_its_memory_bound(node):
    """RPyC decodes a request before any method sees it, and brine builds an empty
    frozenset (216 bytes) from 2: a client frame of 4 MiB of them took a node to
    470 MB. Its shape is read first now: refused, nothing of it is built."""
    c, nid = node
    pid = c.procs[nid].pid
    idle = idle_rss(pid)
    reset_peak(pid)
    count = (LIMIT["client"] - 64) // 2
    # a request (message type 1) for (seq 1, (ping, (frozenset(), frozenset(), ...)))
    body = (b"\x01" + b"\x11\x51" + b"\x11\x51" + b"\x10" + b"\x15" + count.to_bytes(4, "big")
            + b"\x1a\x02" * count)
    sock = authenticated(c, nid, "client")
    try:
        t0 = time.monotonic()
        try:
            sock.sendall(frame(body))
        except OSError:
            pass
        closed = closed_within(sock, 10.0)
        took = time.monotonic() - t0
    finally:
        sock.close()
    peak = proc_kb(pid, "VmHWM") * 1024
    assert peak <= idle + 2 * LIMIT["client"], f"peak {peak >> 20} MiB, idle {idle >> 20} MiB"
    assert closed and took < 2.0, (closed, took)  # not after a polite close waiting 5 s for garbage
    line = "closed: malformed message (ValueError: request of more than 8,192 values"
    deadline = time.monotonic() + 5  # logged once the connection is closed: a moment later
    while line not in c.log(nid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert line in c.log(nid)
    c.probes += 1
    assert serves(c, nid, c.probes)


def test_failed_requests_do_not_pile_up_in_memory(node):
    """RPyC keeps a failed request's traceback, whose frames hold the request's
    arguments in a reference cycle: only the cyclic GC freed them, much later. Thirty
    failing 3 MiB requests grew a node by 150 MiB that way."""
    c, nid = node
    pid = c.procs[nid].pid
    idle = idle_rss(pid)
    big = b"\0" * (3 << 20)
    conn = transport.open_connection(c.configs[nid].listen, key(c, "client"), role="client", ident="big",
                                     request_timeout=5.0)
    try:
        status = transport.remote_method(conn, "status")
        for _ in range(30):
            with pytest.raises(TypeError):
                status(big)  # takes no argument: a remote TypeError, its traceback kept
    finally:
        conn.close()
    time.sleep(0.2)
    rss = proc_kb(pid, "VmRSS") * 1024
    assert rss < idle + (32 << 20), f"RSS {rss >> 20} MiB after failed requests, idle {idle >> 20} MiB"
    c.probes += 1
    assert serves(c, nid, c.probes)

import logging
import socket
import sys
import threading
import time

import msgpack
import pytest
import rpyc
from rpyc.core import brine, consts

from prevalence.errors import PrevalenceError
from rpc import (
    AuthenticationFailed, ConnectFailed, PeerServer, PeerTransport, TransportError, open_connection, open_peer_channel,
)
from rpc.auth import ServerAuthenticator
from rpc.wire import encode_batch

from .conftest import ADMIN_SECRET, CLIENT_SECRET, HOST, KEYS, OTHER_SECRET, SECRET, Inbox, free_port, wait_until


def closed_by_server(sock) -> bool:
    try:
        return sock.recv(100) == b""
    except (ConnectionResetError, ConnectionAbortedError):
        return True


def threads_named(prefix):
    return [t for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


# ------------------------------------------------------------------ delivery


def test_two_nodes_exchange_thousands_in_order(make_server, make_transport):
    inbox_a, inbox_b = Inbox(), Inbox()
    srv_a, srv_b = make_server(inbox_a), make_server(inbox_b)
    ta = make_transport("a", {"a": srv_a.address, "b": srv_b.address})
    tb = make_transport("b", {"a": srv_a.address, "b": srv_b.address})
    n = 5000

    def pump(t, to, tag):
        for i in range(n):
            t.send(to, b"%s-%d" % (tag, i))

    threads = [threading.Thread(target=pump, args=(ta, "b", b"A")), threading.Thread(target=pump, args=(tb, "a", b"B"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert inbox_b.wait_count(n) and inbox_a.wait_count(n)
    assert inbox_b.payloads("a") == [b"A-%d" % i for i in range(n)]
    assert inbox_a.payloads("b") == [b"B-%d" % i for i in range(n)]
    assert {s for s, _ in inbox_a.messages} == {"b"} and {s for s, _ in inbox_b.messages} == {"a"}
    assert wait_until(lambda: ta.peer_status()["b"]["delivered"] == n)
    st = ta.peer_status()
    assert set(st) == {"b"}  # self is not a peer
    assert st["b"]["connected"] and st["b"]["dropped"] == 0 and st["b"]["failed"] == 0
    assert st["b"]["sent"] == n and st["b"]["queued"] == 0


def test_batches_use_few_calls(make_server, make_transport, monkeypatch):
    """Many small messages are coalesced: far fewer batches than messages."""
    calls = []
    inbox = Inbox()
    srv = make_server(inbox)
    import rpc.peer_server as ps

    original = ps._PeerInbox.take

    def counting(self, frames):
        calls.append(len(frames))
        return original(self, frames)

    monkeypatch.setattr(ps._PeerInbox, "take", counting)
    t = make_transport("a", {"b": srv.address})
    assert wait_until(lambda: t.peer_status()["b"]["connected"])
    for i in range(3000):
        t.send("b", b"x%d" % i)
    assert inbox.wait_count(3000)
    assert len(calls) < 1000, len(calls)


def test_send_never_blocks_and_dead_peer_does_not_stall_live_one(make_server, make_transport, caplog):
    caplog.set_level(logging.INFO, logger="rpc.transport")
    inbox = Inbox()
    live = make_server(inbox)
    dead_port = free_port()
    t = make_transport("a", {"live": live.address, "dead": (HOST, dead_port)}, queue_limit=2000)
    t0 = time.perf_counter()
    for i in range(3000):
        t.send("dead", b"d%d" % i)
        if i < 2000:
            t.send("live", b"l%d" % i)
    assert time.perf_counter() - t0 < 0.5  # 5000 sends, no I/O on the caller's thread
    assert inbox.wait_count(2000, timeout=10)
    assert inbox.payloads() == [b"l%d" % i for i in range(2000)]
    time.sleep(1.0)  # several reconnect attempts to the dead peer
    st = t.peer_status()["dead"]
    assert not st["connected"]
    # oldest dropped and counted (down to DOWN_QUEUE_LIMIT once the peer is known down)
    assert st["queued"] <= 2000 and st["queued"] + st["dropped"] == 3000
    assert f"{HOST}:{dead_port}" in st["last_error"] and "cannot connect" in st["last_error"]
    down_lines = [r for r in caplog.records if "peer dead" in r.getMessage() and "down" in r.getMessage()]
    assert len(down_lines) == 1, [r.getMessage() for r in down_lines]  # one per transition, not per attempt
    up_lines = [r for r in caplog.records if "peer live" in r.getMessage() and r.getMessage().endswith(" up")]
    assert len(up_lines) == 1


def test_unknown_peer_and_bad_payload(make_transport, caplog):
    t = make_transport("a", {})
    t.send("ghost", b"x")
    t.send("ghost", b"y")
    assert sum("unknown peer 'ghost'" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(TransportError, match="payload must be bytes"):
        t.send("ghost", "text")
    with pytest.raises(TransportError, match="address must be"):
        t.set_peers({"b": "127.0.0.1:7100"})
    with pytest.raises(PrevalenceError, match="too short"):
        make_transport("a", {}, secret=b"short")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="relies on Linux dropping SYNs to a full backlog")
def test_connect_timeout_is_short_when_syns_are_dropped():
    """A host that never answers the SYN (like a powered-off PC) costs connect_timeout, not ~18 s."""
    ls = socket.socket()
    ls.bind((HOST, 0))
    ls.listen(0)
    fillers = []
    try:
        # fill the accept queue so further SYNs are dropped
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(ls.getsockname())
            fillers.append(s)
        time.sleep(0.1)
        t0 = time.monotonic()
        address = ls.getsockname()
        with pytest.raises(ConnectFailed) as ei:
            open_peer_channel(address, SECRET, ident="a", connect_timeout=0.3)
        elapsed = time.monotonic() - t0
    finally:
        for s in fillers:
            s.close()
        ls.close()
    assert elapsed < 1.5
    assert f"{HOST}:{address[1]}" in str(ei.value)
    assert "timed out after 0.3 s" in str(ei.value) or "handshake not answered" in str(ei.value)


def test_restarted_peer_is_reconnected(make_server, make_transport):
    inbox = Inbox()
    srv = make_server(inbox)
    port = srv.address[1]
    t = make_transport("a", {"b": srv.address})
    t.send("b", b"before")
    assert inbox.wait_for_payload(b"before")
    srv.close()
    assert wait_until(lambda: not t.peer_status()["b"]["connected"], timeout=5)
    for i in range(10):
        t.send("b", b"while-down-%d" % i)
    inbox2 = Inbox()
    make_server(inbox2, port=port)
    i = 0

    def probe():
        nonlocal i
        i += 1
        t.send("b", b"after-%d" % i)
        return bool(inbox2.payloads())

    assert wait_until(probe, timeout=5, interval=0.05)
    assert inbox2.wait_for_payload(b"after-%d" % i, timeout=5)
    st = t.peer_status()["b"]
    assert st["connected"] and st["reconnects"] >= 1
    got = inbox2.payloads()
    # whatever survived is in order: queued-while-down first, then the probes
    assert got == sorted(got, key=lambda p: (not p.startswith(b"while"), int(p.rsplit(b"-", 1)[1])))


def test_hung_peer_is_detected_and_does_not_stall_others(make_server, make_transport, caplog):
    caplog.set_level(logging.WARNING, logger="rpc.transport")
    release = threading.Event()
    hung_calls = []

    def hang(sender, payload):
        hung_calls.append(payload)
        release.wait(20)

    hung = make_server(hang)
    inbox = Inbox()
    live = make_server(inbox)
    t = make_transport("a", {"hung": hung.address, "live": live.address}, request_timeout=0.5)
    try:
        t.send("hung", b"first")
        assert wait_until(lambda: hung_calls, timeout=5)
        t0 = time.monotonic()
        for i in range(1000):
            t.send("hung", b"h%d" % i)
            t.send("live", b"l%d" % i)
        assert time.monotonic() - t0 < 0.5
        assert inbox.wait_count(1000, timeout=5)
        assert inbox.payloads() == [b"l%d" % i for i in range(1000)]
        assert wait_until(lambda: "no answer within 0.5 s" in (t.peer_status()["hung"]["last_error"] or ""), timeout=5)
        assert any("peer hung" in r.getMessage() and "down" in r.getMessage() for r in caplog.records)
        assert t.peer_status()["hung"]["failed"] >= 1
    finally:
        release.set()


def test_peer_that_accepts_but_never_answers(make_transport, make_server):
    """A process paused before or after the handshake: connects time out, others flow."""
    silent = socket.socket()
    silent.bind((HOST, 0))
    silent.listen(16)
    authed = socket.socket()
    authed.bind((HOST, 0))
    authed.listen(16)
    held = []
    stop = threading.Event()

    def accept_and_hold(ls, authenticate):
        ls.settimeout(0.1)
        while not stop.is_set():
            try:
                s, _ = ls.accept()
            except OSError:
                continue
            if authenticate:
                try:
                    s, _ = ServerAuthenticator(KEYS, timeout=2)(s)
                except Exception:
                    pass
            held.append(s)  # never read, never answer

    threads = [threading.Thread(target=accept_and_hold, args=(silent, False), daemon=True),
               threading.Thread(target=accept_and_hold, args=(authed, True), daemon=True)]
    for th in threads:
        th.start()
    inbox = Inbox()
    live = make_server(inbox)
    try:
        t = make_transport("a", {"silent": silent.getsockname(), "authed": authed.getsockname(),
                                 "live": live.address},
                           handshake_timeout=0.3, request_timeout=0.3)
        for i in range(200):
            t.send("silent", b"s")
            t.send("authed", b"x" * 100_000)  # big: fills the socket buffers of a peer that never reads
            t.send("live", b"l%d" % i)
        assert inbox.wait_count(200, timeout=5)
        assert wait_until(lambda: t.peer_status()["silent"]["last_error"] is not None, timeout=5)
        assert wait_until(lambda: t.peer_status()["authed"]["last_error"] is not None, timeout=5)
        st = t.peer_status()
        assert "handshake not answered within 0.3 s" in st["silent"]["last_error"]
        assert not st["silent"]["connected"] and not st["authed"]["connected"]
        t0 = time.monotonic()
        t.close()
        assert time.monotonic() - t0 < 2.0
    finally:
        stop.set()
        for th in threads:
            th.join(2)
        for s in held:
            s.close()
        silent.close()
        authed.close()


# ------------------------------------------------------------------ authentication at the transport level


def test_wrong_secret_refused_with_clear_errors(make_server, make_transport, caplog):
    caplog.set_level(logging.WARNING)
    inbox = Inbox()
    srv = make_server(inbox)
    where = f"{HOST}:{srv.address[1]}"
    with pytest.raises(AuthenticationFailed, match=rf"{where} refused our authentication.*wrong key"):
        open_peer_channel(srv.address, OTHER_SECRET, ident="intruder")
    t = make_transport("a", {"b": srv.address}, secret=OTHER_SECRET)
    t.send("b", b"nope")
    assert wait_until(lambda: t.peer_status()["b"]["last_error"] is not None)
    st = t.peer_status()["b"]
    assert not st["connected"] and where in st["last_error"] and "refused" in st["last_error"]
    time.sleep(0.2)
    assert inbox.messages == []
    server_lines = [r.getMessage() for r in caplog.records if r.name == "rpc.auth"]
    assert any(m.startswith(f"refused connection from {HOST}:") and "'intruder'" in m and "wrong key" in m
               for m in server_lines), server_lines
    assert any("peer b at" in r.getMessage() and "down" in r.getMessage() for r in caplog.records)


def test_raw_garbage_and_silent_clients_are_dropped_server_keeps_serving(make_server, make_transport):
    inbox = Inbox()
    srv = make_server(inbox, handshake_timeout=0.5)
    garbage = socket.create_connection(srv.address, timeout=3)
    silent = socket.create_connection(srv.address, timeout=3)
    try:
        garbage.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        t0 = time.monotonic()
        assert closed_by_server(garbage)  # refused and closed at once
        assert time.monotonic() - t0 < 1.0
        t = make_transport("a", {"b": srv.address})
        t.send("b", b"hello")  # served while the silent client still waits
        assert inbox.wait_for_payload(b"hello", timeout=3)
        t0 = time.monotonic()
        assert closed_by_server(silent)
        assert time.monotonic() - t0 < 1.5
        t.send("b", b"still")
        assert inbox.wait_for_payload(b"still", timeout=3)
    finally:
        garbage.close()
        silent.close()


# ------------------------------------------------------------------ roles and RPyC settings


def test_client_role_cannot_call_deliver(make_server):
    inbox = Inbox()
    srv = make_server(inbox)
    conn = open_connection(srv.address, CLIENT_SECRET, role="client", ident="c1", request_timeout=2)
    try:
        root = conn.root
        with pytest.raises(AttributeError):
            root.deliver
        with pytest.raises(AttributeError):
            root.exposed_deliver
        with pytest.raises(AttributeError):
            conn.sync_request(consts.HANDLE_CALLATTR, root, "deliver", (encode_batch([b"x"]),), ())
    finally:
        conn.close()
    time.sleep(0.1)
    assert inbox.messages == []


def test_a_peer_speaks_batches_and_nothing_else(make_server, caplog):
    """A connection with the peer key gets no RPyC: its batches reach on_message in
    order and each is answered; an RPyC request, bytes that are not a batch, or a batch
    of more than 1,024 messages, end that connection with a line naming the peer, and the node serves the next one."""
    caplog.set_level(logging.WARNING, logger="rpc.transport")
    inbox = Inbox()
    srv = make_server(inbox)
    with open_peer_channel(srv.address, SECRET, ident="n9") as conn:
        assert conn.call([b"one", b"two"]) == []
        assert conn.call([]) == []
    assert inbox.messages == [("n9", b"one"), ("n9", b"two")]
    rpyc_request = brine.dump((consts.MSG_REQUEST, 1, (consts.HANDLE_GETROOT, ())))
    for blob in (rpyc_request, b"\xc1 not msgpack", encode_batch(["text, not bytes"]), b"\x07",
                 msgpack.packb([[b"nested"]]), msgpack.packb({b"a": b"b"}), encode_batch([b"x"] * 1025)):
        with open_peer_channel(srv.address, SECRET, ident="n9") as conn:
            conn.channel.send(blob)
            with pytest.raises(EOFError):
                conn.poll(2.0) and conn.recv()
    lines = [r.getMessage() for r in caplog.records if "peer 'n9'" in r.getMessage()]
    assert len(lines) == 7 and all("closed" in line for line in lines), lines
    assert inbox.messages == [("n9", b"one"), ("n9", b"two")]
    with open_peer_channel(srv.address, SECRET, ident="n9") as conn:
        assert conn.call([b"three"]) == []
    assert inbox.wait_for_payload(b"three")


def test_on_message_errors_stay_local(make_server, make_transport, caplog):
    def boom(sender, payload):
        if payload == b"bad":
            raise RuntimeError("core bug")
        inbox(sender, payload)

    inbox = Inbox()
    srv = make_server(boom)
    t = make_transport("a", {"b": srv.address})
    t.send("b", b"bad")
    t.send("b", b"good")
    assert inbox.wait_for_payload(b"good")
    assert t.peer_status()["b"]["failed"] == 0
    assert any("on_message failed" in r.getMessage() for r in caplog.records)


def test_service_extra_hook_for_clients(make_server):
    class ClientService(rpyc.Service):
        def __init__(self, identity):
            self.identity = identity

        def exposed_whoami(self):
            return f"{self.identity.role}:{self.identity.id}"

        def exposed_big(self):
            return b"z" * 200_000

    srv = make_server(Inbox(), service_extra=ClientService)
    conn = open_connection(srv.address, CLIENT_SECRET, role="client", ident="ui-1", request_timeout=2)
    try:
        assert conn.root.whoami() == "client:ui-1"
        assert conn.root.big() == b"z" * 200_000
    finally:
        conn.close()
    admin = open_connection(srv.address, ADMIN_SECRET, role="admin", ident="ops", request_timeout=2)
    try:
        assert admin.root.whoami() == "admin:ops"  # the same service, told the role
    finally:
        admin.close()


def test_no_zlib_and_nodelay(make_server, make_transport, monkeypatch):
    import rpyc.core.channel as channel

    def no_zlib(*a, **k):
        raise AssertionError("zlib used")

    monkeypatch.setattr(channel.zlib, "compress", no_zlib)

    class Big(rpyc.Service):
        def __init__(self, identity):
            pass

        def exposed_big(self):
            return b"\x00" * 100_000  # server -> client, far above RPyC's 3000-byte threshold

    inbox = Inbox()
    srv = make_server(inbox, service_extra=Big)
    t = make_transport("a", {"b": srv.address})
    t.send("b", b"\x00" * 100_000)  # client -> server
    assert inbox.wait_count(1)
    conn = open_connection(srv.address, CLIENT_SECRET, role="client", ident="c", request_timeout=2)
    try:
        assert conn.root.big() == b"\x00" * 100_000
        sock = conn._channel.stream.sock
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert conn._channel.compress is False
    finally:
        conn.close()


# ------------------------------------------------------------------ membership, status, shutdown


def test_set_peers_add_move_remove(make_server, make_transport):
    inbox1, inbox2 = Inbox(), Inbox()
    s1, s2 = make_server(inbox1), make_server(inbox2)
    t = make_transport("a", {"b": (HOST, free_port())})
    t.send("b", b"lost-or-late")
    t.set_peers({"b": s1.address, "c": s2.address})
    t.send("b", b"to-s1")
    t.send("c", b"to-s2")
    assert inbox1.wait_for_payload(b"to-s1") and inbox2.wait_for_payload(b"to-s2")
    t.set_peers({"b": s2.address})  # b moved to s2's address, c removed
    assert "c" not in t.peer_status()
    assert wait_until(lambda: not [th for th in threads_named("rpc-send-c")], timeout=3)
    t.send("b", b"moved")
    assert inbox2.wait_for_payload(b"moved")
    assert [s for s, p in inbox2.messages if p == b"moved"] == ["a"]


def test_queue_bound_drops_oldest(make_transport):
    t = make_transport("a", {"b": (HOST, free_port())}, queue_limit=10)
    for i in range(100):
        t.send("b", b"%d" % i)
    st = t.peer_status()["b"]
    assert st["queued"] == 10 and st["dropped"] == 90
    t2 = make_transport("a", {"b": (HOST, free_port())}, queue_bytes_limit=1000)
    for i in range(100):
        t2.send("b", b"x" * 100)
    st = t2.peer_status()["b"]
    assert st["queued_bytes"] <= 1000 and st["queued"] == 10 and st["dropped"] == 90


def test_backlog_for_a_peer_that_is_down_stays_small(make_transport):
    """A stale backlog replayed on reconnect helps nobody: keep only the newest few."""
    from rpc.peer_sender import DOWN_QUEUE_LIMIT

    t = make_transport("a", {"b": (HOST, free_port())})  # nothing listens there
    assert wait_until(lambda: t.peer_status()["b"]["last_error"] is not None, 5)
    for i in range(1000):
        t.send("b", b"%d" % i)
    st = t.peer_status()["b"]
    assert st["queued"] <= DOWN_QUEUE_LIMIT and st["dropped"] >= 1000 - DOWN_QUEUE_LIMIT


def test_close_is_prompt_and_stops_threads(make_server, make_transport):
    srv = make_server(Inbox())
    before = len(threads_named("rpc-send-"))
    t = make_transport("a", {"b": srv.address, "dead": (HOST, free_port())})
    assert wait_until(lambda: t.peer_status()["b"]["connected"])
    t0 = time.monotonic()
    t.close()
    assert time.monotonic() - t0 < 1.5
    assert wait_until(lambda: len(threads_named("rpc-send-")) == before and not threads_named("rpc-recv-"), 2)
    t.send("b", b"after close")  # dropped silently
    t.close()  # idempotent
    with pytest.raises(TransportError):
        t.set_peers({})


def test_server_port_in_use_is_a_clear_error(make_server):
    srv = make_server(Inbox())
    with pytest.raises(TransportError, match=rf"cannot listen on {HOST}:{srv.address[1]}"):
        PeerServer(HOST, srv.address[1], SECRET, Inbox())


def test_answers_ride_back_on_the_reply(make_server, make_transport, caplog):
    """A receiver's answers to a delivery (a Raft ack) go back as that call's reply and
    reach the sender's on_reply in order; a malformed reply ends the connection with a
    line, and the next one carries on."""
    got = []

    def answer(src, frames):
        return [b"ack:" + f for f in frames]

    srv = make_server(None, on_batch=answer)
    t = make_transport("a", {"b": srv.address})
    t.on_reply = lambda peer, frames: got.extend((peer, f) for f in frames)
    for i in range(200):
        t.send("b", b"m%d" % i)
    assert wait_until(lambda: len(got) == 200)
    assert got == [("b", b"ack:m%d" % i) for i in range(200)]

    import rpc.peer_server as ps

    original = ps._PeerInbox.take
    ps._PeerInbox.take = lambda self, frames: [7]  # encodes as a batch holding a number
    try:
        with caplog.at_level(logging.WARNING, logger="rpc.transport"):
            t.send("b", b"x")
            assert wait_until(lambda: "answered with a bad batch" in caplog.text)
    finally:
        ps._PeerInbox.take = original
    t.send("b", b"after")
    assert wait_until(lambda: got[-1:] == [("b", b"ack:after")])
    assert t.peer_status()["b"]["connected"]


def test_answers_reach_an_on_reply_set_after_the_link_came_up(make_server, make_transport):
    """A node sets on_reply after its transport has dialled its peers: the answers on a
    connection that came up first still reach it (the reader read on_reply once, and a
    follower that came up early never had its acks heard: stuck at commit 0)."""
    got = []
    srv = make_server(None, on_batch=lambda src, frames: [b"ack:" + f for f in frames])
    t = make_transport("a", {"b": srv.address})
    t.send("b", b"early")  # answered while nobody listens: dropped
    assert wait_until(lambda: t.peer_status()["b"]["delivered"] == 1)
    t.on_reply = lambda peer, frames: got.extend(frames)
    t.send("b", b"late")
    assert wait_until(lambda: got == [b"ack:late"]), got


def test_a_batch_larger_than_a_node_reads_is_refused_at_construction():
    from rpc.wire import MAX_BATCH_FRAMES

    with pytest.raises(TransportError, match=f"at most {MAX_BATCH_FRAMES}"):
        PeerTransport("a", SECRET, {}, max_batch_frames=MAX_BATCH_FRAMES + 1)

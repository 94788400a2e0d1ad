"""The relay to the node a learner is named after (docs/security.md), against real node
processes: with the admin key alone, remove a follower and add it back, under its own id,
at our address. The leader dials us, naming that node in its hello; we pass the handshake
on to the real node, whose id it names, so it passes, and then write a snapshot of our
own into the authenticated connection, as the leader. The snapshot is a pickle: before
frames carried a MAC, it ran code on that node (a marker file appeared). Now the frame
fails its MAC, the node closes the connection and nothing of it is used."""
from __future__ import annotations

import os
import pickle
import socket
import sys
import threading
import time

import msgpack
import pytest

from rpc.channel import frame
from rpc.transport import NodeLink
from rpc.wire import encode_batch
from tests.cluster.attack import CreatesFile, handshake_frame, key
from tests.cluster.harness import LocalCluster
from tests.prevalence.domain import Add, Get

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="multi-process, POSIX")]


def test_an_admin_relaying_the_leaders_handshake_to_the_node_it_names_cannot_speak_as_the_leader(tmp_path):
    from prevalence.snapshots import SnapshotMeta as FileMeta, encode_file
    from replication.membership import Membership
    from replication.messages import InstallSnapshot, SnapshotMeta, encode

    c = LocalCluster(tmp_path / "c", 3)
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        leader = c.leader()
        with c.client(timeout=10.0) as client:
            acked = client.execute(Add("acked", 1))
        victim = next(n for n in sorted(c.procs) if n != leader)
        admin = NodeLink(c.configs[leader].listen, c.admin_key, ident="admin", role="admin", timeout=10.0)
        reply = admin.call("change_membership", "remove", victim)
        assert reply[0] == "ok", reply
        with NodeLink(c.configs[leader].listen, key(c, "client"), ident="probe", timeout=5.0) as link:
            st = link.call("status")[1]
        marker = str(tmp_path / "ran")
        members = Membership(tuple(sorted(c.configs)), ())
        meta = FileMeta(index=st["commit_index"] + 100, term=st["term"], timestamp_us=0, serializer="pickle",
                        extra={"membership": members.to_wire()})
        body = b"".join(encode_file(meta, pickle.dumps(CreatesFile(marker))))
        snap = InstallSnapshot(leader, victim, st["term"], SnapshotMeta(meta.index, st["term"], members), 0, body,
                               True)
        outcome: dict = {}

        def relay() -> None:
            try:
                while True:  # every member dials the new learner: wait for the leader
                    conn, _ = listener.accept()
                    conn.settimeout(5.0)
                    hello = handshake_frame(conn)
                    if msgpack.unpackb(hello[4:])[2] == leader:
                        break
                    conn.close()
                out = socket.create_connection(c.configs[victim].listen, timeout=5.0)
                out.sendall(hello)  # the leader's hello, naming the victim
                conn.sendall(handshake_frame(out))  # the victim's challenge
                out.sendall(handshake_frame(conn))  # the leader's proof
                answer = handshake_frame(out)
                outcome["answer"] = answer
                # our own frame, well framed; its trailer the length of a MAC we cannot make
                out.sendall(frame(encode_batch([encode(snap)])) + os.urandom(28))
                out.settimeout(5.0)
                outcome["closed"] = out.recv(65536) == b""
            except Exception as exc:  # noqa: BLE001 - reported through outcome
                outcome["error"] = repr(exc)

        thread = threading.Thread(target=relay, daemon=True)
        thread.start()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        reply = admin.call("change_membership", "add_learner", victim, address)
        assert reply[0] == "ok", reply
        thread.join(10.0)
        time.sleep(0.5)
        assert b"pvl-ok" in outcome.get("answer", b""), outcome  # the handshake itself passes: it names the victim
        assert not os.path.exists(marker), f"a relayed handshake let the admin key run code: {outcome}"
        deadline = time.monotonic() + 5.0
        while "failed authentication" not in c.log(victim) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f"frame 1 from peer '{leader}' at 127.0.0.1:" in c.log(victim), c.tail(victim)
        assert "a relay or a damaged link" in c.log(victim)
        admin.call("change_membership", "remove", victim)
        admin.close()
        c.check_alive()
        with c.client(timeout=10.0) as client:
            assert client.execute(Add("acked", 1)) == acked + 1
            assert client.query(Get("acked")) == acked + 1
    finally:
        listener.close()
        c.stop()

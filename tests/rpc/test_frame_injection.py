"""A third party writes a well-formed frame into an authenticated peer connection (a
relay of the handshake, or anyone on the path): it was taken as the dialling node's, a
batch of Raft messages for the node, a snapshot among them (a pickle: code on the node).
Now every frame between nodes carries a MAC under a key drawn from the handshake
(rpc.frame_mac): the frame closes the connection and nothing of it is delivered."""
from __future__ import annotations

import logging
import time

from rpc.channel import frame
from rpc.peer_server import PeerServer
from rpc.transport import open_peer_channel
from rpc.wire import encode_batch

from .conftest import KEYS, SECRET, Inbox, wait_until


def test_a_frame_written_into_an_authenticated_peer_connection_is_refused(caplog):
    caplog.set_level(logging.WARNING, logger="rpc.transport")
    inbox = Inbox()
    server = PeerServer("127.0.0.1", 0, KEYS, inbox, node_id="n1")
    try:
        with open_peer_channel(server.address, SECRET, ident="n2", target="n1") as chan:
            assert chan.call([b"honest"]) == []
            sock = chan.channel.stream.sock
            # the third party's frame: well framed (and checksummed as a frame was), with a
            # trailer of a MAC's length, since it cannot compute one
            sock.sendall(frame(encode_batch([b"injected"])) + bytes(28))
            assert wait_until(lambda: chan.poll(0.1) or b"injected" in inbox.payloads(), 3.0)
            time.sleep(0.2)
        assert inbox.payloads() == [b"honest"], inbox.payloads()
        lines = [r.getMessage() for r in caplog.records if "failed authentication" in r.getMessage()]
        assert len(lines) == 1, caplog.text
        assert lines[0].startswith("frame 2 from peer 'n2' at 127.0.0.1:") and "a relay or a damaged link" in lines[0]
        # the node serves the next connection as before
        with open_peer_channel(server.address, SECRET, ident="n2", target="n1") as chan:
            assert chan.call([b"again"]) == []
        assert inbox.payloads() == [b"honest", b"again"]
    finally:
        server.close()

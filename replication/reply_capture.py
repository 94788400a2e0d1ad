"""What a node sends the peer whose delivery it is stepping, kept to go back as that
delivery's reply.

An ack stepped on the thread that received the append then needs no transport hop.
The reply is one peer frame, so what it holds is bounded; past that, all of the step's
messages to that peer take the transport, in order (kept ones would arrive after a
later one sent).
"""
from __future__ import annotations

import threading
from typing import Callable

__all__ = ["REPLY_BYTES", "REPLY_MESSAGES", "ReplyCapture"]

# What goes back as one delivery's reply at most (the transport's batch size): a peer
# frame is bounded (rpc.transport.PEER_MAX_FRAME), and after a probe a leader may send a
# follower a whole window of appends in one step.
REPLY_BYTES = 1 << 20
REPLY_MESSAGES = 1024  # = rpc.wire.MAX_BATCH_FRAMES, the messages one answer may hold


class ReplyCapture:
    """The replies to ``peer`` made on the thread that created this; other threads (the
    disk lane's) and other peers' messages take the transport."""

    __slots__ = ("thread", "peer", "replies", "size")

    def __init__(self, peer: str, replies: list[bytes]) -> None:
        self.thread = threading.get_ident()
        self.peer: str | None = peer
        self.replies = replies  # the transport's list: what it carries back
        self.size = 0

    def keep(self, to: str, payload: bytes, send: Callable[[str, bytes], None]) -> bool:
        """Keep ``payload`` as a reply; False: the caller sends it. Over the budget, what
        was kept is sent first (``send``) and nothing more is kept."""
        if to != self.peer or threading.get_ident() != self.thread:
            return False
        if self.size + len(payload) <= REPLY_BYTES and len(self.replies) < REPLY_MESSAGES:
            self.replies.append(payload)
            self.size += len(payload)
            return True
        for earlier in self.replies:
            send(to, earlier)
        self.replies.clear()
        self.peer = None
        return False

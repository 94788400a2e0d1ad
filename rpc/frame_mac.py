"""Frames between nodes authenticated with a key drawn from the handshake.

The handshake (:mod:`rpc.auth`) proves that both ends of a connection hold the peer key,
but only for its first four frames. Without TLS, a party that relays a handshake (a
learner an admin added at its own address, under the id of a real node: the leader
dials it, it passes the leader's hello and proof on to that node) could then write its
own frames into the authenticated connection and be the leader there: a snapshot it
sends is a pickle, so the admin key was worth the peer key. Here every frame of a peer
connection carries a MAC under a key only the two ends can compute:

    prk        = HMAC-SHA256(K, "pvl-frame-keys\\0" + T)       K: the peer key; T: the handshake's
                                                            transcript (both nonces, ids, version,
                                                            cluster, epoch, the node dialled)
    key(dir)   = HMAC-SHA256(prk, label(dir) + 0x01)         one key per direction (HKDF's expand)
    tag        = HMAC-SHA256(key(dir), dir + seq + header + body)

``dir`` is ``b"D"`` (dialler to acceptor) or ``b"A"`` (the answers); ``seq`` is the frame's
number in that direction on this connection, from 1, as 8 big-endian bytes; ``header`` is
the frame's 5-byte header (length, compressed flag). The 32-byte tag ends the frame where a
client connection's frame has its CRC-32 (a MAC catches damage too). A frame whose tag does
not match, injected, replayed, reordered or following a dropped one, closes the
connection before anything of it is used: nothing reaches the Raft core.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from typing import NamedTuple

from .channel import FRAME_TIMEOUT, BoundedChannel, FrameRefused, _Stream

__all__ = ["FrameKeys", "frame_keys", "MacChannel", "mac_channel", "TAG_SIZE", "DIALLER", "ACCEPTOR"]

log = logging.getLogger("rpc.transport")

TAG_SIZE = 32
DIALLER, ACCEPTOR = b"D", b"A"  # who sends the frame: the node that dialled, the node that accepted
_EXTRACT_LABEL = b"pvl-frame-keys\x00"  # unlike the proofs' labels: the key is never a value sent
_EXPAND_LABELS = {DIALLER: b"pvl-frames dialler to acceptor\x00\x01",
                  ACCEPTOR: b"pvl-frames acceptor to dialler\x00\x01"}


class FrameKeys(NamedTuple):
    """The two keys of one peer connection: of the frames the dialler sends, and of
    those the acceptor sends (its answers). Never logged, never sent."""

    dialler: bytes
    acceptor: bytes

    def __repr__(self) -> str:  # a key in a log line or a traceback would be a key given away
        return "FrameKeys(<hidden>)"


def frame_keys(key: bytes, transcript: bytes) -> FrameKeys:
    """The frame keys of a connection whose handshake had ``transcript``, proved with
    ``key`` (the peer key). Both ends compute the same; a relay, without the key, cannot,
    and the fresh nonces in ``transcript`` make them new on every connection."""
    prk = hmac.digest(key, _EXTRACT_LABEL + transcript, "sha256")
    return FrameKeys(hmac.digest(prk, _EXPAND_LABELS[DIALLER], "sha256"),
                     hmac.digest(prk, _EXPAND_LABELS[ACCEPTOR], "sha256"))


class _Hmac:
    """HMAC-SHA256 under one key (RFC 2104), its two padded-key states hashed once per
    connection: a frame then costs two hash copies and its bytes. hmac.digest sets the
    key up again at every call, which under OpenSSL 3 was half of a small frame's cost
    (3.0 us for a 100-byte frame, against 1.5 us here; the same at 64 KiB). Equal to
    ``hmac.digest(key, b"".join(parts), "sha256")`` (tests/rpc/test_frame_mac.py)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes):
        if len(key) > _BLOCK:  # RFC 2104: a key longer than a block is its digest (a frame key is 32 bytes)
            key = hashlib.sha256(key).digest()
        padded = bytes(key).ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded))

    def digest(self, *parts) -> bytes:
        inner = self._inner.copy()
        for part in parts:  # the body as it lies (a view of a large frame): never copied
            inner.update(part)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


_BLOCK = 64  # SHA-256's block size


def _tag(mac: _Hmac, direction: bytes, seq: int, header: bytes, body) -> bytes:
    return mac.digest(direction + seq.to_bytes(8, "big") + header, body)


class MacChannel(BoundedChannel):
    """A :class:`BoundedChannel` whose frames end with a MAC (module docstring) instead
    of a CRC-32; ``side`` is who this end is (:data:`DIALLER` or :data:`ACCEPTOR`).

    Writes are numbered under a lock, so the numbers follow the order on the wire even if
    two threads send at once; reads are one thread's (a connection has one reader)."""

    __slots__ = ("_send_key", "_recv_key", "_send_dir", "_recv_dir", "_sent", "_received", "_send_lock")

    TRAILER_SIZE = TAG_SIZE

    def __init__(self, stream, keys: FrameKeys, side: bytes, max_frame: int, frame_timeout: float = FRAME_TIMEOUT,
                 where: str = "?"):
        super().__init__(stream, max_frame, frame_timeout, where)
        if side not in (DIALLER, ACCEPTOR):
            raise ValueError(f"side must be DIALLER or ACCEPTOR, got {side!r}")
        other = ACCEPTOR if side == DIALLER else DIALLER
        self._send_dir, self._recv_dir = side, other
        self._send_key = _Hmac(keys.dialler if side == DIALLER else keys.acceptor)
        self._recv_key = _Hmac(keys.acceptor if side == DIALLER else keys.dialler)
        self._sent = 0
        self._received = 0
        self._send_lock = threading.Lock()

    def send(self, data) -> None:
        with self._send_lock:  # the number and the bytes on the wire, in one order
            super().send(data)

    def _trailer(self, header: bytes, body) -> bytes:
        self._sent += 1
        return _tag(self._send_key, self._send_dir, self._sent, header, body)

    def _check(self, header: bytes, body, trailer, length: int) -> None:
        seq = self._received + 1
        if not hmac.compare_digest(trailer, _tag(self._recv_key, self._recv_dir, seq, header, body)):
            log.warning("frame %d from %s failed authentication: a relay or a damaged link; connection closed",
                        seq, self.where)
            self.stream.close()
            raise FrameRefused(f"{self.where}: frame {seq} failed authentication")
        self._received = seq


def mac_channel(sock, keys: FrameKeys, side: bytes, max_frame: int, where: str,
                frame_timeout: float | None = None) -> MacChannel:
    """A :class:`MacChannel` over an authenticated peer socket (as ``rpc.channel._channel``
    builds a plain one)."""
    return MacChannel(_Stream(sock), keys, side, max_frame, FRAME_TIMEOUT if frame_timeout is None else frame_timeout,
                      where)

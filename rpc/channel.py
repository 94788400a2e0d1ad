"""Bounded input: the frame limits, and the RPyC channel that enforces them.

Every connection, either side, peer or client, is read through :class:`BoundedChannel`
(:func:`_channel` builds one over a socket): a frame's announced length is checked
against its limit before the body is read, a compressed frame is refused, and a frame
must arrive whole within its timeout. Connecting and authenticating are
:mod:`rpc.transport`'s, which re-exports the names here. See ``docs/transport.md``
("Bounded input") for how the limits are sized.
"""
from __future__ import annotations

import errno
import logging
import select
import socket
import ssl
import struct
import time
import zlib

from rpyc.core.channel import Channel
from rpyc.core.stream import SocketStream
from rpyc.lib import Timeout

__all__ = [
    "BoundedChannel",
    "frame",
    "FrameRefused",
    "PEER_MAX_FRAME",
    "CLIENT_MAX_FRAME",
    "MAX_REQUEST",
    "REPLY_MAX_FRAME",
    "FRAME_TIMEOUT",
]

# the refusals are the transport's to report: one logger for the whole of it
log = logging.getLogger("rpc.transport")

# Frame limits (bytes of one RPyC frame, checked against the announced length before
# the body is read; see docs/transport.md for how they are sized).
#: What a node reads from a peer: a deliver batch is at most max(1 MiB, one Raft
#: message), a message at most an Append (max_size_per_msg, 16 KiB, + one entry of at most
#: NodeOptions.max_entry_bytes, 8 MiB) or a snapshot chunk (64 KiB).
PEER_MAX_FRAME = 16 << 20
#: Bytes of data one client request carries at most (a command, a batch's commands, a
#: query); a node answers a larger one with a one-line error, and the client refuses to
#: send one (past CLIENT_MAX_FRAME a node could only drop the connection).
MAX_REQUEST = 1 << 20
#: What a node reads from a client: a request of at most MAX_REQUEST plus RPyC's framing.
CLIENT_MAX_FRAME = 4 << 20
#: What a client reads from a node: a reply (a query's result, a page of the log, a
#: backup: a whole snapshot, which followers accept up to RaftConfig.max_snapshot_bytes).
REPLY_MAX_FRAME = 1 << 30
#: Once the first byte of a frame has arrived, the whole frame must arrive within this.
FRAME_TIMEOUT = 10.0


class _Stream(SocketStream):
    """SocketStream whose poll() also sees data already decrypted inside an SSL socket,
    and waits on one ``select.poll`` object kept for the stream where the OS has one.

    RPyC's poll builds and registers a new poll object at every call: about 9 µs, paid
    before each frame a connection reads (several per replicated call on a leader),
    against 1 µs for a kept one. Windows has no ``select.poll``: RPyC's own then."""

    __slots__ = ("_poller",)

    def __init__(self, sock):
        super().__init__(sock)
        self._poller = None

    def poll(self, timeout):
        sock = self.sock  # a closed stream's raises EOFError here, as RPyC's poll does
        pending = getattr(sock, "pending", None)
        if pending is not None:
            try:
                if pending():
                    return True
            except (OSError, ValueError):
                pass
        if _POLL is None:
            return super().poll(timeout)
        poller = self._poller
        if poller is None:
            poller = self._poller = _POLL()
            poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
        if isinstance(timeout, Timeout):  # what RPyC's serve() passes
            timeout = timeout.timeleft()
        # any event counts: a hang-up or an error is for recv() to report
        return bool(poller.poll(None if timeout is None else max(0.0, timeout) * 1000.0))


_POLL = getattr(select, "poll", None)
_RETRY_ERRNOS = (errno.EAGAIN, errno.EWOULDBLOCK)
_LARGE = 1 << 16  # frames from this size on are read in place
#: What ends a frame instead of RPyC's newline: the CRC-32 of its header and body.
_TRAILER = struct.Struct("!I")


class FrameRefused(EOFError):
    """A frame from the other side was refused (too large, compressed, stalled); the
    connection is closed. An EOFError, so that RPyC ends the connection quietly."""


class BoundedChannel(Channel):
    """RPyC's channel with its input bounded.

    RPyC reads whatever length a frame header announces (up to 4 GiB) and inflates a
    frame whenever the *sender* sets the compression flag. Here the header is checked
    before anything else is read: a frame longer than ``max_frame`` or flagged as
    compressed is refused, and so is one that does not arrive whole within
    ``frame_timeout`` seconds of its first byte. Refusing closes the stream (the
    framing cannot be resynchronised) and logs one line naming ``where``. What we send
    is never compressed.

    It also reads ahead: one recv() usually brings a small frame's header and body
    (RPyC makes two), and frames of 64 KiB or more are read into one buffer, handed to
    RPyC as a view instead of the three copies RPyC's own reading makes.
    """

    __slots__ = ("max_frame", "frame_timeout", "where", "_buf")

    #: Bytes after a frame's body: the CRC-32 (rpc.frame_mac's channel: a MAC).
    TRAILER_SIZE = _TRAILER.size

    def __init__(self, stream, max_frame: int, frame_timeout: float = FRAME_TIMEOUT, where: str = "?"):
        super().__init__(stream, compress=False)
        self.max_frame = int(max_frame)
        self.frame_timeout = float(frame_timeout)
        self.where = where
        self._buf = bytearray()  # read ahead, not yet handed to RPyC

    def poll(self, timeout) -> bool:
        return bool(self._buf) or self.stream.poll(timeout)

    def send(self, data) -> None:
        """RPyC's frame, ended by the CRC-32 of its header and body instead of a newline:
        a bit flipped on the way where TCP's 16-bit checksum did not see it (a broken NIC,
        switch or middlebox) must not become a command, a log entry or a reply."""
        header = self.FRAME_HEADER.pack(len(data), 0)
        if len(data) + 5 + self.TRAILER_SIZE <= self.stream.MAX_IO_CHUNK:
            self.stream.write(header + data + self._trailer(header, data))
        else:  # large: no copy of the body; the header leaves before the trailer is made
            self.stream.write(header)
            self.stream.write(data)
            self.stream.write(self._trailer(header, data))

    def _trailer(self, header: bytes, body) -> bytes:
        """What ends a frame: here the CRC-32 of its header and body (rpc.frame_mac's
        channel ends a peer's frames with a MAC instead)."""
        return _TRAILER.pack(zlib.crc32(body, zlib.crc32(header)))

    def recv(self):
        deadline = time.monotonic() + self.frame_timeout
        buf = self._buf
        header = self.FRAME_HEADER.size
        if len(buf) < header:
            # RPyC polls before it calls recv: with nothing read ahead, data is there
            self._fill(header, deadline, polled=not buf)
        length, compressed = self.FRAME_HEADER.unpack_from(buf)
        if compressed:
            self._refuse(f"compressed frame ({length} bytes) refused: compression from the other side is not accepted")
        if length > self.max_frame:
            self._refuse(f"frame of {length} bytes announced, limit {self.max_frame}")
        end = header + length + self.TRAILER_SIZE
        if length < _LARGE or len(buf) >= end:
            self._fill(end, deadline, polled=False)
            with memoryview(buf) as view:
                data = bytes(view[header:header + length])
                self._check(bytes(view[:header]), data, view[header + length:end], length)
            del buf[:end]
            return data
        # a large frame: into one buffer of its own, past what was read ahead
        head = bytes(buf[:header])
        out = bytearray(length + self.TRAILER_SIZE)
        have = len(buf) - header
        out[:have] = buf[header:]
        buf.clear()
        self._read_into(memoryview(out)[have:], deadline)
        body = memoryview(out)[:length]
        self._check(head, body, memoryview(out)[length:], length)
        return body

    def _check(self, header: bytes, body, trailer, length: int) -> None:
        """Refuse (close, FrameRefused) a frame whose trailer does not match its header
        and body."""
        if _TRAILER.unpack(trailer)[0] != zlib.crc32(body, zlib.crc32(header)):
            self._refuse(f"frame of {length} bytes damaged in transit (checksum mismatch): dropped with its "
                         "connection, so that it is sent again")

    def _fill(self, count: int, deadline: float, polled: bool) -> None:
        """Read ahead until ``count`` bytes are buffered, before ``deadline``. The socket
        keeps its own timeout (it bounds writes from other threads); each wait for data
        is bounded here by poll."""
        buf, stream = self._buf, self.stream
        while len(buf) < count:
            if not polled:
                self._wait(deadline)
            polled = False
            try:
                chunk = stream.sock.recv(stream.MAX_IO_CHUNK)
            except (socket.timeout, ssl.SSLWantReadError):
                continue
            except OSError as exc:
                self._read_failed(exc)
                continue
            if not chunk:
                self._read_failed(None)
            buf += chunk

    def _read_into(self, view: memoryview, deadline: float) -> None:
        stream = self.stream
        got, count = 0, len(view)
        while got < count:
            self._wait(deadline)
            try:
                n = stream.sock.recv_into(view[got:], min(stream.MAX_IO_CHUNK, count - got))
            except (socket.timeout, ssl.SSLWantReadError):
                continue
            except OSError as exc:
                self._read_failed(exc)
                continue
            if not n:
                self._read_failed(None)
            got += n

    def _wait(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0 or not self.stream.poll(left):
            self._refuse(f"the other side stopped sending mid-frame for {self.frame_timeout:g} s")

    def _read_failed(self, exc: OSError | None) -> None:
        """Return to retry (EAGAIN); else close and raise EOFError, as RPyC's stream does."""
        if exc is not None and exc.errno in _RETRY_ERRNOS:
            return
        self.stream.close()
        raise EOFError(exc if exc is not None else "connection closed by peer")

    def _refuse(self, reason: str) -> None:
        log.warning("connection with %s closed: %s", self.where, reason)
        self.stream.close()
        raise FrameRefused(f"{self.where}: {reason}")


def frame(data: bytes, compressed: int = 0) -> bytes:
    """``data`` framed as :class:`BoundedChannel` sends it: RPyC's header (length, the
    compression flag), the body, the CRC-32 of both."""
    header = Channel.FRAME_HEADER.pack(len(data), compressed)
    return header + data + _TRAILER.pack(zlib.crc32(data, zlib.crc32(header)))


def _channel(sock: socket.socket, max_frame: int, where: str, frame_timeout: float | None = None) -> BoundedChannel:
    # compress=False: no zlib on what we send, whatever the size (frames are small or
    # already compact msgpack; zlib costs more CPU than a gigabit LAN saves).
    return BoundedChannel(_Stream(sock), max_frame, FRAME_TIMEOUT if frame_timeout is None else frame_timeout,
                          where)

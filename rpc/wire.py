"""Handshake framing and message codec (the bytes exchanged before RPyC starts).

A handshake frame is a 4-byte big-endian length N (1 <= N <= MAX_FRAME) followed by N
bytes of msgpack: an array whose first element is the message tag. The decoder validates
every field; anything else raises :class:`HandshakeError` and nothing more is read.

This module also holds the codec of a batch (a msgpack array of bin), the only payload
format the peer transport puts on the wire, each way.
"""
from __future__ import annotations

import io
import socket
import struct
import time
from typing import Any, Callable

import msgpack

from prevalence.errors import PrevalenceError
from prevalence.text import one_line

__all__ = [
    "HandshakeError",
    "HandshakeClosed",
    "UnsupportedVersion",
    "MAX_FRAME",
    "NONCE_SIZE",
    "MAC_SIZE",
    "MAX_ID_LEN",
    "ROLES",
    "HELLO",
    "CHALLENGE",
    "PROOF",
    "OK",
    "REFUSED",
    "PROTOCOL_VERSION",
    "PEER_PROTOCOL_VERSION",
    "encode_frame",
    "decode_message",
    "read_frame",
    "write_frame",
    "encode_batch",
    "decode_batch",
    "BatchError",
    "MAX_BATCH_FRAMES",
]

#: Largest handshake frame accepted (the largest legal message is far smaller).
MAX_FRAME = 1024
NONCE_SIZE = 32
MAC_SIZE = 32
MAX_ID_LEN = 128
MAX_REASON_LEN = 300
MAX_CLUSTER_LEN = 64
#: 4: what a client or admin program says; RPyC follows the handshake, each frame ended
#: by a CRC-32 (rpc.channel). 2 had RPyC's plain frames; 1 had a claimed role.
PROTOCOL_VERSION = 4
#: 7: what a node says to a node; its hello names the node it dials (bound into its proof),
#: length-prefixed batches follow the handshake, each frame ended by a MAC under a key drawn
#: from the handshake (rpc.frame_mac). 6 ended them with a CRC-32 (a relay of the handshake
#: could write its own frames after it), 5 named no target (a party the leader dialled could
#: relay its proof to another node), 3 had plain frames, 2 spoke RPyC between nodes: none of
#: these can share a cluster.
PEER_PROTOCOL_VERSION = 7
VERSIONS = (PROTOCOL_VERSION, PEER_PROTOCOL_VERSION)
ROLES = ("peer", "client", "admin")

HELLO = "pvl-hello"          # client -> server: [tag, version, id, client_nonce(, cluster, epoch(, target))]
CHALLENGE = "pvl-challenge"  # server -> client: [tag, server_nonce]
PROOF = "pvl-proof"          # client -> server: [tag, client_mac]
OK = "pvl-ok"                # server -> client: [tag, server_mac, role granted]
REFUSED = "pvl-refused"      # server -> client: [tag, reason]

_HEADER = struct.Struct("!I")


#: What a party of another release is told, and what the node that refuses it logs.
SAME_RELEASE = ("every node and program of a cluster runs the same release, and a full restart "
                "moves a cluster to another (docs/security.md)")
#: A node's hello that a node of an older release closes on without a word: those took
#: at most 5 fields, and checked the count before the version (this one names the node
#: it dials, a sixth). A node of this release at its connection limit (or at its limit of
#: handshakes from our address) closes as silently: the line names both.
CLOSED_ON_HELLO = ("closed the connection on our hello without a reason, as a node at its connection limit "
                   f"or a node of an older release does: {SAME_RELEASE}")


def version_refusal(version: int) -> str:
    """Why a hello of ``version`` is refused: 1 had one key for all (a claimed role); any
    other is a program or node of another release."""
    why = "a key per role, see docs/security.md" if version == 1 else SAME_RELEASE
    return (f"unsupported handshake version {version} (this node speaks {PROTOCOL_VERSION} to clients and "
            f"{PEER_PROTOCOL_VERSION} to nodes: {why})")


class HandshakeError(PrevalenceError):
    """A handshake frame was oversized, truncated, malformed or not the one expected."""


class HandshakeClosed(HandshakeError):
    """The other side closed the connection before the handshake's next frame."""


class UnsupportedVersion(HandshakeError):
    """A hello of another protocol version (1 claimed a role): refused with a reason."""

    def __init__(self, version: int):
        super().__init__(f"unsupported handshake version {version}")
        self.version = version


def _check_id(value: Any) -> str:
    if type(value) is not str:
        raise HandshakeError(f"identity must be a string, got {type(value).__name__}")
    if not 1 <= len(value) <= MAX_ID_LEN:
        raise HandshakeError(f"identity must be 1..{MAX_ID_LEN} characters, got {len(value)}")
    if not value.isprintable():
        raise HandshakeError("identity contains non-printable characters")
    return value


def _check_bytes(value: Any, size: int, what: str) -> bytes:
    if type(value) is not bytes or len(value) != size:
        got = f"{len(value)} bytes" if type(value) is bytes else type(value).__name__
        raise HandshakeError(f"{what} must be {size} bytes, got {got}")
    return value


# expected tag -> (arities, validator of the fields after the tag)
def _v_hello(fields: list) -> tuple:
    """(version, id, nonce, cluster, epoch, target); another version's hello raises
    UnsupportedVersion, for the server to refuse by its version (version 1 had a fourth
    field, the claimed role). ``target`` is "" when the hello names none."""
    version = fields[0]
    if type(version) is not int:
        raise HandshakeError(f"protocol version must be an integer, got {type(version).__name__}")
    if version not in VERSIONS:
        raise UnsupportedVersion(version)
    if len(fields) not in (3, 5, 6):
        raise HandshakeError(f"handshake message {HELLO} has {len(fields)} fields, expected 3, 5 or 6")
    # a node says which cluster and epoch its data belongs to, and which node it dials; a
    # client program says neither
    _, ident, nonce, cluster, epoch, target = (fields if len(fields) == 6 else (*fields, "") if len(fields) == 5
                                               else (*fields, "", 0, ""))
    if type(cluster) is not str or len(cluster) > MAX_CLUSTER_LEN or not cluster.isprintable():
        raise HandshakeError(f"cluster id must be a printable string of at most {MAX_CLUSTER_LEN} characters")
    if type(epoch) is not int or not 0 <= epoch < 2**63:
        raise HandshakeError("cluster epoch must be a non-negative integer")
    if len(fields) == 6:
        target = _check_id(target)
    return version, _check_id(ident), _check_bytes(nonce, NONCE_SIZE, "client nonce"), cluster, epoch, target


def _v_challenge(fields: list) -> tuple:
    (nonce,) = fields
    return (_check_bytes(nonce, NONCE_SIZE, "server nonce"),)


def _v_mac(fields: list) -> tuple:
    (mac,) = fields
    return (_check_bytes(mac, MAC_SIZE, "proof"),)


def _v_ok(fields: list) -> tuple:
    mac, role = fields
    if type(role) is not str or role not in ROLES:
        raise HandshakeError(f"granted role must be one of {ROLES}, got {role!r:.40}")
    return _check_bytes(mac, MAC_SIZE, "proof"), role


def _v_refused(fields: list) -> tuple:
    (reason,) = fields
    if type(reason) is not str:
        raise HandshakeError("refusal reason must be a string")
    # the other side's text, for messages and terminals: printable characters only
    return (one_line(reason, MAX_REASON_LEN),)


_SCHEMA = {
    HELLO: ((3, 4, 5, 6), _v_hello),
    CHALLENGE: ((1,), _v_challenge),
    PROOF: ((1,), _v_mac),
    OK: ((2,), _v_ok),
    REFUSED: ((1,), _v_refused),
}


def encode_frame(tag: str, *fields: Any) -> bytes:
    """One handshake frame: length header + msgpack [tag, *fields]."""
    body = msgpack.packb([tag, *fields], use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise HandshakeError(f"handshake frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


def decode_message(body: bytes, expected: tuple[str, ...]) -> tuple[str, tuple]:
    """Decode and validate one frame body; return (tag, fields).

    ``expected`` lists the acceptable tags. Raises :class:`HandshakeError` on anything else.
    """
    if len(body) > MAX_FRAME:
        raise HandshakeError(f"handshake frame of {len(body)} bytes exceeds {MAX_FRAME}")
    try:
        msg = msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=MAX_FRAME,
            max_bin_len=MAX_FRAME,
            max_array_len=16,
            max_map_len=16,
            max_ext_len=MAX_FRAME,
        )
    except Exception as exc:  # msgpack raises many types on garbage
        raise HandshakeError(f"malformed handshake frame ({type(exc).__name__}: {str(exc)[:80]})") from None
    if type(msg) is not list or not msg:
        raise HandshakeError(f"malformed handshake frame (expected an array, got {type(msg).__name__})")
    tag = msg[0]
    if type(tag) is not str or tag not in expected:
        raise HandshakeError(f"unexpected handshake message {tag!r:.40} (expected {' or '.join(expected)})")
    arities, validate = _SCHEMA[tag]
    if len(msg) - 1 not in arities:
        raise HandshakeError(f"handshake message {tag} has {len(msg) - 1} fields, expected {arities[0]}")
    return tag, validate(msg[1:])


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    chunks = []
    while n > 0:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("handshake timed out")
        sock.settimeout(left)
        chunk = sock.recv(min(n, 65536))
        if not chunk:
            raise HandshakeClosed("connection closed during the handshake")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket, deadline: float, max_frame: int = MAX_FRAME) -> bytes:
    """Read one frame body before ``deadline`` (time.monotonic()).

    Raises HandshakeError (oversized, empty, closed) or socket.timeout / OSError.
    """
    (length,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size, deadline))
    if length == 0:
        raise HandshakeError("empty handshake frame")
    if length > max_frame:
        raise HandshakeError(f"oversized handshake frame: {length} bytes announced, limit {max_frame}")
    return _recv_exact(sock, length, deadline)


def write_frame(sock: socket.socket, frame: bytes, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise socket.timeout("handshake timed out")
    sock.settimeout(left)
    sock.sendall(frame)


# ---------------------------------------------------------------- deliver batches


class BatchError(PrevalenceError):
    """A batch is not a msgpack array of byte strings."""


def encode_batch(frames: list[bytes]) -> bytes:
    return msgpack.packb(frames, use_bin_type=True)


#: Messages one batch (or one answer) holds at most. The frame size bounds the bytes; this
#: bounds the objects they decode to (16 MiB of one-byte messages would be 5 million).
MAX_BATCH_FRAMES = 1024


def decode_batch(blob: Any, max_frames: int = MAX_BATCH_FRAMES) -> list[bytes]:
    """The frames of a batch: one msgpack array of at most ``max_frames`` binaries,
    walked by its headers. msgpack allocates an array at its header and a list_hook sees
    it only once it completes, so arrays nested 1,024 deep that never complete, each
    holding fresh objects (empty maps, 16-bit ints), took 70 MB from a 1 MB batch
    before anything refused them; here nothing but the frames is ever made."""
    if type(blob) is not bytes and type(blob) is not memoryview:  # a large frame is read in place
        raise BatchError(f"a batch must be bytes, got {type(blob).__name__}")
    if type(blob) is bytes:
        return _decode_streamed(blob, max_frames)
    total = len(blob)  # a memoryview (a large frame, of few messages): walked here, uncopied
    try:
        head = blob[0]
        if 0x90 <= head <= 0x9F:
            n, pos = head & 0x0F, 1
        elif head == 0xDC:
            n, pos = int.from_bytes(blob[1:3], "big"), 3
        elif head == 0xDD:
            n, pos = int.from_bytes(blob[1:5], "big"), 5
        else:
            raise BatchError(_NOT_FRAMES)
        if pos > total:
            raise IndexError
        if n > max_frames:
            raise BatchError(f"malformed batch ({n} messages, over the limit of {max_frames})")
        frames = []
        for _ in range(n):
            kind = blob[pos]
            if kind == 0xC4:
                size, pos = blob[pos + 1], pos + 2
            elif kind == 0xC5:
                size, pos = int.from_bytes(blob[pos + 1:pos + 3], "big"), pos + 3
            elif kind == 0xC6:
                size, pos = int.from_bytes(blob[pos + 1:pos + 5], "big"), pos + 5
            else:
                raise BatchError(_NOT_FRAMES)
            end = pos + size
            if end > total:
                raise IndexError
            frames.append(bytes(blob[pos:end]))
            pos = end
    except IndexError:
        raise BatchError("malformed batch (incomplete input)") from None
    if pos != total:
        raise BatchError("malformed batch (extra data after the array)")
    return frames


_NOT_FRAMES = "a batch must be an array of byte strings"


def headed_unpacker(data: bytes, refuse: Callable[..., Any], **limits: Any) -> msgpack.Unpacker:
    """An Unpacker over ``data`` for a format read by its headers: the caller reads the
    arrays' headers it expects (``read_array_header``) and unpacks only scalars below
    them; any array, map or extension type there calls ``refuse``, which raises. A
    BytesIO shares the bytes (a fed Unpacker would copy them); ``limits`` are
    msgpack's (``max_bin_len``, ``max_str_len``, ``use_list``...)."""
    return msgpack.Unpacker(io.BytesIO(data), read_size=1 << 16, raw=False, max_buffer_size=max(len(data), 1 << 16),
                            max_array_len=0, max_map_len=0, max_ext_len=0, object_hook=refuse, ext_hook=refuse,
                            **limits)


def _refuse(*_args: Any) -> Any:
    raise BatchError(_NOT_FRAMES)


def _decode_streamed(blob: bytes, max_frames: int) -> list[bytes]:
    """decode_batch of bytes: the array's header, then each frame decoded alone with no
    array, map or extension type allowed in it (about 0.15 us a frame)."""
    u = headed_unpacker(blob, _refuse, max_str_len=0)
    try:
        n = u.read_array_header()
        if n > max_frames:
            raise BatchError(f"malformed batch ({n} messages, over the limit of {max_frames})")
        unpack = u.unpack
        frames = [unpack() for _ in range(n)]
    except BatchError:
        raise
    except msgpack.OutOfData:
        raise BatchError("malformed batch (incomplete input)") from None
    except Exception as exc:  # an array, map or string where a frame must be, a bad header
        raise BatchError(f"malformed batch: {_NOT_FRAMES} ({type(exc).__name__}: {str(exc)[:80]})") from None
    if u.tell() != len(blob):
        raise BatchError("malformed batch (extra data after the array)")
    for f in frames:
        if type(f) is not bytes:
            raise BatchError(_NOT_FRAMES)
    return frames

import socket
import struct
import time

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prevalence.errors import PrevalenceError
from rpc.wire import (
    CHALLENGE,
    HELLO,
    PEER_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    MAX_BATCH_FRAMES,
    MAX_FRAME,
    OK,
    PROOF,
    REFUSED,
    BatchError,
    HandshakeError,
    decode_batch,
    decode_message,
    encode_batch,
    encode_frame,
    read_frame,
)

ALL_TAGS = (HELLO, CHALLENGE, PROOF, OK, REFUSED)


class FakeSock:
    """recv() from a fixed byte string in chunks; b"" (EOF) at the end."""

    def __init__(self, data: bytes, chunk: int = 7):
        self.data = data
        self.chunk = chunk

    def settimeout(self, t):
        pass

    def recv(self, n):
        out, self.data = self.data[: min(n, self.chunk)], self.data[min(n, self.chunk):]
        return out


def body(frame: bytes) -> bytes:
    return frame[4:]


def test_roundtrip_every_message():
    nonce = b"n" * 32
    mac = b"m" * 32
    # a client program's hello has no cluster id (read as unknown) and names no target; a
    # node's has its id and epoch, and the node it dials
    assert decode_message(body(encode_frame(HELLO, PROTOCOL_VERSION, "n1", nonce)), (HELLO,)) == \
        (HELLO, (PROTOCOL_VERSION, "n1", nonce, "", 0, ""))
    assert decode_message(body(encode_frame(HELLO, PROTOCOL_VERSION, "n1", nonce, "c1", 3)), (HELLO,)) == \
        (HELLO, (PROTOCOL_VERSION, "n1", nonce, "c1", 3, ""))
    assert decode_message(body(encode_frame(HELLO, PEER_PROTOCOL_VERSION, "n1", nonce, "", 0, "n2")), (HELLO,)) == \
        (HELLO, (PEER_PROTOCOL_VERSION, "n1", nonce, "", 0, "n2"))
    assert decode_message(body(encode_frame(CHALLENGE, nonce)), (CHALLENGE,)) == (CHALLENGE, (nonce,))
    assert decode_message(body(encode_frame(PROOF, mac)), (PROOF,)) == (PROOF, (mac,))
    assert decode_message(body(encode_frame(OK, mac, "admin")), (OK, REFUSED)) == (OK, (mac, "admin"))
    assert decode_message(body(encode_frame(REFUSED, "no")), (OK, REFUSED)) == (REFUSED, ("no",))


@pytest.mark.parametrize(
    "fields, match",
    [
        ((PROTOCOL_VERSION, "", b"n" * 32), "identity"),
        ((PROTOCOL_VERSION, "x" * 129, b"n" * 32), "identity"),
        ((PROTOCOL_VERSION, "a\nb", b"n" * 32), "non-printable"),
        ((PROTOCOL_VERSION, "n1", b"short"), "client nonce"),
        ((str(PROTOCOL_VERSION), "n1", b"n" * 32), "version"),
        ((PROTOCOL_VERSION, "peer", "n1", b"n" * 32), "fields"),  # no claimed role since version 2
        ((PROTOCOL_VERSION, "n1"), "fields"),
    ],
)
def test_hello_validation(fields, match):
    with pytest.raises(HandshakeError, match=match):
        decode_message(body(encode_frame(HELLO, *fields)), (HELLO,))


def test_an_older_hello_is_told_by_its_version():
    """Version 1 claimed a role; the server refuses it by its version, with a reason."""
    from rpc.wire import UnsupportedVersion

    with pytest.raises(UnsupportedVersion) as info:
        decode_message(body(encode_frame(HELLO, 1, "peer", "n1", b"n" * 32)), (HELLO,))
    assert info.value.version == 1 and isinstance(info.value, HandshakeError)


@pytest.mark.parametrize("fields", [(b"m" * 32,), (b"m" * 32, "root"), (b"m" * 32, 1), (b"m" * 31, "peer")])
def test_ok_validation(fields):
    with pytest.raises(HandshakeError):
        decode_message(body(encode_frame(OK, *fields)), (OK, REFUSED))


def test_unexpected_tag_is_refused():
    with pytest.raises(HandshakeError, match="unexpected handshake message"):
        decode_message(body(encode_frame(PROOF, b"m" * 32)), (HELLO,))


def test_read_frame_rejects_oversized_announcement_without_reading_it():
    sock = FakeSock(struct.pack("!I", MAX_FRAME + 1) + b"x" * 10)
    with pytest.raises(HandshakeError, match="oversized handshake frame: 1025 bytes"):
        read_frame(sock, time.monotonic() + 1)
    assert sock.data == b"x" * 10  # nothing of the body was consumed


def test_read_frame_empty_and_truncated():
    with pytest.raises(HandshakeError, match="empty"):
        read_frame(FakeSock(struct.pack("!I", 0)), time.monotonic() + 1)
    with pytest.raises(HandshakeError, match="closed"):
        read_frame(FakeSock(struct.pack("!I", 10) + b"abc"), time.monotonic() + 1)


def test_read_frame_deadline():
    a, b = socket.socketpair()
    try:
        t0 = time.monotonic()
        with pytest.raises(socket.timeout):
            read_frame(a, time.monotonic() + 0.2)
        assert time.monotonic() - t0 < 1.0
    finally:
        a.close()
        b.close()


def test_encode_refuses_oversized_frame():
    with pytest.raises(HandshakeError, match="exceeds"):
        encode_frame(REFUSED, "x" * 2000)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2 * MAX_FRAME))
def test_decoder_on_garbage_raises_only_handshake_error(data):
    try:
        tag, fields = decode_message(data, ALL_TAGS)
    except HandshakeError as exc:
        assert isinstance(exc, PrevalenceError) and str(exc)
    else:
        assert tag in ALL_TAGS and isinstance(fields, tuple)


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=False),
                     st.text(max_size=40), st.binary(max_size=40))
_values = st.recursive(_scalars, lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                       max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.sampled_from(ALL_TAGS), st.text(max_size=20), _scalars), st.lists(_values, max_size=6))
def test_decoder_on_wellformed_msgpack_with_wrong_shapes(tag, fields):
    data = msgpack.packb([tag, *fields], use_bin_type=True)
    try:
        got_tag, got = decode_message(data, ALL_TAGS)
    except HandshakeError:
        return
    # accepted: must re-encode to exactly what was sent
    assert body(encode_frame(got_tag, *got)) == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.integers(1, 64))
def test_read_frame_on_garbage_stream(data, chunk):
    try:
        out = read_frame(FakeSock(data, chunk), time.monotonic() + 5)
    except HandshakeError:
        return
    assert 1 <= len(out) <= MAX_FRAME and data[4:4 + len(out)] == out


def test_batch_roundtrip():
    frames = [b"", b"a", b"\x00" * 1000]
    assert decode_batch(encode_batch(frames)) == frames


def test_a_batch_holds_at_most_max_batch_frames_messages():
    """The frame bounds the bytes, this the objects: 16 MiB of one-byte messages would
    decode to 5 million of them (230 MiB)."""
    assert len(decode_batch(encode_batch([b"x"] * MAX_BATCH_FRAMES))) == MAX_BATCH_FRAMES
    with pytest.raises(BatchError, match="malformed batch"):
        decode_batch(encode_batch([b"x"] * (MAX_BATCH_FRAMES + 1)))
    with pytest.raises(BatchError):
        decode_batch(msgpack.packb({b"k": b"v"}))


def test_a_batch_of_nested_arrays_is_refused_before_it_grows():
    """Each array is bounded, nesting is not: 16 MiB of nested one-item arrays decoded
    to about 600 MB of lists before the check that every item is bytes refused them."""
    import tracemalloc

    row = b"\xdc" + (1024).to_bytes(2, "big") + b"\x91\xc0" * 1024  # 1,024 arrays of [None]
    blob = b"\xdc" + (1024).to_bytes(2, "big") + row * 1024  # 2 MiB: a batch frame is up to 16
    tracemalloc.start()
    try:
        with pytest.raises(BatchError, match="an array of byte strings"):
            decode_batch(blob)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak / 1e6:.0f} MB decoded before the refusal"
    with pytest.raises(BatchError, match="an array of byte strings"):
        decode_batch(b"\x92\x91\xc4\x01x\xc4\x01y")  # [[b"x"], b"y"]


def test_a_node_answers_with_no_more_messages_than_a_batch_holds():
    from replication.reply_capture import REPLY_MESSAGES

    assert REPLY_MESSAGES == MAX_BATCH_FRAMES


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), _values))
def test_batch_decoder_on_garbage(blob):
    try:
        frames = decode_batch(blob)
    except BatchError:
        return
    assert all(type(f) is bytes for f in frames)

"""The wire codec: every message round-trips; garbage raises DecodeError, nothing else."""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from prevalence.entry import Entry
from replication.errors import DecodeError, RaftError
from replication.membership import Membership, encode_membership
from replication.messages import (
    MAX_INDEX, MAX_TERM, Append, AppendResp, Heartbeat, HeartbeatResp, InstallSnapshot, PreVote, PreVoteResp,
    ReadIndex, ReadIndexResp, SnapshotMeta, SnapshotResp, TimeoutNow, Vote, VoteResp,
    decode, encode,
)

ids = st.text(min_size=1, max_size=12)
u64 = st.integers(min_value=0, max_value=(1 << 63) - 1)
terms = st.integers(min_value=0, max_value=MAX_TERM)  # past it, a message is refused (test_peer_bounds)
idx = st.integers(min_value=0, max_value=MAX_INDEX)
blobs = st.binary(max_size=64)


@st.composite
def entry_lists(draw):
    start = draw(st.integers(min_value=1, max_value=1 << 40))
    n = draw(st.integers(min_value=0, max_value=5))
    out = []
    for i in range(n):
        kind = draw(st.sampled_from([0, 1, 2]))
        # a CONFIG entry's data is a membership: the decoder refuses anything else
        data = encode_membership(draw(memberships)) if kind == 2 else draw(blobs)
        out.append(Entry(start + i, draw(terms), kind, data))
    return out


memberships = st.builds(
    lambda v, l: Membership(tuple(v), tuple(x for x in l if x not in v)),
    st.lists(ids, max_size=4), st.lists(ids, max_size=3),
)
metas = st.builds(SnapshotMeta, idx, terms, memberships)

messages = st.one_of(
    st.builds(PreVote, ids, ids, terms, idx, terms),
    st.builds(PreVoteResp, ids, ids, terms, st.booleans()),
    st.builds(Vote, ids, ids, terms, idx, terms, st.booleans()),
    st.builds(VoteResp, ids, ids, terms, st.booleans()),
    st.builds(Append, ids, ids, terms, idx, terms, entry_lists(), idx),
    st.builds(AppendResp, ids, ids, terms, idx, st.booleans(), idx, terms),
    st.builds(Heartbeat, ids, ids, terms, idx, blobs, u64),
    st.builds(HeartbeatResp, ids, ids, terms, blobs, u64),
    st.builds(InstallSnapshot, ids, ids, terms, metas, u64, blobs, st.booleans()),
    st.builds(SnapshotResp, ids, ids, terms, idx, u64),
    st.builds(TimeoutNow, ids, ids, terms),
    st.builds(ReadIndex, ids, ids, terms, blobs),
    st.builds(ReadIndexResp, ids, ids, terms, blobs, idx),
)


def _causal(m):
    """``m`` with no term past its own and its entries' terms not decreasing, as every
    message a member sends (the decoder refuses the others: test_peer_bounds)."""
    t = m.term
    if type(m) in (Vote, PreVote):
        m.last_term = min(m.last_term, t)
    elif type(m) is AppendResp:
        m.hint_term = min(m.hint_term, t)
    elif type(m) is InstallSnapshot:
        m.meta = m.meta._replace(term=min(m.meta.term, t))
    elif type(m) is Append:
        m.prev_term = min(m.prev_term, t)
        ts = sorted(min(max(e.term, m.prev_term), t) for e in m.entries)
        m.entries = [Entry(e.index, term, e.kind, e.data) for e, term in zip(m.entries, ts)]
    return m


sent = messages.map(_causal)


@settings(max_examples=300, deadline=None)
@given(sent)
def test_round_trip(msg):
    data = encode(msg)
    assert isinstance(data, bytes)
    back = decode(data)
    assert back == msg and type(back) is type(msg)
    for e in getattr(back, "entries", []):
        assert type(e) is Entry


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_bytes_raise_decode_error(data):
    try:
        decode(data)
    except DecodeError:
        pass


plain = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1) | st.text(max_size=5) | st.binary(max_size=5),
    lambda inner: st.lists(inner, max_size=6),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=0, max_value=15), st.lists(plain, max_size=9))
def test_well_formed_msgpack_with_wrong_fields_raises_decode_error(code, fields):
    try:
        decode(msgpack.packb([code, *fields], use_bin_type=True))
    except DecodeError:
        pass


@settings(max_examples=200, deadline=None)
@given(messages, st.data())
def test_mutated_messages_decode_or_raise_decode_error(msg, data):
    raw = bytearray(encode(msg))
    pos = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[pos] = data.draw(st.integers(min_value=0, max_value=255))
    try:
        out = decode(bytes(raw))
    except DecodeError:
        return
    assert type(out).__name__ in {t.__name__ for t in (type(msg), *map(type, [msg]))} or out is not None


@pytest.mark.parametrize(
    "payload, fragment",
    [
        (b"", "not a msgpack"),
        (msgpack.packb({"a": 1}), "msgpack array"),
        (msgpack.packb(7), "array"),
        (msgpack.packb([99, "a"]), "unknown message type"),
        (msgpack.packb([11, "a", "b"]), "needs 3 fields"),
        (msgpack.packb([11, "a", "b", -1]), "non-negative"),
        (msgpack.packb([11, "a", "b", True]), "integer"),
        (msgpack.packb([11, "", "b", 1]), "node id"),
        (msgpack.packb([5, "a", "b", 1, 0, 0, [[1, 1, 7, b""]], 0], use_bin_type=True), "unknown entry kind"),
        (msgpack.packb([5, "a", "b", 1, 0, 0, [[1, 1, 1, b""], [3, 1, 1, b""]], 0], use_bin_type=True), "consecutive"),
        (msgpack.packb([5, "a", "b", 1, 0, 0, [[1, 1, 1, "text"]], 0], use_bin_type=True), "bytes"),
        (msgpack.packb([11, "a", "b", 1]) + b"\x00", "not a msgpack"),
        (msgpack.packb(msgpack.ExtType(1, b"x")), "not a msgpack"),
    ],
)
def test_decode_errors_name_the_problem(payload, fragment):
    with pytest.raises(DecodeError, match=fragment):
        decode(payload)


def test_decode_error_is_a_raft_error_and_value_error():
    with pytest.raises(RaftError):
        decode(b"\xc1")
    with pytest.raises(ValueError):
        decode(b"\xc1")


def test_deeply_nested_input_is_refused_cleanly():
    deep = b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(DecodeError):
        decode(deep)


def test_encode_refuses_non_messages():
    with pytest.raises(TypeError):
        encode(object())


def test_snapshot_message_with_member_addresses_round_trips():
    """Addresses travel in the membership of snapshot metadata (regression: maps were refused)."""
    from replication.membership import Membership, encode_membership
    from replication.messages import InstallSnapshot, SnapshotMeta, decode, encode

    m = Membership(("n1", "n2"), ("n3",), (("n1", "127.0.0.1:7101"), ("n3", "10.0.0.3:7100")))
    msg = InstallSnapshot("n1", "n3", 4, SnapshotMeta(20, 3, m), 0, b"chunk", True)
    assert decode(encode(msg)) == msg


@pytest.mark.parametrize("depth", [10, 500, 990, 1000, 1020])
def test_deeply_nested_fields_are_a_decode_error_not_a_recursion_error(depth):
    """A PreVote whose src nested ~1000 deep once killed a Raft loop through repr()."""
    v: object = "x"
    for _ in range(depth):
        v = [v]
    with pytest.raises(DecodeError, match="PreVote.src"):
        decode(msgpack.packb([1, v, "n2", 1, 1, 1], use_bin_type=True))


@pytest.mark.parametrize("data", [b"", b"\x93\xa1x", b"\xc0", msgpack.packb([["n1"], [], {"n1": 5}]), b"\x92\x90\x90\x00"])
def test_a_config_entry_without_a_membership_is_a_decode_error(data):
    """The core decodes a CONFIG entry's membership as it appends it: one that holds none
    must be refused here, with the message, not raise in the Raft loop."""
    ok = Append("n1", "n2", 1, 0, 0, [Entry(1, 1, 2, encode_membership(Membership(("n1",))))], 0)
    assert decode(encode(ok)) == ok
    with pytest.raises(DecodeError, match="CONFIG entry without a membership"):
        decode(encode(Append("n1", "n2", 1, 0, 0, [Entry(1, 1, 2, data)], 0)))

"""Raft wire messages, persistent state records, and their msgpack codec.

Messages are small slotted dataclasses so the core's hot path stays cheap. The codec
turns one into bytes (``encode``) and back (``decode``) for the transport; ``decode``
treats its input as untrusted: it only builds the types below from plain msgpack data,
checks every field, and raises :class:`DecodeError` naming the problem.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import NamedTuple, Optional, Union

import msgpack

from prevalence.entry import Entry, EntryKind
from replication.errors import DecodeError
from replication.membership import Membership, decode_membership


class HardState(NamedTuple):
    """What must survive a crash: the term, the vote in it, and the commit index."""

    term: int = 0
    vote: Optional[str] = None
    commit: int = 0


class SnapshotMeta(NamedTuple):
    """Where a snapshot sits in the log and the membership in force at that index."""

    index: int
    term: int
    membership: Membership


class Snapshot(NamedTuple):
    """A host-made snapshot: the state machine's bytes up to ``meta.index``."""

    meta: SnapshotMeta
    data: bytes


@dataclass(slots=True)
class PreVote:
    src: str
    dst: str
    term: int  # the term the sender would campaign in (its term + 1)
    last_index: int
    last_term: int


@dataclass(slots=True)
class PreVoteResp:
    src: str
    dst: str
    term: int
    reject: bool


@dataclass(slots=True)
class Vote:
    src: str
    dst: str
    term: int
    last_index: int
    last_term: int
    transfer: bool = False  # campaign started by TimeoutNow: bypasses the leader lease


@dataclass(slots=True)
class VoteResp:
    src: str
    dst: str
    term: int
    reject: bool


@dataclass(slots=True)
class Append:
    src: str
    dst: str
    term: int
    prev_index: int
    prev_term: int
    entries: list = field(default_factory=list)
    commit: int = 0


@dataclass(slots=True)
class AppendResp:
    """Success: ``index`` is the follower's last index matching the leader.

    Rejection: ``index`` is the rejected ``prev_index``; ``hint_index``/``hint_term``
    name the follower's last entry that may match (fast backtracking).
    """

    src: str
    dst: str
    term: int
    index: int = 0
    reject: bool = False
    hint_index: int = 0
    hint_term: int = 0
    wall_us: int = 0  # the sender's wall clock when sent, for the journal's clock (0: not given)


@dataclass(slots=True)
class Heartbeat:
    src: str
    dst: str
    term: int
    commit: int = 0
    ctx: bytes = b""  # the ReadIndex request this round confirms, if any
    seq: int = 0  # the leader's tick when sent (lease reads)


@dataclass(slots=True)
class HeartbeatResp:
    src: str
    dst: str
    term: int
    ctx: bytes = b""
    seq: int = 0
    wall_us: int = 0  # as AppendResp.wall_us


@dataclass(slots=True)
class InstallSnapshot:
    src: str
    dst: str
    term: int
    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool


@dataclass(slots=True)
class SnapshotResp:
    """Chunk acknowledgement: the follower wants the chunk at ``next_offset`` next."""

    src: str
    dst: str
    term: int
    index: int  # the snapshot index these chunks belong to
    next_offset: int


@dataclass(slots=True)
class TimeoutNow:
    src: str
    dst: str
    term: int


@dataclass(slots=True)
class ReadIndex:
    """A follower forwarding a read request to the leader."""

    src: str
    dst: str
    term: int
    ctx: bytes


@dataclass(slots=True)
class ReadIndexResp:
    src: str
    dst: str
    term: int
    ctx: bytes
    index: int


Message = Union[
    PreVote, PreVoteResp, Vote, VoteResp, Append, AppendResp, Heartbeat, HeartbeatResp,
    InstallSnapshot, SnapshotResp, TimeoutNow, ReadIndex, ReadIndexResp,
]

# ---------------------------------------------------------------------------- codec
# Wire form: [type_code, src, dst, term, field...] with entries as [index, term, kind,
# data] and snapshot metadata as [index, term, [voters, learners]].

_MAX_INT = (1 << 63) - 1
#: The largest term and log index a message may carry. Far above any real cluster (a
#: term a second for 10**11 years), and far below what the decoders and the journal take
#: (2**63 - 1, 2**64 - 1): a node never steps past it (it refuses to campaign there), so
#: no term or index it sends can overflow anywhere, and a peer's message carrying more is
#: refused here rather than adopted, which would leave no term to elect in.
MAX_TERM = 1 << 62
MAX_INDEX = 1 << 62
_INDEX_FIELDS = frozenset({"index", "last_index", "prev_index", "hint_index", "commit"})
_TYPES: list[type] = [
    PreVote, PreVoteResp, Vote, VoteResp, Append, AppendResp, Heartbeat, HeartbeatResp,
    InstallSnapshot, SnapshotResp, TimeoutNow, ReadIndex, ReadIndexResp,
]
_CODE = {cls: code for code, cls in enumerate(_TYPES, start=1)}
_FIELD_NAMES = {cls: tuple(f.name for f in fields(cls)) for cls in _TYPES}
_ENTRY_KINDS = frozenset(int(k) for k in EntryKind)
_CONFIG = int(EntryKind.CONFIG)


def _wire_value(value: object) -> object:
    if isinstance(value, SnapshotMeta):
        return [value.index, value.term, value.membership.to_wire()]
    if isinstance(value, list):  # entries
        return [[e.index, e.term, e.kind, e.data] for e in value]
    return value


def encode(msg: Message) -> bytes:
    """Serialise a message to bytes for the transport."""
    cls = type(msg)
    code = _CODE.get(cls)
    if code is None:
        raise TypeError(f"not a Raft message: {cls.__name__}")
    out: list = [code]
    for name in _FIELD_NAMES[cls]:
        out.append(_wire_value(getattr(msg, name)))
    return msgpack.packb(out, use_bin_type=True)


def _show(v: object) -> str:
    """A value for an error message, without recursing into hostile nesting."""
    if v is None or type(v) in (int, bool, float, str, bytes):
        return repr(v)[:60]
    return f"a {type(v).__name__}"


def _int(v: object, what: str) -> int:
    if type(v) is not int or v < 0 or v > _MAX_INT:
        raise DecodeError(f"{what} must be a non-negative 64-bit integer, got {_show(v)}")
    return v


def _term(v: object, what: str) -> int:
    if _int(v, what) > MAX_TERM:
        raise DecodeError(f"{what} {v} is past the largest term a node takes (2**62)")
    return v


def _index(v: object, what: str) -> int:
    if _int(v, what) > MAX_INDEX:
        raise DecodeError(f"{what} {v} is past the largest log index a node takes (2**62)")
    return v


def _str(v: object, what: str) -> str:
    if type(v) is not str or not v or len(v) > 256:
        raise DecodeError(f"{what} must be a non-empty node id string, got {_show(v)}")
    return v


def _bool(v: object, what: str) -> bool:
    if type(v) is not bool:
        raise DecodeError(f"{what} must be a boolean, got {_show(v)}")
    return v


def _bytes(v: object, what: str) -> bytes:
    if type(v) is not bytes:
        raise DecodeError(f"{what} must be bytes, got {type(v).__name__}")
    return v


def _entries(v: object, what: str) -> list:
    if type(v) is not list:
        raise DecodeError(f"{what} must be a list of entries")
    out = []
    prev = None
    for raw in v:
        if type(raw) is not list or len(raw) != 4:
            raise DecodeError(f"{what}: an entry must be [index, term, kind, data]")
        index = _index(raw[0], f"{what} index")
        term = _term(raw[1], f"{what} term")
        kind = _int(raw[2], "entry kind")
        if kind not in _ENTRY_KINDS:
            raise DecodeError(f"{what}: unknown entry kind {kind}")
        if prev is not None and index != prev + 1:
            raise DecodeError(f"{what}: entry indexes are not consecutive ({prev} then {index})")
        prev = index
        data = _bytes(raw[3], "entry data")
        if kind == _CONFIG:  # the core decodes it as it appends: a bad one raised there, and the node exited
            try:
                decode_membership(data)
            except DecodeError as exc:
                raise DecodeError(f"{what}: entry {index} is a CONFIG entry without a membership ({exc})") from None
        out.append(Entry(index, term, kind, data))
    return out


def _meta(v: object, what: str) -> SnapshotMeta:
    if type(v) is not list or len(v) != 3:
        raise DecodeError(f"{what} must be [index, term, membership]")
    return SnapshotMeta(_index(v[0], f"{what}.index"), _term(v[1], f"{what}.term"), Membership.from_wire(v[2]))


_CHECK = {int: _int, str: _str, bool: _bool, bytes: _bytes, list: _entries, SnapshotMeta: _meta}
_SCHEMA: dict[type, tuple] = {}
for _cls in _TYPES:
    _spec = []
    for _f in fields(_cls):
        _t = _f.type
        kind = {"str": str, "int": int, "bool": bool, "bytes": bytes, "list": list, "SnapshotMeta": SnapshotMeta}[_t]
        check = _CHECK[kind]
        if kind is int and _f.name.endswith("term"):
            check = _term
        elif kind is int and _f.name in _INDEX_FIELDS:
            check = _index
        _spec.append((_f.name, check))
    _SCHEMA[_cls] = tuple(_spec)


def _check_terms(m: Message) -> None:
    """A log's terms never decrease along it, and a member that sends in term t knows of
    no entry of a later term: a message naming one is from a bug or a forger. (Taken, an
    entry of a term nobody reached made the follower's log the most up to date there is.)"""
    t = type(m)
    named = []
    if t is Vote or t is PreVote:
        named.append(("last_term", m.last_term))
    elif t is AppendResp:
        named.append(("hint_term", m.hint_term))
    elif t is InstallSnapshot:
        named.append(("meta.term", m.meta.term))
    elif t is Append:
        named.append(("prev_term", m.prev_term))
        prev = m.prev_term
        for e in m.entries:
            if e.term < prev:
                raise DecodeError(f"Append.entries term {e.term} of entry {e.index} is below the term {prev} before "
                                  "it: a log's terms never decrease")
            prev = e.term
        if m.entries:
            named.append(("entries term", prev))
    for name, term in named:
        if term > m.term:
            raise DecodeError(f"{t.__name__}.{name} {term} is past the message's own term {m.term}")


def decode(data: bytes) -> Message:
    """Parse untrusted bytes into a message, or raise DecodeError saying what is wrong."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    try:
        raw = msgpack.unpackb(
            bytes(data), raw=False, strict_map_key=True, use_list=True,
            max_ext_len=0, max_map_len=10_000,  # maps: membership addresses only
        )
    except Exception as exc:  # msgpack raises ValueError, ExtraData, FormatError, StackError...
        raise DecodeError(f"not a msgpack Raft message: {type(exc).__name__}: {exc}") from None
    if type(raw) is not list or not raw:
        raise DecodeError("a Raft message must be a non-empty msgpack array")
    code = raw[0]
    if type(code) is not int or not 1 <= code <= len(_TYPES):
        raise DecodeError(f"unknown message type code {_show(code)}")
    cls = _TYPES[code - 1]
    spec = _SCHEMA[cls]
    if len(raw) != len(spec) + 1:
        raise DecodeError(f"{cls.__name__} needs {len(spec)} fields, got {len(raw) - 1}")
    try:
        values = [check(raw[i + 1], f"{cls.__name__}.{name}") for i, (name, check) in enumerate(spec)]
    except DecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - hostile input: whatever breaks is a decode error
        raise DecodeError(f"{cls.__name__}: malformed ({type(exc).__name__})") from None
    msg = cls(*values)
    _check_terms(msg)
    return msg

"""Cluster membership: who votes, who only replicates, and how it changes.

Membership changes go through the log one server at a time (Raft dissertation, 4.1).
A node uses the *latest configuration in its log*, committed or not: a change takes
effect on a node as soon as the CONFIG entry is appended to its log, and reverts if that
entry is truncated away. :class:`ConfigHistory` keeps the configurations found in the
uncompacted log so that truncations and snapshots can find the one in force at an index.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Iterable

import msgpack

from prevalence.entry import Entry, EntryKind
from replication.errors import ConfigChangeRefused, DecodeError

_CONFIG = int(EntryKind.CONFIG)
_CLUSTER_ID = re.compile(r"[0-9A-Za-z_.-]{1,64}")
MAX_EPOCH = (1 << 31) - 1


def cluster_id_problem(cluster: object, epoch: object) -> str | None:
    """Why ``(cluster, epoch)`` is not a cluster identity (one line), or None: an id of 1-64
    letters, digits, ``_ . -`` and an epoch in 0..2**31-1, checked by exact type wherever
    one is decoded (the log, a snapshot, the handshake, an identity file)."""
    if type(cluster) is not str or not _CLUSTER_ID.fullmatch(cluster):
        shown = repr(cluster[:20]) if type(cluster) is str else f"a {type(cluster).__name__}"
        return f"a cluster id is 1-64 letters, digits, '_', '.' or '-', got {shown}"
    if type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH:
        return f"a cluster epoch is an integer in 0..{MAX_EPOCH}, got a {type(epoch).__name__}"
    return None


@dataclass(frozen=True, slots=True)
class Membership:
    """Voters and learners, each a sorted tuple of node ids (sorted for determinism),
    and where to reach them: ``addresses`` holds sorted ``(node id, "host:port")`` pairs.

    The addresses travel with the configuration through the log, so a node added at run
    time is reachable by every member without editing their configuration files. The
    core never reads them; the runtime gives them to the transport.

    ``cluster`` and ``epoch`` are the cluster's identity ("" until its first leader sets
    it with :meth:`ConfigChange.set_identity`; ``cluster recover`` raises the epoch). They
    travel the same way, in CONFIG entries and snapshots, so every node, one added or
    offline at the time included, learns them from the log; the core never reads them.
    """

    voters: tuple[str, ...] = ()
    learners: tuple[str, ...] = ()
    addresses: tuple[tuple[str, str], ...] = ()
    cluster: str = ""
    epoch: int = 0

    def __post_init__(self) -> None:
        voters = tuple(sorted(set(self.voters)))
        learners = tuple(sorted(set(self.learners)))
        if set(voters) & set(learners):
            raise ConfigChangeRefused(f"nodes {sorted(set(voters) & set(learners))} are both voter and learner")
        addresses = self.addresses.items() if isinstance(self.addresses, dict) else self.addresses
        members = set(voters) | set(learners)
        object.__setattr__(self, "voters", voters)
        object.__setattr__(self, "learners", learners)
        object.__setattr__(self, "addresses", tuple(sorted((n, a) for n, a in addresses if n in members)))

    def address_of(self, node_id: str) -> str | None:
        return dict(self.addresses).get(node_id)

    def members(self) -> tuple[str, ...]:
        """Every node that receives the log, sorted."""
        return tuple(sorted(self.voters + self.learners))

    def is_voter(self, node_id: str) -> bool:
        return node_id in self.voters

    def is_member(self, node_id: str) -> bool:
        return node_id in self.voters or node_id in self.learners

    def to_wire(self) -> list:
        if self.cluster:
            return [list(self.voters), list(self.learners), dict(self.addresses), [self.cluster, self.epoch]]
        if not self.addresses:
            return [list(self.voters), list(self.learners)]
        return [list(self.voters), list(self.learners), dict(self.addresses)]

    @classmethod
    def from_wire(cls, raw: object) -> "Membership":
        """Validate plain data from msgpack; raises DecodeError on anything unexpected."""
        if not isinstance(raw, (list, tuple)) or len(raw) not in (2, 3, 4):
            raise DecodeError("membership must be [voters, learners(, addresses(, [cluster, epoch]))]")
        addresses: dict = {}
        cluster, epoch = "", 0
        if len(raw) == 4:
            if not isinstance(raw[3], (list, tuple)) or len(raw[3]) != 2:
                raise DecodeError("membership identity must be [cluster id, epoch]")
            cluster, epoch = raw[3]
            problem = cluster_id_problem(cluster, epoch)
            if problem:
                raise DecodeError(f"membership identity: {problem}")
        if len(raw) >= 3:
            if not isinstance(raw[2], dict) or len(raw[2]) > 10_000:
                raise DecodeError("membership addresses must be a mapping of node id to address")
            for node, addr in raw[2].items():
                if not (isinstance(node, str) and isinstance(addr, str) and 0 < len(addr) <= 300):
                    raise DecodeError(f"invalid address entry in membership: {type(node).__name__} -> {type(addr).__name__}")
            addresses = raw[2]
        out = []
        for part in raw[:2]:
            if not isinstance(part, (list, tuple)) or len(part) > 10_000:
                raise DecodeError("membership voters/learners must be lists of node ids")
            for node in part:
                if not isinstance(node, str) or not node or len(node) > 256:
                    raise DecodeError(f"invalid node id in membership: a {type(node).__name__}")
            out.append(tuple(part))
        try:
            return cls(out[0], out[1], tuple(addresses.items()), cluster, epoch)
        except ConfigChangeRefused as exc:
            raise DecodeError(str(exc)) from None


class ChangeType(IntEnum):
    ADD_VOTER = 0
    REMOVE_VOTER = 1  # removes a voter or a learner
    ADD_LEARNER = 2
    PROMOTE_LEARNER = 3
    SET_IDENTITY = 4  # the cluster id and epoch, once (the first leader's first act)


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """One single-server change, proposed with ``RaftNode.propose_config_change``."""

    op: ChangeType
    node_id: str
    address: str | None = None  # where the added node listens (kept in the membership)
    epoch: int = 0  # SET_IDENTITY only: node_id holds the cluster id

    @classmethod
    def set_identity(cls, cluster: str, epoch: int) -> "ConfigChange":
        """The cluster's identity, into a membership that has none (refused otherwise)."""
        return cls(ChangeType.SET_IDENTITY, cluster, None, epoch)

    @classmethod
    def add_voter(cls, node_id: str, address: str | None = None) -> "ConfigChange":
        return cls(ChangeType.ADD_VOTER, node_id, address)

    @classmethod
    def remove_voter(cls, node_id: str) -> "ConfigChange":
        return cls(ChangeType.REMOVE_VOTER, node_id)

    @classmethod
    def add_learner(cls, node_id: str, address: str | None = None) -> "ConfigChange":
        return cls(ChangeType.ADD_LEARNER, node_id, address)

    @classmethod
    def promote_learner(cls, node_id: str) -> "ConfigChange":
        return cls(ChangeType.PROMOTE_LEARNER, node_id)


def apply_change(current: Membership, change: ConfigChange) -> Membership:
    """The membership after ``change``; refuses changes that make no sense."""
    node = change.node_id
    if change.op == ChangeType.SET_IDENTITY:
        problem = cluster_id_problem(node, change.epoch)
        if problem:
            raise ConfigChangeRefused(problem)
        if current.cluster:
            raise ConfigChangeRefused(f"the cluster already has the id {current.cluster} (epoch {current.epoch})")
        return Membership(current.voters, current.learners, current.addresses, node, change.epoch)
    if not isinstance(node, str) or not node:
        raise ConfigChangeRefused(f"invalid node id {node!r}")
    voters, learners = set(current.voters), set(current.learners)
    op = change.op
    if op == ChangeType.ADD_VOTER:
        if node in voters or node in learners:
            raise ConfigChangeRefused(f"{node!r} is already a member; promote a learner instead")
        voters.add(node)
    elif op == ChangeType.ADD_LEARNER:
        if node in voters or node in learners:
            raise ConfigChangeRefused(f"{node!r} is already a member")
        learners.add(node)
    elif op == ChangeType.PROMOTE_LEARNER:
        if node not in learners:
            raise ConfigChangeRefused(f"{node!r} is not a learner")
        learners.discard(node)
        voters.add(node)
    elif op == ChangeType.REMOVE_VOTER:
        if node not in voters and node not in learners:
            raise ConfigChangeRefused(f"{node!r} is not a member")
        if voters == {node}:
            raise ConfigChangeRefused(f"cannot remove {node!r}, the last voter")
        voters.discard(node)
        learners.discard(node)
    else:
        raise ConfigChangeRefused(f"unknown change type {op!r}")
    addresses = dict(current.addresses)
    if change.address is not None:
        addresses[node] = change.address
    return Membership(tuple(voters), tuple(learners), tuple(addresses.items()), current.cluster, current.epoch)


def encode_membership(m: Membership) -> bytes:
    """The ``data`` of a CONFIG entry: the whole new configuration, not a delta."""
    return msgpack.packb(m.to_wire(), use_bin_type=True)


def decode_membership(data: bytes) -> Membership:
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=0, max_ext_len=0)
    except Exception as exc:  # msgpack raises several unrelated types
        raise DecodeError(f"CONFIG entry does not hold a membership: {exc}") from None
    return Membership.from_wire(raw)


class ConfigHistory:
    """The configurations of the log above the snapshot, to find the one in force.

    ``base`` is the membership in force at ``base_index`` (the snapshot index); each
    CONFIG entry after it is kept as ``(index, membership)`` until compaction.
    """

    __slots__ = ("base_index", "base", "changes")

    def __init__(self, base_index: int, base: Membership) -> None:
        self.base_index = base_index
        self.base = base
        self.changes: list[tuple[int, Membership]] = []

    @property
    def current(self) -> Membership:
        return self.changes[-1][1] if self.changes else self.base

    @property
    def latest_index(self) -> int:
        """Index of the latest config entry (or of the snapshot holding the base)."""
        return self.changes[-1][0] if self.changes else self.base_index

    def at(self, index: int) -> Membership:
        result = self.base
        for idx, m in self.changes:
            if idx > index:
                break
            result = m
        return result

    def observe(self, entries: Iterable[Entry]) -> bool:
        """Record CONFIG entries just appended; True if the current config changed."""
        changed = False
        for e in entries:
            if e.kind == _CONFIG:
                self.changes.append((e.index, decode_membership(e.data)))
                changed = True
        return changed

    def truncate(self, from_index: int) -> bool:
        """Forget configs at or after ``from_index`` (their entries were overwritten)."""
        before = len(self.changes)
        while self.changes and self.changes[-1][0] >= from_index:
            self.changes.pop()
        return len(self.changes) != before

    def reset(self, index: int, membership: Membership) -> None:
        self.base_index, self.base, self.changes = index, membership, []

    def compact(self, index: int) -> None:
        """Fold configs at or before ``index`` into the base (the log before is gone)."""
        while self.changes and self.changes[0][0] <= index:
            self.base = self.changes.pop(0)[1]
        self.base_index = max(self.base_index, index)

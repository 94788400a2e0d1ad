"""Errors raised by the Raft core, its storage and its codec.

Every error derives from :class:`RaftError` so that the runtime can catch the core's
refusals in one place; the refusals a client should retry elsewhere derive from
:class:`ProposalRefused` and carry the leader the node believes in.
"""
from __future__ import annotations

from prevalence.errors import PrevalenceError


class RaftError(PrevalenceError):
    """Base class of every error raised by ``replication``."""


class ProposalRefused(RaftError):
    """The node cannot accept this request now; ``leader`` is a hint for a retry."""

    def __init__(self, message: str, leader: str | None = None) -> None:
        super().__init__(message)
        self.leader = leader


class NotLeader(ProposalRefused):
    """Only the leader accepts proposals, config changes and transfers."""

    def __init__(self, node_id: str, leader: str | None) -> None:
        hint = f"the leader is {leader!r}" if leader is not None else "no leader is known"
        super().__init__(f"node {node_id!r} is not the leader; {hint}", leader)
        self.node_id = node_id


class TransferInProgress(ProposalRefused):
    """The leader is handing leadership over and refuses new proposals meanwhile."""


class NodeHalted(ProposalRefused):
    """This node stopped (a disk or internal failure) with the request unfinished.

    A command it had proposed may still commit through the other nodes: its outcome is
    theirs to tell, so a client retries it on the new leader under the same session
    number, and gets the first result if it did apply."""


class NodeStopped(ProposalRefused):
    """This node had stopped before the request reached its core: nothing of it was
    proposed, so a client retries it elsewhere, with or without a session."""


class NoDiskSpace(ProposalRefused):
    """This node's disk is full: it journals nothing until space returns, and hands
    leadership to a node that can. A refusal: nothing was proposed, retry elsewhere."""


class CannotApply(ProposalRefused):
    """This node cannot apply the log past an entry (or snapshot) its program cannot read,
    most often one a newer release wrote: it serves no command and no linearizable read
    until it is upgraded. A committed command's outcome is the other nodes' to tell, so a
    client retries on the leader (the hint) under the same session number."""


class CommittedUnapplied(CannotApply):
    """A caller's command (or membership change) reached the log, and its entry is
    committed, but this node cannot apply it: the other nodes do. Its outcome is
    theirs to tell, as after :class:`NodeHalted`: a retry under the same session number
    learns it, and one without a session could apply it twice (its outcome is unknown)."""


class ConfigChangeRefused(RaftError):
    """A membership change was refused (invalid, or another one is pending)."""


class CompactedError(RaftError):
    """The requested index lies before the first index kept in storage (in a snapshot)."""

    def __init__(self, index: int, first_index: int) -> None:
        super().__init__(f"index {index} is compacted; the log starts at {first_index}")
        self.index = index
        self.first_index = first_index


class UnavailableError(RaftError):
    """The requested index (or snapshot) is not in storage (yet)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)


class DecodeError(RaftError, ValueError):
    """Bytes from the network do not decode to a valid Raft message."""

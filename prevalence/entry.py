"""The unit the journal stores and Raft replicates.

One type shared by the engine, the journal and the Raft core, so that an entry read from
disk can be handed to the core (and back) without conversion.
"""
from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple


class EntryKind(IntEnum):
    """What an entry's ``data`` holds; the journal stores it but never interprets it."""

    NOOP = 0  # appended by a new Raft leader; carries nothing
    COMMAND = 1  # an encoded transaction (see prevalence.codec)
    CONFIG = 2  # a Raft membership change (encoded by replication)


class Entry(NamedTuple):
    index: int
    term: int
    kind: int
    data: bytes

"""Client sessions: a command is applied once, however often a client retries it.

A client registers a session (a replicated entry; its id a random number the node
mints, see :func:`mint_session_id`), then
numbers its commands 1, 2, 3... within it. The state keeps each session's last number
and reply, so a retry after a failover gets the first reply back instead of a second
apply. Sessions idle for longer than the expiry (24 h of *journaled* time unless a
``SetSessionExpiry`` transaction changed it: a replicated setting, so every replica
drops the same sessions at the same entry) are dropped; a command on a dropped session
is refused, never applied.
(Raft dissertation, section 6.3.) One command at a time per session: a client that
runs commands in parallel uses one session per concurrent caller.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from .errors import OutcomeUnknown
from .transaction import Context, Transaction

IDLE_EXPIRY_US = 24 * 3600 * 1_000_000  # the default; SetSessionExpiry changes it, on every replica
MIN_EXPIRY_S, MAX_EXPIRY_S = 60, 366 * 24 * 3600

Reply = tuple  # ("ok", value) | ("failed", type, message) | ("rejected", type, message)


class SessionExpired(OutcomeUnknown):
    """The session is unknown (expired, or never registered): the command is refused now,
    but an earlier attempt of it may have applied before the session expired."""


class SessionCommand(Transaction):
    """A transaction on the session table, which the state machine holds beside the root:
    it applies ``on_sessions`` instead of ``execute``."""

    def on_sessions(self, table: "SessionTable", ctx: Context) -> Any:
        raise NotImplementedError

    def execute(self, root: Any, ctx: Context) -> Any:  # only reached without a state machine
        raise TypeError(f"{type(self).__name__} changes the session table, not the root")


#: Where the ids a node mints lie: 62 random bits, above any log index a session id could
#: otherwise be (an entry's index, in journals of version 1 of RegisterSession).
TOKEN_MIN, TOKEN_END = 1 << 62, 1 << 63


def mint_session_id() -> int:
    """A new session id nobody can guess: the id is all that admits a command to a
    session, so a guessable one let any client-key holder answer another client's
    commands with its own results, or expire them."""
    return TOKEN_MIN + secrets.randbelow(TOKEN_END - TOKEN_MIN)


@dataclass(frozen=True)
class RegisterSession(SessionCommand, name="prevalence.RegisterSession", version=2):
    """Opens a session. Its id is ``token`` (what a node's service mints: random, see
    :func:`mint_session_id`), or, if 0, the index of this entry (version 1, which had no
    token). An id already in the table is refused: registering it again would reset
    its numbers, and a retry of its last command would apply twice."""

    token: int = 0

    @classmethod
    def upgrade(cls, fields: dict, version: int) -> dict:
        return fields  # version 1 had no fields: the entry's index is the id

    def on_sessions(self, table: "SessionTable", ctx: Context) -> int:
        sid = self.token or ctx.index
        if self.token and not TOKEN_MIN <= self.token < TOKEN_END:
            raise ValueError(f"a session token must be from 2**62 to 2**63-1, got {self.token}")
        if sid in table.sessions:
            raise ValueError(f"session {sid} is already registered")
        table.register(sid, ctx.timestamp_us)
        return sid


@dataclass(frozen=True)
class SetSessionExpiry(SessionCommand, name="prevalence.SetSessionExpiry"):
    """How long a session may stay idle (journaled time) before its retries are refused.

    Too short and a client that pauses loses its exactly-once guarantee (its next
    command is refused as expired, with an unknown outcome, never applied twice); too long and the table of
    sessions grows with every client that went away."""

    seconds: int

    def check(self, root: Any) -> None:
        if not MIN_EXPIRY_S <= self.seconds <= MAX_EXPIRY_S:
            raise ValueError(f"session expiry must be from {MIN_EXPIRY_S} s to {MAX_EXPIRY_S // 86400} days, "
                             f"got {self.seconds} s")

    def on_sessions(self, table: "SessionTable", ctx: Context) -> int:
        table.idle_expiry_us = self.seconds * 1_000_000
        return self.seconds


class SessionTable:
    """Sessions by id: ``[last seq, last active µs, last reply]``.

    Whether a session has expired is a function of the table and the journaled time of
    the entry being applied, nothing else, so every replica, however it got its state
    (the whole log, a snapshot, a restart), decides alike. :meth:`sweep` only collects
    what that function already calls expired."""

    __slots__ = ("sessions", "idle_expiry_us")

    def __init__(self, idle_expiry_us: int = IDLE_EXPIRY_US) -> None:
        self.sessions: dict[int, list] = {}
        self.idle_expiry_us = idle_expiry_us

    def register(self, session_id: int, timestamp_us: int) -> None:
        self.sessions[session_id] = [0, timestamp_us, None]

    def _live(self, session_id: int, now_us: int) -> list | None:
        s = self.sessions.get(session_id)
        return None if s is None or s[1] < now_us - self.idle_expiry_us else s

    def duplicate(self, session_id: int, seq: int, now_us: int) -> Reply | None:
        """The cached reply if ``seq`` was applied already; raises if it cannot be applied."""
        s = self._live(session_id, now_us)
        if s is None:
            raise SessionExpired(
                f"session {session_id} is unknown or expired (idle for more than {self.idle_expiry_us // 1_000_000} s "
                f"of journaled time): whether command {seq} was applied is unknown")
        if seq == s[0]:
            return s[2]
        if seq < s[0]:
            raise SessionExpired(f"session {session_id}: command {seq} is older than the last one applied ({s[0]}); "
                                 "its outcome is no longer known")
        return None

    def record(self, session_id: int, seq: int, timestamp_us: int, reply: Reply) -> None:
        self.sessions[session_id] = [seq, timestamp_us, reply]

    def sweep(self, now_us: int) -> None:
        """Forget the sessions that have expired by ``now_us`` (garbage collection only)."""
        for sid in [sid for sid in self.sessions if self._live(sid, now_us) is None]:
            del self.sessions[sid]

    def to_plain(self) -> list:
        return [[sid, s[0], s[1], list(s[2]) if s[2] is not None else None] for sid, s in sorted(self.sessions.items())]

    @classmethod
    def from_plain(cls, plain: list | None, idle_expiry_us: int | None = None) -> "SessionTable":
        t = cls(idle_expiry_us or IDLE_EXPIRY_US)
        for sid, seq, ts, reply in plain or ():
            t.sessions[sid] = [seq, ts, tuple(reply) if reply is not None else None]
        return t

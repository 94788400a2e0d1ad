"""The prevalent system: the root object, the index applied to it, and how entries apply.

Shared by the single-process engine and (next) the Raft node, which applies committed
entries here instead of executing directly.
"""
from __future__ import annotations

import logging
from typing import Any

import msgpack

from .codec import CODEC, Codec, pack_reply, unpack
from .entry import Entry, EntryKind
from .errors import CodecError, UnreadableEntry
from .rwlock import RWLock
from .snapshots import SnapshotMeta, serialize
from .sessions import IDLE_EXPIRY_US, Reply, SessionCommand, SessionExpired, SessionTable
from .transaction import Context

log = logging.getLogger("prevalence.state")

_COMMAND = int(EntryKind.COMMAND)
SWEEP_US = 60_000_000  # expired sessions are forgotten when journaled time enters a new minute


def encode_command(timestamp_us: int, plain: list, session: tuple[int, int] | None = None) -> bytes:
    """A COMMAND entry's data: ``[timestamp µs, type name, version, fields]``, followed by
    ``session id, sequence number`` for a client command that must apply exactly once."""
    items = [timestamp_us, *plain, *session] if session else [timestamp_us, *plain]
    return msgpack.packb(items, use_bin_type=True)


def _command_items(data: bytes) -> list:
    items = unpack(data)
    if not isinstance(items, list) or len(items) not in (4, 6) or not isinstance(items[0], int):
        raise CodecError(f"malformed command entry: expected [timestamp, type, version, fields], got {items!r:.80}")
    return items


def command_stamp(data: bytes) -> int:
    """A COMMAND entry's journal time, read without decoding the rest of the entry."""
    u = msgpack.Unpacker(raw=False, max_buffer_size=len(data) or 1)
    u.feed(data)
    try:
        if u.read_array_header() not in (4, 6):
            raise ValueError("not a command entry")
        ts = u.unpack()
    except Exception as exc:  # noqa: BLE001 - msgpack raises several kinds
        raise CodecError(f"malformed command entry: {exc}") from None
    if type(ts) is not int:
        raise CodecError(f"malformed command entry: its time is {ts!r:.40}")
    return ts


def newest_stamp(entries: list[Entry]) -> int:
    """The journal time of the newest command among ``entries`` (0: none)."""
    for e in reversed(entries):
        if e.kind == _COMMAND:
            try:
                return command_stamp(e.data)
            except CodecError:
                return 0  # a malformed entry applies as an error; its stamp is no reference
    return 0


def decode_command(data: bytes, codec: Codec = CODEC) -> tuple[int, Any]:
    """(timestamp µs, transaction) of a COMMAND entry's data; CodecError if malformed."""
    items = _command_items(data)
    return items[0], codec.from_plain(items[1:4])


#: the journal times a datetime can show (years 1..9999), in µs since the epoch
_STAMP_RANGE_US = range(-62_135_596_800_000_000, 253_402_300_800_000_000)


def describe_command(data: bytes) -> dict:
    """The plain content of a COMMAND entry, for dumps: no class needs to be importable.
    CodecError unless it has the shape ``[time µs, type name, version, {fields}, ...]``."""
    items = unpack(data)
    if not isinstance(items, list) or len(items) < 4:
        raise CodecError(f"malformed command entry: {items!r:.80}")
    ts, name, version, fields = items[:4]
    if type(ts) is not int or ts not in _STAMP_RANGE_US or not isinstance(name, str) \
            or type(version) is not int or not isinstance(fields, dict):
        raise CodecError(f"malformed command entry: {items!r:.80}")
    return {"timestamp_us": ts, "type": name, "version": version, "fields": fields}


def _what(data: bytes) -> str | None:
    """"type version N" of a COMMAND entry this program cannot decode, if it says."""
    try:
        d = describe_command(data)
    except CodecError:
        return None
    return f"{d['type'][:100]} version {d['version']}"


def _text(exc: BaseException) -> str:
    """str(exc), or its type's name if that fails: an application's exception whose
    __str__ raises must not stop the replica applying its entry."""
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - anything; the same on every replica
        return f"({type(exc).__name__} whose message cannot be shown)"


def _error_reply(kind: str, exc: BaseException) -> Reply:
    return (kind, f"{type(exc).__module__}.{type(exc).__qualname__}", _text(exc))


class StateMachine:
    """The root plus the bookkeeping that makes replay identical to the first run."""

    def __init__(self, root: Any, applied_index: int = 0, timestamp_us: int = 0, sessions: SessionTable | None = None):
        self.root = root
        self.applied_index = applied_index
        self.timestamp_us = timestamp_us  # newest entry time applied: ``now`` never decreases
        self.sessions = sessions if sessions is not None else SessionTable()
        self.lock = RWLock()
        # Indexes of commands that changed nothing: refused by check(), a retry of a
        # command already applied, a command on an expired session. The same on every
        # replica (it follows from the log), so subscribers everywhere can skip them.
        self.skipped: set[int] = set()
        self.skipped_from = applied_index + 1  # known for entries applied here, not those a snapshot holds
        # The entry (or snapshot) this program could not read: nothing after it is applied
        # here until a newer program reads it (a replicated node; the engine refuses to open).
        self.unreadable: UnreadableEntry | None = None

    @classmethod
    def from_snapshot(cls, meta: SnapshotMeta, root: Any) -> "StateMachine":
        """The state a snapshot holds: the root, its index and journaled time, the sessions."""
        extra = meta.extra
        sessions = SessionTable.from_plain(extra.get("sessions"), extra.get("session_expiry_us"))
        return cls(root, meta.index, meta.timestamp_us, sessions)

    def forget_skipped(self, below: int) -> None:
        """Drop what is known of entries before ``below`` (compacted: nobody reads them)."""
        self.skipped = {i for i in self.skipped if i >= below}
        self.skipped_from = max(self.skipped_from, below)

    def _skip(self, index: int) -> None:
        """Entry ``index`` is applied, and changed nothing."""
        self.applied_index = index
        self.skipped.add(index)

    def journal_time(self, timestamp_us: int) -> int:
        """The time an entry stamped ``timestamp_us`` applies at: never before the last one.

        A new leader whose clock is behind the old one's stamps: ``now`` still never
        decreases, and the clamp depends only on the log, so replay agrees. When that
        time enters a new minute the expired sessions are collected: also a function
        of the log alone, so every replica's table holds the same sessions.
        """
        prev = self.timestamp_us
        if timestamp_us < prev:
            return prev
        if timestamp_us // SWEEP_US != prev // SWEEP_US:
            self.sessions.sweep(timestamp_us)
        return timestamp_us

    def apply_command(self, index: int, timestamp_us: int, tx: Any) -> tuple[Any, BaseException | None]:
        """Execute one journaled transaction; the caller holds the write lock.

        Its exception is returned, not raised: the entry is applied either way, and the
        changes it made before raising stay, exactly as they will on every replay.
        """
        timestamp_us = self.journal_time(timestamp_us)
        try:
            ctx = Context(index, timestamp_us)
            if isinstance(tx, SessionCommand):  # the session table, which the root does not hold
                return tx.on_sessions(self.sessions, ctx), None
            return tx.execute(self.root, ctx), None
        except KeyboardInterrupt:
            raise  # from outside, not from the transaction: no replay would raise it again
        except BaseException as exc:  # noqa: BLE001 - sys.exit() or the application's own
            # BaseException is an outcome like any other: it raised at the same point when
            # replayed, so letting it out stopped every later open of the directory
            return None, exc
        finally:
            self.applied_index = index
            self.timestamp_us = timestamp_us

    def apply_entry(self, entry: Entry, codec: Codec = CODEC, *, check: bool = False) -> tuple[Any, BaseException | None]:
        """Apply a journaled entry. ``check=True`` runs the transaction's ``check`` first:
        a replicated log holds entries checked only when applied, since the proposer's
        view may have been stale; a rejection applies as nothing, on every replica alike.

        A command carrying a client session returns its :data:`Reply` as the result: the
        first reply again for a retry, never a second apply.
        """
        if entry.kind != _COMMAND:  # a Raft no-op or membership change: nothing for the root
            self.applied_index = entry.index
            return None, None
        try:  # decoded before anything changes: a refusal leaves the state as it was
            items = _command_items(entry.data)
            timestamp_us, tx = items[0], codec.from_plain(items[1:4])
        except CodecError as exc:
            raise UnreadableEntry(entry.index, str(exc), _what(entry.data)) from None
        if len(items) == 6:
            return self._apply_session_command(entry.index, timestamp_us, tx, items[4], items[5], check), None
        if check:
            try:
                tx.check(self.root)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - a refusal, whatever its type
                self._skip(entry.index)
                return None, exc
        return self.apply_command(entry.index, timestamp_us, tx)

    def _apply_session_command(self, index: int, ts: int, tx: Any, sid: Any, seq: Any, check: bool) -> Reply:
        ts = self.journal_time(ts)
        try:
            if not (isinstance(sid, int) and isinstance(seq, int)):
                raise SessionExpired(f"malformed session ({sid!r:.20}, {seq!r:.20})")
            cached = self.sessions.duplicate(sid, seq, ts)
        except SessionExpired as exc:
            self._skip(index)
            return ("expired", str(exc))
        if cached is not None:
            self._skip(index)
            return cached
        if check:
            try:
                tx.check(self.root)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - a refusal, whatever its type
                self._skip(index)
                self.sessions.record(sid, seq, ts, _error_reply("rejected", exc))
                return self.sessions.sessions[sid][2]
        result, exc = self.apply_command(index, ts, tx)
        reply = ("ok", result) if exc is None else _error_reply("failed", exc)
        try:
            pack_reply(reply)  # cached replies travel and are snapshotted: read back as there
        except Exception as err:  # noqa: BLE001 - TypeError, ValueError (nesting), OverflowError (ints past 64 bits)
            # whatever the result, the entry applies: an exception here would stop every
            # replica applying it, and again at each restart's replay
            reply = ("error", f"applied at index {index}, but its result cannot be sent as plain data: "
                              f"{_text(err)}")
        self.sessions.record(sid, seq, ts, reply)
        return reply

    def capture(self, term: int = 0) -> tuple[SnapshotMeta, bytes]:
        """Serialize the root under the read lock: writers wait only for this."""
        self.lock.acquire_read()
        try:
            body, serializer = serialize(self.root)
            extra = {"sessions": self.sessions.to_plain()} if self.sessions.sessions else {}
            if self.sessions.idle_expiry_us != IDLE_EXPIRY_US:
                extra["session_expiry_us"] = self.sessions.idle_expiry_us
            return SnapshotMeta(self.applied_index, term, self.timestamp_us, serializer, extra=extra), body
        finally:
            self.lock.release_read()

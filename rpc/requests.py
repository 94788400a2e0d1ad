"""What a client's request may hold, checked before anything acts on it, and the one
shape of every reply (rpc.service serves the calls).

Every argument is checked by exact type: RPyC passes brine values (bytes, str, int,
float, bool, None, tuples) by value and anything else by reference, and isinstance()
on such a netref asks the client what its class is. The connection refuses references
anyway (rpc.peer_server._PlainConnection); these checks do not depend on it."""
from __future__ import annotations

import logging
import time
from typing import Any

import msgpack

from prevalence.errors import PrevalenceError
from prevalence.sessions import TOKEN_MIN
from prevalence.text import error_text
from rpc.transport import MAX_REQUEST, REPLY_MAX_FRAME
from rpc.wire import headed_unpacker

log = logging.getLogger("rpc.service")

DEFAULT_MAX_REQUEST = MAX_REQUEST
MAX_BATCH_ITEMS = 1024  # commands in one execute_batch call at most
BATCH_TIMEOUT = 10.0  # seconds a batch waits for its commands to apply (as Node.execute)
MAX_REPLY = REPLY_MAX_FRAME - (64 << 10)  # what a client reads back at most, framing aside
MAX_ID = 128  # characters of a node id (as in the handshake)
MAX_NAME = 256  # characters of an address or an application call's name
U63 = 1 << 63  # ids, sequence numbers and log indexes are below this (a signed 64-bit integer)


def unpack_batch(data: bytes, max_request: int) -> Any:
    """A msgpack-encoded batch, bounded before it is decoded: its size, then read as it
    must be, header first: an array of at most MAX_BATCH_ITEMS three-item arrays of
    scalars. msgpack allocates an array at its header and a list_hook sees it only once
    it completes, so a hook cannot stop arrays that never complete (nested 1,024 deep,
    each filled with empty maps: 1 MB became 70 MB); reading the two known levels by
    their headers, with no array, map or extension type allowed below them, can."""
    if len(data) > max_request + 64 * MAX_BATCH_ITEMS:  # the commands plus their numbers
        raise PrevalenceError(f"{len(data)} bytes, over the limit of {max_request} bytes of commands")
    u = headed_unpacker(data, _not_a_batch, use_list=False, max_bin_len=max_request, max_str_len=MAX_NAME)
    try:
        n = u.read_array_header()
        if n > MAX_BATCH_ITEMS:
            raise ValueError(f"{_NOT_A_BATCH}: {n} commands, over the limit of {MAX_BATCH_ITEMS}")
        items = []
        for _ in range(n):
            if u.read_array_header() != 3:
                raise ValueError(_NOT_A_BATCH)
            items.append((u.unpack(), u.unpack(), u.unpack()))
    except msgpack.OutOfData:
        raise ValueError("incomplete input") from None
    except ValueError as exc:  # msgpack's own (a header not of an array, a length over its limit) or ours
        if _NOT_A_BATCH in str(exc):
            raise
        raise ValueError(f"{_NOT_A_BATCH} ({exc})") from None
    if u.tell() != len(data):
        raise ValueError("extra data after the batch")
    return tuple(items)


_NOT_A_BATCH = "a batch is an array of (data, session, seq) arrays"


def _not_a_batch(*_args: Any) -> Any:
    raise ValueError(_NOT_A_BATCH)


def valid_session(sid: Any, seq: Any) -> bool:
    """Exactly ints (no bool, no proxy posing as one) that the journal can hold."""
    return type(sid) is int and type(seq) is int and 0 < sid < U63 and 0 < seq < U63


def guessable(sid: int, seq: int) -> tuple | None:
    """An id below the random ones (version 1: its entry's index) can be guessed: refused
    as expired, before the log, so that its client opens a new session."""
    if sid >= TOKEN_MIN:
        return None
    return ("expired", f"session {sid} was opened before session ids were random, and its id can be guessed: "
                       f"open a new one; whether command {seq} was applied is unknown")


def show(value: Any) -> str:
    """A client's value in an error message: its repr if a short string, else its type."""
    if type(value) is str:
        return repr(value) if len(value) <= 40 else repr(value[:37]) + "..."
    return f"a value of type {type(value).__name__}"


def reply(*items: Any) -> bytes:
    try:
        data = msgpack.packb(list(items), use_bin_type=True)
    except Exception as exc:  # noqa: BLE001 - TypeError, ValueError (nesting), OverflowError (ints)
        return msgpack.packb(["error", f"the result cannot be sent as plain data: {error_text(exc, 300)}"])
    if len(data) > MAX_REPLY:
        return msgpack.packb(["error", f"the result is {len(data)} bytes, over the limit of {MAX_REPLY} bytes "
                                       "for one reply"])
    return data


_logged: dict[str, float] = {}


def log_unexpected(client: str, exc: BaseException) -> None:
    """An error no check foresaw: logged at most once a minute per type (a hostile
    client must not be able to flood the log)."""
    kind = type(exc).__name__
    now = time.monotonic()
    if now - _logged.get(kind, -1e9) >= 60.0:
        _logged[kind] = now
        log.warning("request from client %r failed: %s: %s (answered as an error; further %s not logged for 60 s)",
                    client, kind, error_text(exc, 300), kind)


def bad_address(address: str) -> bool:
    """True when ``address`` is not one a node can dial (rpc.config.parse_address)."""
    from rpc.config import ConfigError, parse_address

    try:
        parse_address(address, "address")
    except ConfigError:
        return True
    return False


def valid_id(value: Any) -> bool:
    return type(value) is str and 0 < len(value) <= MAX_ID and value.isprintable()

"""What a client accepts from its caller: seconds, counts, and commands or queries that a
node can take in one request. Each check says in one line what is wrong, at the call,
instead of an odd failure on a node or a wait that never ends."""
from __future__ import annotations

import math
from typing import Any

from prevalence.codec import CODEC
from prevalence.errors import PrevalenceError
from prevalence.transaction import Query, Transaction
from rpc.transport import MAX_REQUEST

__all__ = ["check_request", "count", "encode_request", "seconds"]


def seconds(value: Any, name: str, at_most: float | None = None) -> float:
    """``value`` if it is a usable number of seconds: nan, 0, a negative or a string used to
    surface later as an odd TypeError, a call that gave up at once blaming "no leader",
    or a wait that never ended."""
    if (type(value) not in (int, float) or not math.isfinite(value) or value <= 0
            or (at_most is not None and value > at_most)):
        most = f" up to {at_most:g}" if at_most is not None else ""
        raise PrevalenceError(f"{name} must be a positive finite number of seconds{most}, not {value!r:.40}")
    return float(value)


def count(value: Any, name: str) -> int:
    if type(value) is not int or value < 1:
        raise PrevalenceError(f"{name} must be a positive integer, not {value!r:.40}")
    return value


def encode_request(obj: Any, kind: type, what: str) -> bytes:
    """``obj`` encoded for one request, or a PrevalenceError saying why it cannot be: a
    Query given to execute (or the reverse) used to fail on the node as an AttributeError,
    and a structure too deep for the encoder as a bare ValueError."""
    if not isinstance(obj, kind) and isinstance(obj, (Transaction, Query)):
        base, use = ("Query", "query()") if isinstance(obj, Query) else ("Transaction", "execute()")
        raise PrevalenceError(f"{type(obj).__qualname__} is a prevalence.{base}: run it with {use}, not as a {what}")
    try:
        data = CODEC.dumps(obj)
    except PrevalenceError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise PrevalenceError(f"{what} {type(obj).__qualname__} cannot be encoded: {exc}") from None
    return check_request(data, what)


def check_request(data: bytes, what: str) -> bytes:
    """``data`` if a node accepts it in one request: past its frame limit a node could
    only drop the connection, and a retry would meet the same fate until the deadline."""
    if len(data) > MAX_REQUEST:
        raise PrevalenceError(f"{what} of {len(data)} bytes is over the limit of {MAX_REQUEST} bytes a node "
                              "accepts per request")
    return data

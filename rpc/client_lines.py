"""A client's connection lines and what its own threads hold of it: the lines that carry
its calls, the weak references its pumps use, and what closes them all when the client
is closed or collected."""
from __future__ import annotations

import logging
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from rpc.batching import Coalescer
from rpc.leader_watch import LeaderWatch
from rpc.subscription import ClusterUnavailable
from rpc.transport import hard_close

__all__ = ["Line", "complete", "shut", "weakly"]

log = logging.getLogger("rpc.client")


def complete(settle: Callable[[Any], None], value: Any) -> None:
    """``settle(value)`` on a Future whose done-callbacks may raise SystemExit (only
    Exception is caught by concurrent.futures): out of a query thread it ended that thread,
    which the pool does not replace, and after four no query_async ever completed."""
    try:
        settle(value)
    except KeyboardInterrupt:
        raise
    except BaseException:  # noqa: BLE001 - an application's done-callback
        log.exception("a query_async done-callback failed")



class Line:
    """One connection of the client to the cluster and the lock that serialises making it.

    Commands and queries share the client's main line; each subscription has a line of its
    own, closed with it."""

    __slots__ = ("conn", "addr", "connect_lock", "closed", "unanswered", "counted_until")

    def __init__(self) -> None:
        self.conn: Any = None
        self.addr: str | None = None
        # seconds during which calls on this connection waited in vain since its last
        # answer, each giving up at its own deadline before the attempt timeout (waits
        # that overlap count once: counted up to ``counted_until``)
        self.unanswered = 0.0
        self.counted_until = 0.0
        self.connect_lock = threading.Lock()
        self.closed = False

    def gave_up(self, conn: Any, began: float, now: float, limit: float) -> bool:
        """A call on ``conn`` waited from ``began`` to ``now`` and gave up at its own
        deadline. True once the calls on this connection have waited ``limit`` s in vain
        since its last answer (overlapping waits counted once): then its node is to
        blame; before, it is the call's own end. Client lock held."""
        if self.conn is not conn:
            return False  # replaced meanwhile: this one's node is judged no more
        self.unanswered += max(0.0, now - max(began, self.counted_until))
        self.counted_until = max(self.counted_until, now)
        return self.unanswered >= limit

    def heard(self, conn: Any) -> None:
        """``conn`` answered a call. Client lock held."""
        if self.conn is conn:
            self.unanswered = 0.0

    def drop(self) -> None:
        """Close the connection, if any. Client lock held."""
        conn, self.conn, self.addr, self.unanswered = self.conn, None, None, 0.0
        if conn is not None:
            hard_close(conn)  # no polite close request: it would wait on a hung node


def weakly(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` called through a weak reference to its object, for the client's own
    threads (the pipeline's pumps): a thread holding the client itself kept a client
    that its program had dropped alive, with its connection open, for good. Whatever
    waits on a call (a caller, a queued command's callback) holds the client."""
    ref = weakref.WeakMethod(method)

    def call(*args: Any) -> Any:
        bound = ref()
        if bound is None:
            raise ClusterUnavailable("the client was dropped")
        return bound(*args)

    return call


def shut(lock: threading.Lock, lines: list[Line], watch: LeaderWatch, coalescer: Coalescer,
          pools: list[ThreadPoolExecutor]) -> None:
    """Close what a client holds: at ``close()``, or once a client its program dropped
    without closing it is collected. Its connection would otherwise stay open on the
    node until this process ends, and a node serves a bounded number of connections."""
    with lock:
        for line in lines:
            line.drop()
        pool = pools.pop() if pools else None
    if pool is not None:
        pool.shutdown(wait=False)
    watch.close()
    coalescer.close()

"""The client's leader watch: leaving a leader that went silent as soon as another node
leads, instead of after the attempt timeout. Used by ``rpc.client.ClusterClient``; its
choice among the other nodes' answers is ``replication.client_policy.leader_among``.
"""
from __future__ import annotations

import logging
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from replication.client_policy import PROBE_AFTER, PROBE_EVERY, leader_among
from rpc.config import parse_address
from rpc.transport import STATUS_MAX_FRAME, NodeLink

log = logging.getLogger("rpc.client")


class LeaderWatch:
    """Leaves a leader that went silent as soon as another node leads, not after the
    attempt timeout: a leader cut off without a reset (a pulled cable, a one-way cut)
    answers nothing, while the others elect a new one in 0.25-0.5 s.

    A call to the leader unanswered for ``PROBE_AFTER`` s makes this thread ask the
    other nodes' status (each on a connection of its own, in parallel). When one of them
    says it leads, the client is pointed at it and the stuck connection is closed: the
    caller then retries the same command (same session and number) there. A slow but
    healthy leader loses nothing by it: the others name it, and nothing changes."""

    def __init__(self, client: Any):
        # weakly: this thread runs until the client is closed, and a client its program
        # dropped without closing it must still be collected (and so closed)
        self._client = weakref.ref(client)
        self._cond = threading.Condition()
        self._calls: dict[int, tuple[float, Any, Any, str]] = {}
        self._next = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._links: dict[str, NodeLink] = {}
        self._probing: dict[str, Future] = {}
        self._pool: ThreadPoolExecutor | None = None

    def start(self, line: Any, conn: Any, addr: str) -> int:
        with self._cond:
            self._next += 1
            self._calls[self._next] = (time.monotonic(), line, conn, addr)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rpc-leader-watch", daemon=True)
                self._thread.start()
            elif len(self._calls) == 1:
                self._cond.notify()
            return self._next

    def end(self, token: int) -> None:
        with self._cond:
            self._calls.pop(token, None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
            links, self._links = self._links, {}
        for link in links.values():
            link.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._calls and not self._closed:
                    self._cond.wait()  # idle: no call in flight, no wake-ups
                if self._closed:
                    return
                now = time.monotonic()
                oldest = min(self._calls.values(), key=lambda c: c[0])
                if now - oldest[0] < PROBE_AFTER:
                    self._cond.wait(PROBE_AFTER - (now - oldest[0]))
                    continue
            _, line, conn, addr = oldest
            began = time.monotonic()
            try:
                found = self._leader_besides(addr)
            except Exception:  # noqa: BLE001 - one bad round must not end the watch for good
                log.exception("leader watch: asking the other nodes failed")
                found = None
            if found is None:
                with self._cond:
                    self._cond.wait(max(0.0, PROBE_EVERY - (time.monotonic() - began)))
                continue
            self._leave(oldest[0], line, conn, addr, found)

    def _leave(self, since: float, line: Any, conn: Any, addr: str, found: str) -> None:
        """Point the client at ``found`` and close the stuck connection (a function of
        its own: the thread must not hold the client between rounds)."""
        c = self._client()
        if c is not None:
            log.info("%s did not answer for %.2f s and %s leads now: retrying there", addr,
                     time.monotonic() - since, found)
            with c._lock:
                c._route.leader_found(addr, found, time.monotonic())
                if line.conn is conn:
                    c._drop(line)  # wakes the stuck caller, which retries at the hint
        with self._cond:  # the stuck calls on that connection are over
            for token in [t for t, v in self._calls.items() if v[2] is conn]:
                del self._calls[token]

    def _leader_besides(self, stuck: str) -> str | None:
        """The address of another node that says it leads (the highest term), if one
        answers within ``PROBE_EVERY``; a silent one's status call carries on meanwhile."""
        c = self._client()
        others = [a for a in c.addresses if a != stuck] if c is not None else []
        if not others:
            return None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(4, thread_name_prefix="rpc-leader-probe")
        for a in others:  # one status call per node at a time: a silent one may still hold its last
            if a not in self._probing:
                self._probing[a] = self._pool.submit(self._status, a)
        wait([self._probing[a] for a in others], timeout=PROBE_EVERY)
        answers = []
        for addr in others:
            fut = self._probing[addr]
            if fut.done():
                del self._probing[addr]  # answered (or failed): asked again next round
                answers.append((addr, None if fut.exception() is not None else fut.result()))
        return leader_among(answers)

    def _status(self, addr: str) -> dict | None:
        with self._cond:
            link = self._links.get(addr)
            if link is None:
                c = self._client()
                if c is None:
                    return None
                link = self._links[addr] = NodeLink(parse_address(addr, "address"), c._secret, timeout=0.3,
                                                    connect_timeout=0.2, ssl_context=c._ssl,
                                                    max_frame=STATUS_MAX_FRAME, frame_timeout=0.3,
                                                    want=getattr(c, "wanted", None))  # an older epoch refuses
        reply = link.call("status")  # closes itself on failure, reopens on the next call
        return reply[1] if reply[0] == "ok" else None

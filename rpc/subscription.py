"""Subscriptions: the applied transactions, in order, each once, across failovers.

``ClusterClient.subscribe`` starts one; it long-polls ``read_log`` through the client's
calls on a connection of its own.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, NamedTuple

from prevalence.errors import OutcomeUnknown, PrevalenceError
from replication.client_policy import shown

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
RETRY_AFTER_ERROR = 5.0  # seconds before a subscription asks again after a refused key or a bug
LONG_POLL = 1.0  # seconds a node holds a poll that finds nothing new (less with a short client timeout)
log = logging.getLogger("rpc.client")


class ClusterUnavailable(PrevalenceError):
    """No leader answered before the call's deadline; the message says what was tried.
    ``sent``: a request of the call went out before it ended (what it asked may be done)."""

    def __init__(self, message: str = "", *, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent


class CommandUnanswered(ClusterUnavailable, OutcomeUnknown):
    """The call ended (its deadline, or the client closed) after the command was sent, so
    it may have been applied, and this client no longer asks its session: look at the
    state before sending it again. Both a ClusterUnavailable and an OutcomeUnknown."""


class Event(NamedTuple):
    """A committed and applied transaction, as a subscriber sees it."""

    index: int
    time: datetime
    type: str
    fields: dict


class Compacted(NamedTuple):
    """The subscription asked for entries a snapshot has replaced; it resumes at ``first_index``."""

    requested: int
    first_index: int


class Subscription:
    """Delivers applied transactions in order to ``callback`` on a thread of its own:
    each once, and none that changed nothing (refused by check, a retry, an expired session).

    It long-polls a node (the leader when known) on a connection of its own: the node
    serves one request at a time per connection, so a poll on the client's shared one
    would hold up every call queued behind it. After a failover it resumes at the index
    after the last one delivered: no gap, no duplicate. Close it when done.
    """

    def __init__(self, client: Any, callback: Callable[[Any], None], start: int):
        self._client, self._callback, self.index = client, callback, start
        self._stop = threading.Event()
        self._line = client._open_line()
        self._thread = threading.Thread(target=self._run, name="subscription", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        c = self._client
        # the node answers an idle poll after this: well within what the client waits for
        # a reply, else every idle poll would count against a healthy node (a suspect, its
        # connection dropped) and the client's other calls would go elsewhere first
        wait = min(LONG_POLL, c.timeout / 2, c.attempt_timeout / 2)
        while not self._stop.is_set() and not c._closed:
            try:
                reply = c._call(time.monotonic() + c.timeout, "read_log", self.index, 256, wait, any_node=True,
                                line=self._line)
            except ClusterUnavailable:
                continue  # a long outage: keep trying, from the same index
            except Exception as exc:  # noqa: BLE001 - the stream must not end unheard: said, then retried
                # AuthenticationFailed (every node refused the key: a rotation under way),
                # or a bug: a thread that ended here would leave the subscriber waiting
                # for events that never come
                log.error("subscription: reading the log failed (retrying in %.0f s): %s: %s",
                          RETRY_AFTER_ERROR, type(exc).__name__, exc,
                          exc_info=not isinstance(exc, PrevalenceError))
                self._stop.wait(RETRY_AFTER_ERROR)
                continue
            try:
                if reply[0] == "compacted":
                    if reply[1] <= self.index:  # a node says so only when its log begins past it
                        raise ValueError(f"compacted from {reply[1]}, not past {self.index}")
                    self._deliver(Compacted(self.index, reply[1]))
                    self.index = reply[1]
                    continue
                if reply[0] == "not_leader":  # it cannot apply the log to there: elsewhere, from the same index
                    hint = reply[2] if type(reply[2]) is str else None
                    c._move_line(self._line, hint)
                    self._stop.wait(0.05 if hint else 0.5)  # none named: every node may be stuck
                    continue
                if reply[0] == "ok" and type(reply[1]) is int:
                    events = [(index, ts, type_name, fields) for index, ts, type_name, fields in reply[2]]
                    for k, (index, *_rest) in enumerate(events):
                        if type(index) is not int:
                            raise TypeError(f"an event's index is a {type(index).__name__}")
                        # in index order, the next index past them: else one skipped as
                        # "delivered already" may never have been (a gap)
                        after = events[k + 1][0] if k + 1 < len(events) else reply[1]
                        if type(after) is not int or after <= index:
                            raise ValueError(f"event {index} followed by {shown(after)}")
                    for index, ts, type_name, fields in events:
                        if self._stop.is_set():
                            return
                        if index < self.index:
                            continue  # delivered already (a node sending it again)
                        self._deliver(Event(index, _EPOCH + timedelta(microseconds=ts), type_name, fields))
                        # a malformed event later in the batch is asked for again, not
                        # the ones delivered before it
                        self.index = index + 1
                    self.index = max(self.index, reply[1])
                    continue
                log.warning("subscription: %s", shown(reply[-1]))
            except (TypeError, ValueError, IndexError, OverflowError) as exc:  # a malformed batch of events
                log.warning("subscription: malformed reply from the cluster (%s): %s", exc, shown(reply))
            self._stop.wait(0.5)

    def _deliver(self, item: Any) -> None:
        try:
            self._callback(item)
        except KeyboardInterrupt:
            raise
        except BaseException:  # noqa: BLE001 - the subscriber's bug must not end the stream
            # SystemExit too: in this thread it would end the stream without a word
            log.exception("subscription callback failed on %r", item)

    def close(self) -> None:
        self._stop.set()
        self._client._close_line(self._line)  # wakes a poll in progress at once
        if threading.current_thread() is not self._thread:
            self._thread.join(5)

"""The client library: a connection to a cluster that finds the leader by itself.

    with rpc.connect(["10.0.0.1:7100", "10.0.0.2:7100"], secret_file="client.secret") as c:
        c.execute(Deposit("alice", 10))     # exactly once, survives failover
        c.query(Balance("alice"))           # linearizable by default
        f = c.execute_async(Deposit("bob", 5))  # a Future; one thread keeps hundreds in flight

On a lost connection, a timeout or "not leader", the client moves to the leader it was
told of (or tries the addresses it knows), reconnects with jittered backoff and retries
the same command under the same session number until the call's deadline, so a command
in flight during a failover is applied exactly once. Connecting is bounded (no OS connect
retries), and a leader that stops answering without closing its connections is left
after ``attempt_timeout`` seconds.
"""
from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from concurrent.futures import CancelledError, Future, InvalidStateError, ThreadPoolExecutor
from typing import Any, Callable, Iterable

import msgpack

from prevalence.codec import unpack_reply
from prevalence.errors import PrevalenceError
from prevalence.sessions import SessionExpired
from prevalence.transaction import Query, Transaction
from rpc.client_args import count, encode_request, seconds
from rpc.client_lines import Line, complete, shut, weakly
from rpc.batching import CALLS_IN_FLIGHT, MAX_BATCH, MAX_BATCH_BYTES, MAX_CALLS_IN_FLIGHT, Coalescer, Command
from rpc.auth import AuthenticationFailed
from rpc.config import format_address, parse_address
from rpc.epochs import check_wanted, secret_file_epoch
from rpc.secret import check_secret, load_secret
from rpc.remote_errors import (  # noqa: F401 - the first two re-exported: rpc.client's public names
    RemoteTransactionError, register_exception, remote_exception)
from rpc.subscription import ClusterUnavailable, CommandUnanswered, Subscription
from rpc.leader_watch import LeaderWatch
from rpc.transport import MAX_REQUEST, NodeLink, call_within, hard_close, open_connection
from replication.client_policy import Attempts, Route, Session, SessionPool, shown, well_formed

CONSISTENCY = ("linearizable", "leader", "local")
MAX_ATTEMPT_TIMEOUT = 86400.0  # a day: past some 1e9 s the OS's timed waits overflow
MAX_INDEX = 2**63 - 1  # a node reads log indexes as 63-bit integers
_CLOSED_BY_NODE = (EOFError, ConnectionResetError, BrokenPipeError)  # a call found its connection closed
log = logging.getLogger("rpc.client")


def _read_reply(raw: Any) -> list:
    """A node's reply as it was made (map keys of any kind msgpack reads back); one that
    arrived whole but cannot be read (a result with a tuple key, packed as an array) is
    that call's error, the same from every node, not a lost connection to retry."""
    if type(raw) is not bytes:
        raise TypeError(f"a reply must be bytes, got {type(raw).__name__}")
    try:
        return unpack_reply(raw)
    except Exception as exc:  # noqa: BLE001 - msgpack raises several kinds
        return ["error", f"the node's reply cannot be read: {type(exc).__name__}: {str(exc)[:200]}"]


class ClusterClient:
    """Thread-safe; share one per process. Commands from parallel threads use separate
    sessions from a small pool, travel together in one call when they overlap, and each
    applies once."""

    def __init__(self, addresses: Iterable[str], secret: bytes, *, timeout: float = 10.0,
                 attempt_timeout: float = 1.5, ssl_context: Any = None, max_batch: int = MAX_BATCH,
                 max_batch_bytes: int = MAX_BATCH_BYTES, calls_in_flight: int = CALLS_IN_FLIGHT,
                 cluster: str | None = None, epoch: int | None = None):
        if type(calls_in_flight) is not int or not 1 <= calls_in_flight <= MAX_CALLS_IN_FLIGHT:
            raise PrevalenceError(f"calls_in_flight must be an integer from 1 to {MAX_CALLS_IN_FLIGHT}, "
                                  f"not {calls_in_flight!r:.40}")
        if isinstance(addresses, (str, bytes)):  # else read character by character: "got '1'"
            raise PrevalenceError('rpc.connect takes a list of "HOST:PORT" addresses, not one string: '
                                  f'[{addresses!r:.60}]')
        try:
            addresses = list(addresses)
        except TypeError:
            raise PrevalenceError('rpc.connect: addresses must be a list of "HOST:PORT", '
                                  f'not {addresses!r:.40}') from None
        if ssl_context is not None and not hasattr(ssl_context, "wrap_socket"):  # else AttributeError at first call
            raise PrevalenceError(f"ssl_context must be an ssl.SSLContext or None, not {type(ssl_context).__name__}")
        timeout = seconds(timeout, "timeout")
        attempt_timeout = seconds(attempt_timeout, "attempt_timeout", MAX_ATTEMPT_TIMEOUT)
        max_batch, max_batch_bytes = count(max_batch, "max_batch"), count(max_batch_bytes, "max_batch_bytes")
        self._route = Route(format_address(parse_address(a, "address")) for a in addresses)
        if not self._route.addresses:
            raise PrevalenceError("rpc.connect needs at least one address")
        self._secret = check_secret(secret, "rpc.connect")
        # a node of another cluster or an older epoch refuses the handshake (rpc.epochs)
        self.wanted = check_wanted(cluster, epoch)
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self._ssl = ssl_context
        self._lock = threading.Lock()
        self._rng = random.Random()  # jitter of retries; used under _lock
        self._main = Line()
        # commands travel on the main line and calls_in_flight - 1 more (rpc.batching's lanes)
        self._command_lines = [self._main] + [Line() for _ in range(max(0, calls_in_flight - 1))]
        self._lines: list[Line] = list(self._command_lines)  # and every open subscription's
        self._sessions = SessionPool()
        self._closed = False
        self._coalescer = Coalescer(weakly(self._send_batch), max_batch, max_batch_bytes, calls_in_flight)
        self._query_pool: list[ThreadPoolExecutor] = []  # made at the first query_async
        self._watch = LeaderWatch(self)
        # the client's threads hold it weakly: dropped unclosed, it is collected and closed
        self._shut = weakref.finalize(self, shut, self._lock, self._lines, self._watch, self._coalescer,
                                      self._query_pool)
        self._shut.atexit = False
        # address -> seconds its connection attempts ran until the call's own budget ended
        # since it last accepted one (see _connect)
        self._connect_cut: dict[str, float] = {}

    # -- the API ----------------------------------------------------------------------
    @property
    def addresses(self) -> list[str]:
        """The nodes this client knows: those it was given and leaders it was told of."""
        return self._route.addresses

    @property
    def leader(self) -> str | None:
        """The address of the node this client believes leads (None before the first call)."""
        return self._main.addr or self._route.hint

    def execute(self, tx: Any, *, timeout: float | None = None) -> Any:
        """Run ``tx`` on the leader exactly once; its result, or its own exception.

        Commands from threads that share this client travel together: see rpc.batching."""
        data = encode_request(tx, Transaction, "command")
        deadline = self._deadline(timeout)
        while True:
            session = self._take_session(deadline)
            cmd = Command(data, session.id, session.next_seq, deadline)
            try:
                self._coalescer.run(cmd)
            finally:
                self._release(session, cmd)
            # its only request was refused on a session the cluster expired: certainly not
            # applied, so it goes again on a new session (an operator's first command after
            # a long idle used to fail as "outcome unknown")
            if not (cmd.error is None and cmd.reply[0] == "expired" and cmd.sends == 1
                    and time.monotonic() < deadline):
                break
        if cmd.error is not None:
            raise cmd.error
        return self._outcome(cmd.reply)

    # -- pipelining: execute_async / query_async ----------------------------------------
    def execute_async(self, tx: Any, *, timeout: float | None = None) -> Future:
        """Send ``tx`` without waiting: a Future of what ``execute`` would return or raise.

        Exactly once and failover-safe like ``execute``; one thread can keep hundreds in
        flight. They queue in this client and board the next call (up to ``max_batch``
        each) when it leaves; a command gets its session and number when it boards, so
        the pipeline holds at most ``max_batch`` sessions per call in flight however
        many are queued. With ``calls_in_flight=1`` they apply in the order sent.
        ``timeout`` counts from now, time in the queue included. The future completes
        on the client's sending thread: keep its done-callbacks short."""
        future: Future = Future()
        try:
            data = encode_request(tx, Transaction, "command")
            deadline = self._deadline(timeout)
        except Exception as exc:  # noqa: BLE001 - not encodable, too large, a bad timeout: nothing is sent
            future.set_exception(exc)
            return future
        cmd = Command(data, 0, 0, deadline, callback=self._complete_async, owner=[future, None])
        self._coalescer.submit(cmd)
        return future

    def query_async(self, q: Any, consistency: str = "linearizable", *, timeout: float | None = None) -> Future:
        """``query`` on a thread of this client's small pool: a Future of its result.

        Queries are not batched: they share the client's connection, one at a time."""
        if consistency not in CONSISTENCY:
            raise PrevalenceError(f"consistency must be one of {', '.join(CONSISTENCY)}, not {consistency!r}")
        if timeout is not None:
            seconds(timeout, "timeout")
        with self._lock:
            if self._closed:
                raise ClusterUnavailable("query_async: closed")
            if not self._query_pool:
                self._query_pool.append(ThreadPoolExecutor(4, thread_name_prefix="rpc-query"))
            pool = self._query_pool[0]
        future: Future = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = self.query(q, consistency, timeout=timeout)
            except BaseException as exc:  # noqa: BLE001 - the caller's, through its future
                complete(future.set_exception, exc)
            else:
                complete(future.set_result, result)

        pool.submit(run)
        return future

    def _board(self, cmd: Command) -> bool:
        """A pipelined command boards a call: it gets a session and its number now
        (False if it was cancelled, or no session could be had: cmd.error says why)."""
        future, session = cmd.owner
        if session is not None:
            return True  # a retry of the same batch: same session, same number
        if not future.set_running_or_notify_cancel():
            cmd.error = CancelledError()
            return False
        try:
            session = self._take_session(cmd.deadline)
        except Exception as exc:  # noqa: BLE001 - this command's own failure
            cmd.error = exc
            return False
        cmd.owner[1] = session
        cmd.session, cmd.seq = session.id, session.next_seq
        return True

    def _complete_async(self, cmd: Command) -> None:
        future, session = cmd.owner
        try:
            if session is not None:
                self._release(session, cmd)
        finally:
            self._settle(future, cmd)

    def _settle(self, future: Future, cmd: Command) -> None:
        try:
            if cmd.error is not None:
                future.set_exception(cmd.error)
            else:
                try:
                    result = self._outcome(cmd.reply)
                except Exception as exc:  # noqa: BLE001 - the transaction's own failure
                    future.set_exception(exc)
                else:
                    future.set_result(result)
        except InvalidStateError:  # cancelled by its owner before it boarded
            pass

    def _release(self, session: Session, cmd: Command) -> None:
        with self._lock:
            self._sessions.release(session, cmd.seq, cmd.reply, time.monotonic())

    def query(self, q: Any, consistency: str = "linearizable", *, timeout: float | None = None) -> Any:
        """``linearizable``: confirmed by the leader (ReadIndex). ``leader``: the leader's
        state without that round (stale only just after it lost leadership unknowingly).
        ``local``: whichever node this client is connected to, possibly behind."""
        if consistency not in CONSISTENCY:
            raise PrevalenceError(f"consistency must be one of {', '.join(CONSISTENCY)}, not {consistency!r}")
        data = encode_request(q, Query, "query")
        reply = self._call(self._deadline(timeout), "query", data, consistency,
                           any_node=consistency == "local")
        return self._outcome(reply)

    def subscribe(self, callback: Callable[[Any], None], from_index: int | None = None) -> Subscription:
        """Call ``callback(Event)`` for every applied transaction from ``from_index``
        (default: the next one), in order, across failovers; ``callback(Compacted)`` if
        that index was compacted away (the stream then goes on from the oldest kept)."""
        if not callable(callback):
            raise PrevalenceError(f"subscribe: the callback must be callable, not {callback!r:.40}")
        if from_index is not None and (type(from_index) is not int or not 1 <= from_index <= MAX_INDEX):
            # a node refuses such an index, and the subscription would ask again forever
            raise PrevalenceError(f"subscribe: from_index must be a log index from 1 to {MAX_INDEX}, "
                                  f"not {from_index!r:.40}")
        if self._closed:
            raise ClusterUnavailable("subscribe: closed")
        start = from_index if from_index is not None else self.status()["applied_index"] + 1
        return Subscription(self, callback, start)

    def status(self, *, timeout: float | None = None) -> dict:
        """The status of the node this client talks to (the leader when known)."""
        return self._outcome(self._call(self._deadline(timeout), "status", any_node=True))

    def app_call(self, address: str, name: str, data: bytes = b"", *, timeout: float | None = None) -> bytes:
        """Call ``name``, a handler that the application hosted in the node at ``address``
        added to ``process.handlers``: bytes in, the handler's bytes out.

        Such a call belongs to that one node (its agent's status, say), so it is not
        retried elsewhere: a node that cannot be reached, has no such handler, or whose
        handler failed raises PrevalenceError naming the node and the reason."""
        addr = parse_address(address, "address")
        where = f"{format_address(addr)}: app_call {name!r:.60}"  # a name of megabytes is no message
        if type(name) is not str:
            raise PrevalenceError(f"{where}: the handler's name must be a str, not {type(name).__name__}")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise PrevalenceError(f"{where}: data must be bytes, not {type(data).__name__}")
        wait = self.timeout if timeout is None else seconds(timeout, "timeout")
        # past the node's frame limit it drops the connection: "Broken pipe" said nothing
        data = bytes(data)
        size = len(data) + len(name.encode("utf-8", "surrogatepass"))
        if size > MAX_REQUEST:
            raise PrevalenceError(f"{where}: name and data of {size} bytes are over the limit of {MAX_REQUEST} "
                                  "bytes a node accepts per request")
        with NodeLink(addr, self._secret, timeout=wait, ssl_context=self._ssl) as link:
            try:
                reply = link.call("app_call", name, data)
            except PrevalenceError as exc:  # could not connect: the message says why
                raise PrevalenceError(f"{where}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - lost, timed out, refused: all mean "no answer"
                raise PrevalenceError(f"{where}: {type(exc).__name__}: {exc}") from None
        if reply[0] != "ok":
            raise PrevalenceError(f"{where}: {reply[-1]}")
        return reply[1]

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._shut()

    def __enter__(self) -> "ClusterClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def batching(self) -> dict:
        """How commands were coalesced so far: calls sent, commands carried, largest batch."""
        c = self._coalescer
        return {"calls": c.calls, "commands": c.commands, "largest": c.largest}

    # -- internals --------------------------------------------------------------------
    def _deadline(self, timeout: Any) -> float:
        return time.monotonic() + (self.timeout if timeout is None else seconds(timeout, "timeout"))

    def _send_batch(self, batch: list[Command], lane: int = 0) -> None:
        """One ``execute_batch`` call for ``batch``, retried (same sessions and numbers)
        until each command's own deadline; fills in every command's reply or error."""
        pending = [c for c in batch if c.callback is None or self._board(c)]
        sent = False  # by any call so far: each pending command went with each of them
        sends = [0]  # requests that carried the batch, over all its calls
        while pending:
            try:
                reply = self._call(min(c.deadline for c in pending), "execute_batch",
                                   msgpack.packb([(c.data, c.session, c.seq) for c in pending], use_bin_type=True),
                                   line=self._command_lines[lane], sends=sends)
            except ClusterUnavailable as exc:
                sent = sent or exc.sent
                now = time.monotonic()
                for c in pending:
                    if self._closed or c.deadline <= now:
                        c.error = CommandUnanswered(f"{exc}; the command was sent and may have been applied: look "
                                                    "at the state before sending it again") \
                            if sent else ClusterUnavailable(str(exc))
                pending = [c for c in pending if c.error is None]
                continue
            for c in pending:
                c.sends = sends[0]
            if reply[0] == "ok" and type(reply[1]) is list and len(reply[1]) == len(pending):
                for c, r in zip(pending, reply[1]):
                    c.reply = r if well_formed(r) else ["error", f"malformed reply to a command: {shown(r)}"]
            else:  # refused as a whole (e.g. too large): each caller gets the refusal
                for c in pending:
                    c.reply = reply if reply[0] != "ok" else ["error", f"malformed batch reply: {shown(reply)}"]
            return

    def _take_session(self, deadline: float) -> Session:
        with self._lock:
            session = self._sessions.take(time.monotonic())
        return session or Session(self._outcome(self._call(deadline, "register_session")))

    def _outcome(self, reply: list) -> Any:
        """A reply's value, or its exception. Every reply is checked whole where it
        arrives (``Attempts.answered`` for a call's, ``_send_batch`` for each command's
        in a batch), so this one is well formed."""
        kind = reply[0]
        if kind == "ok":
            return reply[1]
        if kind in ("failed", "rejected"):
            raise remote_exception(kind, reply[1], reply[2])
        if kind == "expired":
            raise SessionExpired(reply[1])
        raise PrevalenceError(reply[-1])

    def _open_line(self) -> Line:
        line = Line()
        with self._lock:
            line.closed = self._closed
            self._lines.append(line)
        return line

    def _close_line(self, line: Line) -> None:
        with self._lock:
            line.closed = True
            self._drop(line)
            if line in self._lines:
                self._lines.remove(line)

    def _call(self, deadline: float, method: str, *args: Any, any_node: bool = False,
              line: Line | None = None, sends: list[int] | None = None) -> list:
        """``method(*args)`` on the leader (on any node when ``any_node``), retried as
        ``replication.client_policy.Attempts`` decides until ``deadline``; ``sends[0]``
        counts the requests that went out."""
        line = line or self._main
        attempts = Attempts(self._route, method, deadline, self._rng, any_node=any_node)
        sent = False  # a request went out: what it asked may have been done
        while True:
            now = time.monotonic()  # read once: the check and the budget must agree
            if attempts.over(now) or self._closed or line.closed:
                raise ClusterUnavailable(attempts.why_over(self._closed or line.closed), sent=sent)
            try:
                conn, addr = self._connection(min(deadline - now, self.attempt_timeout), line)
            except AuthenticationFailed:
                raise  # every node answered and refused our key: no retry changes that
            except PrevalenceError as exc:
                with self._lock:
                    pause = attempts.unreachable(str(exc), time.monotonic())
                time.sleep(pause)
                continue
            token = None if any_node else self._watch.start(line, conn, addr)
            began = time.monotonic()
            wait = min(deadline - began, self.attempt_timeout)  # connecting took some
            try:
                sent = True
                if sends is not None:
                    sends[0] += 1
                raw = call_within(conn, method, args, max(0.001, wait))
                reply = _read_reply(raw)
            except Exception as exc:  # connection lost, timed out (a hung node), refused
                if line.closed or self._closed:  # we closed it: the node is not to blame
                    raise ClusterUnavailable(f"{method}: closed", sent=sent) from None
                if isinstance(exc, TimeoutError) and wait < self.attempt_timeout:
                    # this call ran out of its own time: unless the calls on this
                    # connection have waited the attempt timeout in all, the node is not
                    # blamed (a suspect leader's redirects are ignored for SUSPECT_FOR)
                    # and the connection the other threads share stays open (sound:
                    # RPyC drops the late reply of an expired request)
                    with self._lock:
                        blame = line.gave_up(conn, began, time.monotonic(), self.attempt_timeout)
                    if not blame:
                        attempts.tried.append(f"{addr}: no answer within what was left of the call "
                                              f"({max(0.0, wait) * 1000:.0f} ms)")
                        raise ClusterUnavailable(attempts.why_over(False), sent=sent) from None
                with self._lock:
                    # closed from the node's side: a drop of ours (the leader watch's) replaces line.conn
                    closed = isinstance(exc, _CLOSED_BY_NODE) and line.conn is conn
                    step = (attempts.closed if closed else attempts.lost)(addr, f"{type(exc).__name__}: {exc}",
                                                                          time.monotonic())
            else:
                with self._lock:
                    line.heard(conn)
                    step = attempts.answered(addr, reply, time.monotonic())
            finally:
                if token is not None:
                    self._watch.end(token)
            if step.done:
                return step.reply
            if step.drop:
                with self._lock:
                    if line.conn is conn:
                        self._drop(line)
            if step.pause:
                time.sleep(step.pause)

    def _connection(self, budget: float, line: Line | None = None):
        """The line's connection, made if needed: connecting and its handshake within
        ``budget`` (what is left of the call, at most the attempt timeout)."""
        line = line or self._main
        with self._lock:
            if line.conn is not None:
                return line.conn, line.addr
        # One thread connects at a time; the others then share its connection instead of
        # each replacing (and closing under the others) the one made just before.
        with line.connect_lock:
            return self._connect(max(0.001, budget), line)

    def _connect(self, budget: float, line: Line):
        with self._lock:
            if line.conn is not None:
                return line.conn, line.addr
            # the leader first when known: a subscription reads the freshest log there
            order = self._route.connect_order(time.monotonic(), line is self._main, self._main.addr)
        errors = []
        refused: list[AuthenticationFailed] = []
        until = time.monotonic() + budget  # for all the addresses: each hung one took 0.5 s of it
        for k, addr in enumerate(order):
            left = until - time.monotonic()
            if left <= 0:
                errors.append(f"no time left for {len(order) - k} more address(es)")
                break
            began = time.monotonic()
            try:
                # a live node answers the handshake in milliseconds; a paused one never does
                # each later call on the connection gets the whole attempt timeout, not
                # what was left of the call that happened to open it
                conn = open_connection(parse_address(addr, "address"), self._secret, role="client", ident="client",
                                       connect_timeout=min(0.3, left), handshake_timeout=min(0.5, left),
                                       request_timeout=self.attempt_timeout, ssl_context=self._ssl,
                                       deadline=until, want=self.wanted)
            except PrevalenceError as exc:
                errors.append(str(exc))
                if isinstance(exc, AuthenticationFailed) and exc.key_refused:
                    refused.append(exc)
                with self._lock:
                    now = time.monotonic()
                    if left < 0.5 and until - now < 0.005:
                        # it ran until the call's own budget ended, shorter than a full
                        # attempt: the node is blamed (tried last, its redirects ignored)
                        # only once such attempts add up to a full handshake timeout since
                        # it last accepted a connection
                        cut = self._connect_cut[addr] = self._connect_cut.get(addr, 0.0) + now - began
                        if cut < 0.5:
                            continue
                    self._route.failed(addr, now)
                continue
            with self._lock:
                self._connect_cut.pop(addr, None)
                self._route.connected(addr)
                self._drop(line)
                if line.closed or self._closed:  # closed while connecting: nobody would close this one
                    hard_close(conn)
                    raise PrevalenceError("closed")
                line.conn, line.addr = conn, addr
            return conn, addr
        if refused and len(refused) == len(order):
            first = str(refused[0])
            others = f" (and the {len(refused) - 1} other node(s) the same)" if len(refused) > 1 else ""
            raise AuthenticationFailed(f"{first}{others}")
        raise PrevalenceError("; ".join(errors) or "no address to try")

    def _move_line(self, line: Line, leader_addr: str | None) -> None:
        """The node on ``line`` cannot serve what it asks (it cannot apply the log): it
        reconnects, to ``leader_addr`` if named, that node tried last for a while."""
        with self._lock:
            now = time.monotonic()
            if line.addr is not None:
                self._route.failed(line.addr, now)
            self._route.redirected(leader_addr, now)
            self._drop(line)

    def _drop(self, line: Line | None = None) -> None:
        (line or self._main).drop()


def connect(addresses: Iterable[str], *, secret: bytes | None = None, secret_file: str | None = None,
            timeout: float = 10.0, attempt_timeout: float = 1.5, ssl_context: Any = None,
            max_batch: int = MAX_BATCH, max_batch_bytes: int = MAX_BATCH_BYTES,
            calls_in_flight: int = CALLS_IN_FLIGHT, cluster: str | None = None,
            epoch: int | None = None) -> ClusterClient:
    """A client of the cluster at ``addresses`` ("host:port"), authenticated by the client
    key (``client.secret``; the admin key also serves, and may change cluster settings).

    ``cluster``, ``epoch``: what this client talks to (default: what ``cluster-epoch.toml``
    beside ``secret_file`` names, if any); a node of another cluster or an older epoch,
    left out of a ``cluster recover``, is refused with one line naming it (rpc.epochs).

    ``max_batch`` and ``max_batch_bytes`` bound how many concurrent commands (and how
    many bytes of them) travel in one call; ``max_batch=1`` sends each on its own.
    ``calls_in_flight`` such calls travel at once, each on a connection of its own."""
    if (secret is None) == (secret_file is None):
        raise PrevalenceError("rpc.connect needs exactly one of secret= or secret_file=")
    if secret_file is not None and not isinstance(secret_file, (str, bytes, os.PathLike)):
        raise PrevalenceError(f"secret_file must be a path, not {type(secret_file).__name__}")
    key = secret if secret is not None else load_secret(secret_file)
    if cluster is None and epoch is None and secret_file is not None:
        cluster, epoch = secret_file_epoch(secret_file) or (None, None)
    return ClusterClient(addresses, key, timeout=timeout, attempt_timeout=attempt_timeout, ssl_context=ssl_context,
                         max_batch=max_batch, max_batch_bytes=max_batch_bytes, calls_in_flight=calls_in_flight,
                         cluster=cluster, epoch=epoch)

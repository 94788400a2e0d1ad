"""What an authenticated client may call on a node: status, execute(_batch), query, the
committed log (subscriptions), maintenance, and the hosted application's handlers
(``app_call``).

Bytes in, bytes out (msgpack), never pickle. Replies are ``["ok", value]``,
``["not_leader", leader_id, leader_address]`` (also when this node stopped with the
command unfinished: it may commit elsewhere, and a retry under the same session number
learns its outcome), ``["rejected"|"failed", type, message]``, ``["expired", message]``
(the session expired: the command's outcome is unknown), ``["unavailable", message]``
(no quorum in time: the same request may be retried) or ``["error", message]``. The client library (rpc.client) numbers commands within
sessions, so its retries apply once, and sends concurrent ones in one execute_batch.

Administration (membership changes, leadership transfer, the session expiry) is for a
connection authenticated with the admin key; the client key gets an error saying so.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Protocol

import rpyc

from prevalence.codec import CODEC
from prevalence.errors import OutcomeUnknown, PrevalenceError
from prevalence.sessions import RegisterSession, SetSessionExpiry
from prevalence.text import error_text
from replication.client_policy import refusal_reply
from replication.errors import CannotApply, CommittedUnapplied, NodeHalted, ProposalRefused
from replication.node import Node
from replication.runtime.unreadable import past_state
from rpc.decode_budget import BUDGET
from rpc.epochs import refused_when_superseded
from rpc.requests import (
    BATCH_TIMEOUT, DEFAULT_MAX_REQUEST, MAX_BATCH_ITEMS, MAX_ID, MAX_NAME, U63, bad_address, guessable,
    log_unexpected, reply, show, unpack_batch, valid_id, valid_session,
)

log = logging.getLogger("rpc.service")


class Host(Protocol):
    """What a service needs of the process serving it (rpc.server.NodeProcess)."""

    node: Node
    handlers: dict[str, Callable[[bytes], bytes]]

    def status(self) -> dict: ...

    def address_of(self, node_id: str | None) -> str | None: ...


#: Transactions that change how the cluster runs rather than the application's state:
#: only a connection holding the admin key may send them.
ADMIN_TRANSACTIONS: tuple[type, ...] = (SetSessionExpiry,)


_NEEDS_ADMIN = ("{what} is cluster administration: it needs the admin key (admin.secret); this connection "
                "authenticated with the client key")


def _not_admin(what: str) -> bytes:
    return reply("error", _NEEDS_ADMIN.format(what=what))


#: The calls a node left in an older epoch refuses (rpc.epochs): all but status and app_call.
_EPOCH_BOUND = frozenset(("execute", "execute_batch", "query", "register_session", "read_log", "change_membership",
                          "transfer_leadership", "backup_begin", "backup_chunk", "backup_end"))


def _local_read(node: Node, q: Any) -> Any:
    try:
        return node.query(q, linearizable=False)
    except CannotApply as exc:  # a stuck node (replication.runtime.unreadable): said, not redirected
        raise PrevalenceError(str(exc)) from None


class ClientService(rpyc.Service):
    """One per client connection; exposes only the methods below."""

    _EXPOSED = ("status", "execute", "execute_batch", "query", "register_session", "read_log", "change_membership",
                "transfer_leadership", "app_call")

    def __init__(self, process: Host, client_id: str, max_request: int = DEFAULT_MAX_REQUEST, *,
                 admin: bool = False):
        self._p = process
        self._client = client_id
        self._max = max_request
        self._is_admin = admin  # authenticated with the admin key (rpc.auth): administration allowed

    def _rpyc_getattr(self, name: str) -> Any:
        if name in self._EXPOSED:
            # one object per name: RPyC holds what it hands out until the client releases
            # it, so a new bound method per lookup would let a client grow our memory
            bound = self.__dict__.setdefault("_bound", {})
            if name not in bound:
                method = getattr(self, "exposed_" + name)
                bound[name] = self._epoch_bound(method) if name in _EPOCH_BOUND else method
            return bound[name]
        raise AttributeError(f"{name!r:.60} is not exposed to clients")

    def _epoch_bound(self, method: Callable[..., bytes]) -> Callable[..., bytes]:
        """``method``, refused once this node knows it was left out of a `cluster recover`
        (rpc.epochs); status and the agent's app_call are not epoch-bound."""
        superseded = getattr(self._p, "superseded", None)  # a host of tests may have none
        return method if superseded is None else refused_when_superseded(method, superseded,
                                                                         lambda why: reply("error", why))

    def _check(self, data: Any) -> bytes:
        if type(data) is not bytes:
            raise PrevalenceError(f"expected the request as bytes, got {show(data)}")
        if len(data) > self._max:
            raise PrevalenceError(f"request of {len(data)} bytes is over the limit of {self._max} bytes")
        return data

    def exposed_status(self) -> bytes:
        """This node's own status, from its live Raft loop: an error if it has failed."""
        try:
            return reply("ok", self._p.status())
        except Exception as exc:  # noqa: BLE001 - a failed or hung node never reports itself healthy
            return reply("error", f"node status unavailable: {error_text(exc, 1000)}")

    def exposed_register_session(self) -> bytes:
        from prevalence.sessions import RegisterSession, mint_session_id

        # a random id: the id alone admits a command to a session (prevalence.sessions)
        return self._admin(lambda: self._p.node.execute(RegisterSession(mint_session_id())))

    def exposed_execute(self, data: bytes, session_id: int | None = None, seq: int | None = None) -> bytes:
        """Without a session: at most once per call. With one: exactly once across retries."""
        if session_id is None:
            return self._run(data, lambda tx: self._p.node.submit(tx), self._outcome_once)
        if not valid_session(session_id, seq):
            return reply("error", "session id and sequence number must be positive 63-bit integers")
        old = guessable(session_id, seq)
        if old is not None:
            return reply(*old)
        # the node returns the session's reply: the transaction's errors are inside it;
        # submitted, then waited for: the decoded command is not kept while it waits
        return self._guard(lambda: self._submit(data, lambda tx: self._p.node.submit(tx, session=(session_id, seq)))
                           .result(BATCH_TIMEOUT))

    @staticmethod
    def _outcome_once(pending: Any) -> Any:
        try:
            return pending.result(BATCH_TIMEOUT)
        except (NodeHalted, CommittedUnapplied) as exc:  # it may commit, or did, elsewhere: a retry could apply it twice
            raise OutcomeUnknown(f"{exc}; sent without a session, its outcome is unknown") from None
        except TimeoutError:  # proposed, not yet committed: "unavailable" would invite that retry
            raise OutcomeUnknown(f"no commit within {BATCH_TIMEOUT:g} s; sent without a session, its outcome "
                                 "is unknown") from None

    def exposed_execute_batch(self, items: Any) -> bytes:
        """Several session commands at once: ``((data, session_id, seq), ...)``, or those
        tuples msgpack-encoded in one bytes value (what rpc.client sends: RPyC's own
        encoding of a tuple costs about 10 µs per command to read back, msgpack's 0.6).

        They are proposed together and answered ``["ok", [reply, ...]]`` in order, each
        reply what ``execute`` with a session would have answered for that command (a
        malformed or oversized command gets its own ``["error", ...]``). A refusal of
        the cluster's (not the leader, timed out) answers the whole batch, which the
        client retries under the same session numbers, so each command applies once.
        """
        if type(items) is bytes:
            try:
                items = unpack_batch(items, self._max)
            except Exception as exc:  # noqa: BLE001 - any decoding failure refuses the batch
                return reply("error", f"malformed batch: {error_text(exc, 200)}")
        if type(items) is not tuple or not items or len(items) > MAX_BATCH_ITEMS:
            return reply("error", f"a batch is a tuple of 1 to {MAX_BATCH_ITEMS} (data, session, seq) tuples")
        ok = all(type(it) is tuple and len(it) == 3 for it in items)
        size = sum(len(it[0]) for it in items if type(it[0]) is bytes) if ok else 0
        if not ok:
            return reply("error", "a batch is a tuple of (data, session, seq) tuples")
        if size > self._max:
            return reply("error", f"request of {size} bytes is over the limit of {self._max} bytes")
        replies: list = [None] * len(items)
        keys: list[int] = []  # where each loaded command's reply goes
        loaded: list[tuple[Any, tuple[int, int]]] = []
        # held until the commands are proposed: the node decodes a copy of each (its read-back check)
        held = [BUDGET.take(size)]
        try:
            for k, (data, sid, seq) in enumerate(items):
                if not valid_session(sid, seq):
                    replies[k] = ("error", "session id and sequence number must be positive 63-bit integers")
                    continue
                if (old := guessable(sid, seq)) is not None:
                    replies[k] = old
                    continue
                try:
                    loaded.append((self._load(data), (sid, seq)))
                except Exception as exc:  # noqa: BLE001 - any decoding failure is this command's error
                    replies[k] = ("error", error_text(exc, 1000))
                else:
                    keys.append(k)
        except BaseException:
            BUDGET.give(held.pop())
            raise

        def outcome() -> tuple:
            # a refusal answers the whole batch as soon as all before it are settled
            try:
                proposals = self._p.node.propose_many(loaded, ProposalRefused)
            finally:
                loaded.clear()  # journal bytes now: the decoded objects are not kept while waiting
                BUDGET.give(held.pop())
            proposals.wait(BATCH_TIMEOUT)  # then the first unsettled one raises TimeoutError
            for j, k in enumerate(keys):
                try:
                    replies[k] = proposals.outcome(j)
                except ProposalRefused:
                    raise  # not the leader (any more): the whole batch goes elsewhere
                except PrevalenceError as exc:
                    replies[k] = ("error", error_text(exc, 1000))
            return ("ok", replies)

        return self._guard(outcome)

    def exposed_query(self, data: bytes, consistency: Any = "linearizable") -> bytes:
        """``linearizable`` (ReadIndex through the leader), ``leader`` (the leader's own
        state, no confirmation round) or ``local`` (this node's state, possibly behind)."""
        if type(consistency) is bool:  # older clients: True / False
            consistency = "linearizable" if consistency else "local"
        if type(consistency) is not str or consistency not in ("linearizable", "leader", "local"):
            return reply("error", f"unknown consistency {show(consistency)} (one of linearizable, leader, local)")
        node = self._p.node
        if consistency == "leader" and not node.is_leader:
            def redirect() -> tuple:
                leader = node.status()["leader"]
                return ("not_leader", leader, self._p.address_of(leader))

            return self._guard(redirect)
        if consistency == "local":  # any node's answer: a refusal names why, not a leader to go to
            return self._run(data, lambda obj: _local_read(node, obj))
        return self._run(data, lambda obj: node.query(obj, linearizable=consistency == "linearizable"))

    def exposed_read_log(self, start: int, limit: int = 256, wait: float = 1.0) -> bytes:
        """Applied transactions from index ``start``, waiting up to ``wait`` s for one
        (a long poll: subscribers need no callback objects across the wire). Entries that
        changed nothing are left out: commands refused by ``check()``, retries of a
        command already applied, commands on an expired session.

        ``["ok", next_index, [[index, timestamp µs, type, fields], ...]]``, or
        ``["compacted", first_index]`` when ``start`` is no longer in the log.
        """
        if not all(type(v) is int and 0 < v < U63 for v in (start, limit)):
            return reply("error", "start and limit must be positive 63-bit integers")
        # an int is checked by its range: one past a float's (brine carries any int)
        # makes math.isfinite raise OverflowError instead of answering
        if not ((type(wait) is int and -U63 < wait < U63) or (type(wait) is float and math.isfinite(wait))):
            return reply("error", "wait must be a number of seconds")
        return self._guard(lambda: self._read_log(start, limit, wait))

    def _read_log(self, start: int, limit: int, wait: float) -> tuple | bytes:
        from prevalence.entry import EntryKind
        from prevalence.state import describe_command

        node = self._p.node
        if (stuck := past_state(node, start)) is not None:
            raise stuck  # the subscriber goes where it points (rpc.subscription)
        node.wait_applied(start, max(0.0, min(float(wait), 5.0)))
        first, entries = node.committed_log(start, max(1, min(limit, 4096)))
        if start < first:
            return ("compacted", first)
        skipped = node.sm.skipped
        # each command is decoded whole, and a client's may be 1 MiB of small items (25-70 MB
        # of objects): described within the process's decode budget, as requests are, and
        # packed before its share is given back (the events are the decoded objects)
        held = BUDGET.take(sum(len(e.data) for e in entries))
        try:
            events = []
            for e in entries:
                if e.kind == EntryKind.COMMAND and e.index not in skipped:  # applied, and only once
                    d = describe_command(e.data)
                    if not d["type"].startswith("prevalence."):  # sessions are bookkeeping, not events
                        events.append([e.index, d["timestamp_us"], d["type"], d["fields"]])
            return reply("ok", entries[-1].index + 1 if entries else start, events)
        finally:
            BUDGET.give(held)

    def exposed_change_membership(self, op: str, node_id: str, address: str | None = None) -> bytes:
        """Maintenance: add_voter, add_learner, promote_learner or remove (leader only)."""
        from replication.membership import ChangeType, ConfigChange

        kinds = {"add_voter": ChangeType.ADD_VOTER, "add_learner": ChangeType.ADD_LEARNER,
                 "promote_learner": ChangeType.PROMOTE_LEARNER, "remove": ChangeType.REMOVE_VOTER}
        if not self._is_admin:
            return _not_admin("change_membership")
        if type(op) is not str or op not in kinds:
            return reply("error", f"unknown membership change {show(op)} (one of {', '.join(kinds)})")
        if not valid_id(node_id):
            return reply("error", f"node id must be 1-{MAX_ID} printable characters, got {show(node_id)}")
        if not (address is None or (type(address) is str and 0 < len(address) <= MAX_NAME)):
            return reply("error", f"address must be HOST:PORT (at most {MAX_NAME} characters), got {show(address)}")
        if address is not None and bad_address(address):
            # every node dials the address of a committed change: refused here, not in the log
            return reply("error", f"address must be HOST:PORT with a port from 1 to 65535, got {show(address)}")
        change = ConfigChange(kinds[op], node_id, address)
        identity = getattr(self._p, "cluster_identity", None)
        if identity is not None:  # a new cluster's first leader sets its id first (rpc.identity)
            identity.wait_proposal(5.0)
        def changed() -> tuple:
            try:
                return ("ok", self._p.node.change_membership(change))
            except (NodeHalted, CommittedUnapplied) as exc:  # proposed: "not_leader" would say nothing changed
                return ("unavailable", f"{error_text(exc, 300)}; the change may still take effect")

        return self._guard(changed)

    def exposed_transfer_leadership(self, to: str) -> bytes:
        if not self._is_admin:
            return _not_admin("transfer_leadership")
        if not valid_id(to):
            return reply("error", f"node id must be 1-{MAX_ID} printable characters, got {show(to)}")
        return self._admin(lambda: self._p.node.transfer_leadership(to))

    # -- backups (rpc/backup.py): the whole state, so the admin key's; streamed in chunks --
    def exposed_backup_begin(self) -> bytes:
        """Take a backup on the leader: ``["ok", [session, size, sha256 hex, chunk size]]``."""
        if not self._is_admin:
            return _not_admin("backup_begin")
        from rpc.backup import sessions_of

        return self._guard(lambda: ("ok", list(sessions_of(self._p).begin(self._p))))

    def exposed_backup_chunk(self, session: str, offset: int) -> bytes:
        """``["ok", bytes]``: at most one chunk of the backup from ``offset``."""
        if not self._is_admin:
            return _not_admin("backup_chunk")
        from rpc.backup import session_id_problem, sessions_of

        problem = session_id_problem(session)
        if problem:
            return reply("error", problem)
        if type(offset) is not int or not 0 <= offset < U63:
            return reply("error", f"offset must be a non-negative 63-bit integer, got {show(offset)}")
        return self._guard(lambda: ("ok", sessions_of(self._p).read(session, offset)))

    def exposed_backup_end(self, session: str) -> bytes:
        """Let the backup's snapshot go (it would expire anyway): ``["ok", ended?]``."""
        if not self._is_admin:
            return _not_admin("backup_end")
        from rpc.backup import session_id_problem, sessions_of

        problem = session_id_problem(session)
        if problem:
            return reply("error", problem)
        return self._guard(lambda: ("ok", sessions_of(self._p).end(session)))

    _EXPOSED = _EXPOSED + ("backup_begin", "backup_chunk", "backup_end")

    def exposed_app_call(self, name: str, data: bytes = b"") -> bytes:
        """A handler of the application hosted in this node (bytes in, bytes out)."""
        handler = self._p.handlers.get(name) if type(name) is str and len(name) <= MAX_NAME else None
        if handler is None:
            return reply("error", f"this node has no application call {show(name)}")
        def call() -> tuple:
            request = self._check(data)
            # the handler decodes the request as it likes (the grid's agent.apply: msgpack,
            # ~45 MB of objects from 1 MiB): within the process's budget, as execute's
            held = BUDGET.take(len(request))
            try:
                return ("ok", handler(request))
            except (PrevalenceError, TimeoutError):
                raise
            except Exception as exc:  # noqa: BLE001 - the caller gets the reason, the node serves on
                return ("error", f"{name}: {type(exc).__name__}: {error_text(exc, 1000)}")
            finally:
                BUDGET.give(held)

        return self._guard(call)

    def _admin(self, call) -> bytes:
        return self._guard(lambda: ("ok", call()))

    # -- the admin key's (issue 15) -------------------------------------------------------
    def _load(self, data: Any) -> Any:
        """The request decoded; an administrative transaction only from the admin key.
        The caller holds ``len(data)`` of the process's decode budget."""
        obj = CODEC.loads(self._check(data))
        if isinstance(obj, ADMIN_TRANSACTIONS) and not self._is_admin:
            raise PrevalenceError(_NEEDS_ADMIN.format(what=type(obj).__name__))
        if isinstance(obj, RegisterSession):  # as a command, 1,024 a call: 40,000 sessions a second
            raise PrevalenceError("a session is opened with register_session, one per call, not sent as a command")
        return obj

    def _decode(self, data: Any) -> Any:
        """``_load`` within the process's decode budget (rpc.decode_budget)."""
        held = BUDGET.take(len(data) if type(data) is bytes else 0)
        try:
            return self._load(data)
        finally:
            BUDGET.give(held)

    def _submit(self, data: Any, submit: Callable[[Any], Any]) -> Any:
        """``submit`` (a node's) of the command ``data`` decodes to, within the decode budget
        from the decoding to the proposal: the node decodes a copy (its read-back check)."""
        with BUDGET.holding(len(data) if type(data) is bytes else 0):
            return submit(self._load(data))

    def _run(self, data: Any, call, then: Callable[[Any], Any] | None = None) -> bytes:
        """A call whose own exceptions (the transaction's or query's) are its reply.
        With ``then``, ``call`` only submits, and ``then`` waits for what it returned:
        a command waits as journal bytes, without the objects it was decoded to."""
        def outcome() -> tuple:
            try:
                if then is None:
                    return ("ok", call(self._decode(data)))
                return ("ok", then(self._submit(data, call)))  # the decoded command is not kept
            except (PrevalenceError, TimeoutError):
                raise
            except Exception as exc:  # noqa: BLE001 - the transaction's or query's own error
                return ("failed", f"{type(exc).__module__}.{type(exc).__qualname__}", error_text(exc, 10_000))

        return self._guard(outcome)

    def _guard(self, answer) -> bytes:
        """The framework's refusals as replies: redirect, error, time-out. ``answer``
        returns the reply's items, or the reply already packed."""
        try:
            out = answer()
            return out if type(out) is bytes else reply(*out)
        except Exception as exc:  # noqa: BLE001 - RecursionError, OverflowError...: an answer, the node serves on
            refusal = refusal_reply(exc, self._p.address_of, lambda e: error_text(e, 1000))
            if refusal is not None:
                return reply(*refusal)
            log_unexpected(self._client, exc)
            return reply("error", f"{type(exc).__name__}: {error_text(exc, 300)}")


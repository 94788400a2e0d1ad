"""Everything the window needs from the cluster, done off the Tk thread.

The window never touches the network: it calls ``set_settings``/``apply_preset``
(queued, run one after the other on a worker thread through the client's exactly-once
path) and hands what the workers put in ``updates`` to its view model (app.ui.model):

- ``("link", Link)``   who is master, or that a failover runs, or that no node answers;
- ``("view", view)``   the grid (``GridView``), after any committed change;
- ``("event", rpc.Event)``  each committed transaction, for the event strip;
- ``("command", phase, text)``  busy | done | refused | failed, for the window's commands.

The grid is re-read when the subscription delivers a committed transaction (many events
in a burst cause one read), not on a timer. The subscription has a connection of its own
(rpc.client), so it never delays the commands. A status call every 0.3 s to the master
itself tells who is master; when that fails every node is asked at once, so a failover
shows at once, and a cluster where no node answers within about two seconds.
"""
from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from app.model import ApplyPreset, GridError, GridView, SetSettings
from app.settings import SettingsError
from app.ui.model import Link, describe
from replication.client_policy import shown
from rpc.subscription import Compacted
from rpc.config import parse_address
from rpc.epochs import epoch_refusal
from prevalence.errors import PrevalenceError
from prevalence.text import one_line
from rpc.transport import STATUS_MAX_FRAME, NodeLink

log = logging.getLogger("app.ui")
BACKFILL = 200  # log entries read back at start, so that the event strip shows recent history


class UiSession:
    def __init__(self, client: Any, secret: bytes, *, ssl_context: Any = None, status_every: float = 0.3):
        self.client = client
        self._secret, self._ssl = secret, ssl_context
        self.updates: queue.SimpleQueue = queue.SimpleQueue()
        self.status_every = status_every
        self.link = Link("connecting")
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._commands = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ui-command")
        self._subscription = None
        self._threads = [threading.Thread(target=self._refresher, name="ui-refresh", daemon=True),
                         threading.Thread(target=self._monitor, name="ui-status", daemon=True),
                         threading.Thread(target=self._subscribe, name="ui-subscribe", daemon=True)]

    def start(self) -> "UiSession":
        self._dirty.set()
        for t in self._threads:
            t.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._dirty.set()
        if self._subscription is not None:
            self._subscription.close()
        self._commands.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    # -- commands --------------------------------------------------------------------------
    def set_settings(self, targets: list[str], settings: dict[str, str]) -> None:
        what = f"set {' '.join(f'{k}={v}' for k, v in settings.items())} on {', '.join(targets)}"
        self._submit(what, SetSettings(tuple(targets), settings))

    def apply_preset(self, name: str, targets: list[str]) -> None:
        self._submit(f"apply preset {name} to {', '.join(targets)}", ApplyPreset(name, tuple(targets)))

    def _submit(self, what: str, tx: Any) -> None:
        def run() -> None:
            self.updates.put(("command", "busy", f"sending: {what}..."))
            try:
                changed = self.client.execute(tx, timeout=30.0)
            except (GridError, SettingsError) as exc:  # the grid's own refusal: nothing applied
                self.updates.put(("command", "refused", f"{what}: {describe(exc)}"))
            except Exception as exc:  # noqa: BLE001 - shown in the window, the session goes on
                self.updates.put(("command", "failed", f"{what}: {describe(exc)}"))
            else:
                count = f"{len(changed)} node{'s' if len(changed) != 1 else ''}"
                self.updates.put(("command", "done", f"done: {what} ({count})"))
                self._dirty.set()

        self._commands.submit(run)

    # -- workers ---------------------------------------------------------------------------
    def _subscribe(self) -> None:
        """Committed transactions to the event strip, and a re-read of the grid after each
        burst; it starts a little back in the log, so that the strip shows recent history."""
        def delivered(item: Any) -> None:
            if not isinstance(item, Compacted):
                self.updates.put(("event", item))
            self._dirty.set()

        while not self._stop.is_set():
            try:
                applied = self.client.status()["applied_index"]
                self._subscription = self.client.subscribe(delivered, from_index=max(1, applied - BACKFILL + 1))
                if self._stop.is_set():
                    self._subscription.close()
                return
            except Exception as exc:  # noqa: BLE001 - no cluster yet: the monitor says so
                log.info("subscription not started yet: %s", exc)
                self._stop.wait(1.0)

    def _refresher(self) -> None:
        read = False  # from a master once: a node's copy could only be older
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.is_set():
                return
            self._dirty.clear()
            try:
                self.updates.put(("view", self.client.query(GridView(), timeout=10.0)))
                read = True
            except Exception as exc:  # noqa: BLE001 - retried when the cluster is back
                log.info("grid not read: %s", exc)
                if not read:  # opened without a master: where the nodes are, from a node's copy
                    self._read_copy()
                self._stop.wait(0.5)
                self._dirty.set()

    def _read_copy(self) -> None:
        """The grid as a node that answers holds it: the header says there is no master,
        and the tiles of the nodes that do not answer are shown down (app.ui.model)."""
        try:
            self.updates.put(("view", self.client.query(GridView(), "local", timeout=3.0)))
        except Exception as exc:  # noqa: BLE001 - no node answers at all: the header says so
            log.info("no node's copy of the grid read: %s", exc)

    def _monitor(self) -> None:
        watch = MasterWatch(self.client.addresses, self._secret, self._ssl,
                            want=getattr(self.client, "wanted", None))
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                link = watch.check()
                if link != self.link:
                    if link.state == "connected" and (self.link.state != "connected" or self.link.master != link.master):
                        self._dirty.set()  # a new master: re-read the grid
                    self.link = link
                    self.updates.put(("link", link))
                wait = self.status_every if link.state == "connected" else 0.15
                self._stop.wait(max(0.0, wait - (time.monotonic() - began)))
        finally:
            watch.close()


class MasterWatch:
    """Which node is master, asked of the master itself over a connection kept open.

    The master has ``timeout`` to answer (a busy PC is not taken for a dead one). When it
    fails, every node is asked at once (in parallel, each bounded by ``sweep_timeout``: a
    live node answers in milliseconds), so "no node answers" is known within about
    ``timeout + sweep_timeout`` seconds even when the nodes hang rather than refuse. A master
    that stopped answering is asked again at each check until it does: until then it is
    reported ``silent``, and the window shows it down."""

    def __init__(self, addresses: list[str], secret: bytes, ssl_context: Any = None, timeout: float = 1.0,
                 sweep_timeout: float = 0.5, want: tuple[str, int] | None = None):
        # ``want``: the cluster and epoch of the window's directory (rpc.epochs): a node of
        # an older epoch refuses the status call, and says why
        def link(address: str, wait: float) -> NodeLink:
            return NodeLink(parse_address(address, "address"), secret, ident="ui", timeout=wait,
                            connect_timeout=min(0.3, wait), ssl_context=ssl_context, max_frame=STATUS_MAX_FRAME,
                            frame_timeout=wait, want=want)

        self._link_to = lambda address: link(address, timeout)
        self._links = {a: link(a, sweep_timeout) for a in addresses}
        self._pool = ThreadPoolExecutor(max_workers=len(self._links) + 2, thread_name_prefix="ui-watch")
        self._master: tuple[str, str, NodeLink] | None = None  # address, id, link of the node that leads
        self._ids: dict[str, str] = {}  # address -> the id its node last answered with
        self._unanswered: dict[str, str] = {}  # address -> why it gave no status at the last sweep
        self._silent: dict[str, str] = {}  # id -> address of former masters that do not answer us
        self._probes: dict[str, Future] = {}  # id -> a status call to a silent former master

    def check(self) -> Link:
        self._probe_silent()
        if self._master is not None:
            address, node, master = self._master
            try:
                st = _status(master)
            except Exception as exc:  # noqa: BLE001 - a dead or hung master: look for the next
                master.close()
                self._master = None
                self._silent[node] = address
                return Link("lost", node=node, reason=describe(exc), silent=self._silent_ids())
            if st["role"] == "leader":
                return _connected(st, self._silent_ids())
            master.close()
            self._master = None
            return Link("lost", node=node, reason="it is no longer the leader", silent=self._silent_ids())
        answers = self._sweep()
        leaders = [st for st in answers.values() if st["role"] == "leader"]
        if leaders:
            st = max(leaders, key=lambda s: s["term"])
            address = next(a for a, s in answers.items() if s is st)
            self._master = (address, st["id"], self._link_to(address))
            self._silent.pop(st["id"], None)
            return _connected(st, self._silent_ids())
        unanswered = tuple((self._ids.get(a), a, cause) for a, cause in self._unanswered.items())
        if not answers:
            return Link("unreachable", of=len(self._links), silent=self._silent_ids(), unanswered=unanswered)
        # a majority of the voters elects, not of the addresses this window was given; the
        # newest configuration is the longest log's (a removed node that still runs names an old one)
        newest = max(answers.values(), key=lambda s: (s["term"], s["commit_index"]))
        voters = set(newest["voters"])
        answered = {s["id"] for s in answers.values()}
        # nodes of the newest term that follow a leader which does not answer here: it may
        # lead them still (only this window's link to it fails), or be just lost
        followed = Counter(s["leader"] for s in answers.values() if s["term"] == newest["term"] and s["leader"])
        leader = next((m for m, _ in followed.most_common(1) if m not in answered), None)
        return Link("searching", answering=len(answers), of=len(self._links), silent=self._silent_ids(),
                    voters=len(voters), voting=len(voters & answered), unanswered=unanswered,
                    answered=tuple(sorted(answered)), followed=leader,
                    term=newest["term"] if leader else None, following=followed[leader] if leader else 0)

    def _sweep(self) -> dict[str, dict]:
        """Every node's status at once; the ones that answered, by address."""
        busy = {self._silent[n] for n, f in self._probes.items() if not f.done() and n in self._silent}
        futures = {a: self._pool.submit(_status, link) for a, link in self._links.items() if a not in busy}
        # a silent former master still being asked keeps the reason its last probe gave
        answers, self._unanswered = {}, {a: why for a, why in self._unanswered.items() if a in busy}
        for address, future in futures.items():
            try:
                answers[address] = future.result()
                self._ids[address] = answers[address]["id"]
            except Exception as exc:  # noqa: BLE001 - that node does not answer: not counted, and why is shown
                self._links[address].close()
                self._unanswered[address] = _why(exc)
        for node, address in list(self._silent.items()):
            if address in answers:
                del self._silent[node]
        # a node of an older epoch of the cluster than another that answers was left out of
        # a recover: whatever it leads is no master of this grid (rpc.epochs)
        newest: dict[str, int] = {}
        for st in answers.values():
            if st["cluster"]:
                newest[st["cluster"]] = max(newest.get(st["cluster"], 0), st["epoch"])
        for address, st in list(answers.items()):
            if st["cluster"] and st["epoch"] < newest[st["cluster"]]:
                del answers[address]
                self._unanswered[address] = epoch_refusal("", st["epoch"], newest[st["cluster"]])
        return answers

    def _probe_silent(self) -> None:
        """Ask each silent former master again, without waiting: a hung one would stall the
        watch for the whole handshake timeout. The answer is used at the next check."""
        for node, address in list(self._silent.items()):
            probe = self._probes.get(node)
            if probe is not None and probe.done():
                del self._probes[node]
                if probe.exception() is None:
                    del self._silent[node]
                    continue
                self._links[address].close()
                self._unanswered[address] = _why(probe.exception())
            if node not in self._probes:
                self._probes[node] = self._pool.submit(_status, self._links[address])

    def _silent_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._silent))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for link in self._links.values():
            link.close()
        if self._master is not None:
            self._master[2].close()
        self._master = None


class NoStatus(PrevalenceError):
    """A node answered, but not with its status (a refusal, its Raft loop hung, garbage)."""


def _why(exc: BaseException) -> str:
    """Why a node gave no status, in words, without its address (the tile or the list of
    nodes names it): refused, no answer in time, the key refused, its own refusal."""
    return _ADDRESS_PREFIX.sub("", describe(exc), count=1)


_ADDRESS_PREFIX = re.compile(r"^(?:\[[^\]]+\]|[A-Za-z0-9_.-]+):\d+:?\s+")


def _connected(st: dict, silent: tuple[str, ...]) -> Link:
    return Link("connected", master=st["id"], address=st["address"], term=st["term"], silent=silent)


def _status(link: NodeLink) -> dict:
    """The node's status, with the fields the watch reads checked: a reply that is not a
    node's status counts as no answer (the watch thread must not die of one)."""
    reply = link.call("status")
    if type(reply) is not list or len(reply) != 2 or type(reply[0]) is not str:
        raise NoStatus(f"malformed status reply: {shown(reply)}")
    if reply[0] != "ok":
        raise NoStatus(one_line(str(reply[-1])))
    st = reply[1]
    if type(st) is not dict or not all(type(st.get(k)) is t for k, t in _STATUS_FIELDS):
        raise NoStatus(f"malformed status reply: {shown(st)}")
    voters, leader = st.get("voters"), st.get("leader")
    st["voters"] = voters if type(voters) is list and all(type(v) is str for v in voters) else []
    st["leader"] = one_line(leader, 130) if type(leader) is str and leader else None
    newer = st.get("superseded_by")
    if type(newer) is int and type(st.get("epoch")) is int:  # it knows it was left out of a recover
        raise NoStatus(epoch_refusal("", st["epoch"], newer))
    cluster, epoch = st.get("cluster"), st.get("epoch")  # a node of a release before cluster ids has none
    st["cluster"], st["epoch"] = (cluster, epoch) if type(cluster) is str and type(epoch) is int else ("", 0)
    if type(st.get("commit_index")) is not int:
        st["commit_index"] = -1  # only compared: which of the answers is the newest
    st["id"], st["address"] = one_line(st["id"], 130), one_line(st["address"], 300)  # shown in the header
    return st


_STATUS_FIELDS = (("id", str), ("role", str), ("term", int), ("address", str))

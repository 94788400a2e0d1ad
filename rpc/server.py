"""One cluster node as an OS process: config -> keys, transport, Raft node, RPyC server."""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any, Callable

from prevalence._platform import DirectoryLock
from prevalence.factory import load_object
from prevalence.text import one_line
from replication.config import RaftConfig
from replication.journal_storage import DataIdentity, NoDataError, node_data_identity
from replication.membership import Membership
from replication.node import Node, NodeOptions
from rpc.config import (
    ConfigError, NodeConfig, check_data_path, check_own_certificate, format_address, load_config, parse_address,
    tls_contexts,
)
from rpc.auth import ClusterKey, check_role_keys
from rpc.epochs import REBUILD, read_superseded, superseded_refusal, write_superseded
from rpc.identity import ClusterIdentity
from rpc.secret import KEY_FILES, load_secret
from rpc.wire import PEER_PROTOCOL_VERSION
from rpc.service import ClientService
from rpc.peer_sender import PeerTransport
from rpc.peer_server import PeerServer

log = logging.getLogger("rpc.server")
EXIT_FATAL = 3  # a disk failure or a dead internal thread: restart the node from its disk


class NodeProcess:
    """Everything one node runs; ``start`` then ``stop`` (a leader hands over first).

    An application hosted in the node (``[app] plugin = MODULE:FUNCTION``) is called
    with ``(process, settings)`` before the node starts; it may add ``leader_hooks``
    (start, stop pairs run on the leader only) and ``handlers`` (name -> function of
    bytes returning bytes, callable by authenticated clients through ``app_call``), and
    return an object whose ``close()`` runs when the node stops.

    It starts only on data created for this node (a node never creates its data as it
    starts: see ``replication.journal_storage.node_data_identity``), and holds the data
    directory's lock while it runs.
    """

    def __init__(self, cfg: NodeConfig):
        self.cfg = cfg
        self.leader_hooks: list[tuple[Callable[[], None], Callable[[], None]]] = []
        self.handlers: dict[str, Callable[[bytes], bytes]] = {}
        self._app: Any = None
        # a key per role, all distinct, and a second one accepted while a key is being
        # replaced ([rotation]); the node uses the first: to dial its peers (peer key), and
        # for its own client calls, an application's controller or layout watcher (client key)
        self.keys = check_role_keys({role: (load_secret(getattr(cfg, f"{role}_secret")),
                                            *([load_secret(cfg.rotation[role])] if role in cfg.rotation else []))
                                     for role in KEY_FILES}, cfg.path)
        self.client_key = self.keys["client"][0]
        self.server_tls, self.client_tls = tls_contexts(cfg)
        if self.server_tls is not None:
            check_own_certificate(cfg, self.server_tls, self.client_tls)
        for module in cfg.imports:
            load_object(module + ":__name__")
        self.factory = _root_factory(cfg)
        check_data_path(cfg)
        if not os.path.isdir(cfg.data):
            raise NoDataError(no_data_message(cfg))
        # before anything opens the journal: a second process on the same data (the same
        # config started twice) is refused here, naming the pid that holds it
        self._data_lock = DirectoryLock(cfg.data)
        self._data_lock.acquire()
        try:
            try:
                identity = node_data_identity(cfg.data, cfg.id)
            except NoDataError:
                raise NoDataError(no_data_message(cfg)) from None
            if identity.origin == "adopted":
                log.info("%s: data in %s adopted (written before identity files)", cfg.id, cfg.data)
            # peers of another cluster or epoch are refused (rpc.auth), once the data has an
            # id: from its creation, or from the log (rpc.identity)
            self.keys["peer"] = tuple(ClusterKey(k) for k in self.keys["peer"])
            self.cluster_identity = ClusterIdentity(cfg.data, identity, self.keys["peer"])
            self._remember_superseded(cfg)
            peers = {p: a for p, a in cfg.peers.items() if p != cfg.id}
            # answers slower than the shortest election timeout: elections over them cannot complete
            self.transport = PeerTransport(cfg.id, self.keys["peer"][0], peers, ssl_context=self.client_tls,
                                           slow_round_trip=cfg.tick * cfg.election_ticks)
            self.node = self._open_node(cfg)
            self.cluster_identity.attach(self.node)
            self.leader_hooks.append((lambda: self.cluster_identity.on_leader_start(self.node), lambda: None))
        except BaseException:
            self._abandon()
            raise
        self._members: tuple | None = None  # (voters, learners) the transport was last pointed at
        self._membership_changed(self.node.membership)  # members added before a restart
        self.server: PeerServer | None = None

    def _remember_superseded(self, cfg: NodeConfig) -> None:
        """A later epoch a peer proved before a restart holds after it (rpc.epochs): the PC
        may reboot while the new epoch's nodes are down, and must not serve the old one."""
        try:
            known = read_superseded(cfg.data)
        except ConfigError as exc:
            known = self._damaged_superseded(exc)
        for key in self.keys["peer"]:
            if known is not None and key.heard_newer(*known) and key is self.keys["peer"][0] and key.superseded():
                log.error("%s: a peer proved before this start that cluster %s was recovered into epoch %d; this "
                          "node's data is of epoch %d: it takes no command, query or subscription: %s", cfg.id,
                          known[0], known[1], key.epoch, REBUILD)
            key.on_newer = lambda cluster, epoch: write_superseded(cfg.data, cluster, epoch)

    def _damaged_superseded(self, exc: ConfigError) -> tuple[str, int] | None:
        """A superseded file that is there but does not read: only a peer's proof writes
        it (atomically), so a proof came: the node stays out of its old epoch, as of a
        later one whose number the disk lost (fail-closed, as for a damaged journal)."""
        key = self.keys["peer"][0]
        cluster, epoch = key.cluster, key.epoch
        if not cluster:
            log.warning("%s (ignored: this node's data names no cluster yet)", exc)
            return None
        log.error("%s: %s; it is written only once a peer proved a later epoch of cluster %s, so this node takes "
                  "no command, query or subscription: %s (or, if this data was never left out of a recover, "
                  "remove the file)", self.cfg.id, exc, cluster, REBUILD)
        return cluster, epoch + 1

    @property
    def identity(self) -> DataIdentity:
        """The identity of this node's data as it is now (the cluster id may come from the log)."""
        return self.cluster_identity.current

    def _open_node(self, cfg: NodeConfig) -> Node:
        options = NodeOptions(
            tick_interval=cfg.tick,
            raft=RaftConfig(election_tick=cfg.election_ticks, heartbeat_tick=cfg.heartbeat_ticks),
            fsync=cfg.fsync,
            snapshot_every=cfg.snapshot_every,
            keep_snapshots=cfg.keep_snapshots,
        )
        if cfg.join:  # added at run time: the leader's log says who the members are
            membership = Membership()
        else:
            membership = Membership(tuple(cfg.peers), (),
                                    tuple((p, format_address(a)) for p, a in cfg.peers.items()))
        return Node(cfg.id, cfg.data, self.factory, self.transport, membership=membership,
                    options=options, on_membership=self._membership_changed, on_fatal=self._fatal,
                    on_leader_start=lambda: self._run_hooks(0), on_leader_stop=lambda: self._run_hooks(1))

    def _abandon(self) -> None:
        """Undo a start that failed: the transport's sender threads, started before the
        refusal, would go on dialling and logging while the interpreter shuts down, and
        CPython aborts on a daemon thread holding stderr's lock (SIGABRT, a crash dump as
        the log's last words instead of the one line that says why)."""
        transport = getattr(self, "transport", None)
        if transport is not None:
            transport.close()
        self._data_lock.release()

    def start(self) -> "NodeProcess":
        try:
            return self._start()
        except BaseException:
            if self.server is not None:
                self.server.close()
            if self._app is not None and hasattr(self._app, "close"):
                self._app.close()
            self._abandon()
            raise

    def _start(self) -> "NodeProcess":
        if self.cfg.app:
            settings = {k: v for k, v in self.cfg.app.items() if k != "plugin"}
            self._app = load_object(self.cfg.app["plugin"])(self, settings)
        host, port = self.cfg.listen
        # a peer's answer to what we delivered may come back as the reply (an ack after
        # an fsync done on the receiving thread): no message of its own either way
        self.transport.on_reply = lambda src, frames: self.node.receive_batch(frames, sender=src)
        self.server = PeerServer(host, port, self.keys, None,
                                 on_batch=lambda src, frames: self.node.receive_batch(frames, reply_to=src),
                                 service_extra=lambda ident: ClientService(self, ident.id,
                                                                           admin=ident.role == "admin"),
                                 ssl_context=self.server_tls, node_id=self.cfg.id)
        self.node.start()
        log.info("node %s up on %s (pid %d, config %s)", self.cfg.id, format_address(self.cfg.listen),
                 os.getpid(), self.cfg.path)
        return self

    def stop(self) -> None:
        self.node.stop(transfer=True)
        if self._app is not None and hasattr(self._app, "close"):
            self._app.close()
        if self.server is not None:
            self.server.close()
        self.transport.close()
        self._data_lock.release()
        log.info("node %s stopped", self.cfg.id)

    def _fatal(self, reason: str) -> None:
        """Fail-stop: exit now, non-zero, writing nothing more; the service manager
        restarts the node, which recovers from its disk."""
        log.critical("node %s stopping: %s (exit code %d)", self.cfg.id, reason, EXIT_FATAL)
        for handler in logging.getLogger().handlers:
            try:
                handler.flush()
            except Exception:  # noqa: BLE001 - exiting anyway
                pass
        os._exit(EXIT_FATAL)

    def _run_hooks(self, which: int) -> None:
        """On the node's apply thread: hooks must hand long work to threads of their own."""
        for hook in self.leader_hooks:
            try:
                hook[which]()
            except Exception:  # noqa: BLE001 - one application's bug must not stop the node
                log.exception("leader %s hook failed", "start" if which == 0 else "stop")

    def _membership_changed(self, membership: Membership) -> None:
        """Point the transport at the members the log names (added nodes included).

        Only when the members change: a change that sets the cluster id carries the
        addresses as the proposing leader's configuration had them, and must not move
        this node's links to another node's view of where its peers are."""
        members = (membership.voters, membership.learners)
        if members == self._members:
            return
        self._members = members
        peers = {p: a for p, a in self.cfg.peers.items() if p != self.cfg.id}
        for node_id, address in membership.addresses:
            if node_id != self.cfg.id:
                try:
                    peers[node_id] = parse_address(address, f"membership address of {node_id}")
                except ConfigError as exc:
                    # in the log for good (journaled before leaders checked it): raised here, it
                    # stopped every node that applied it, again at each start; the node it
                    # names cannot be dialled at it anyway
                    log.error("%s: node %s is not dialled", one_line(str(exc)), one_line(str(node_id), 64))
        self.transport.set_peers(peers)

    def address_of(self, node_id: str | None) -> str | None:
        if not node_id:
            return None
        known = self.node.membership.address_of(node_id)
        addr = self.cfg.peers.get(node_id)
        return known or (format_address(addr) if addr else None)

    def superseded_by(self) -> int | None:
        """The later epoch of this node's cluster that a peer proved (this node was left out
        of a `cluster recover`, rpc.epochs); None otherwise."""
        newer = max((k.superseded() or -1 for k in self.keys["peer"] if isinstance(k, ClusterKey)), default=-1)
        return newer if newer >= 0 else None

    def superseded(self) -> str | None:
        """Why this node takes no command (``superseded_by``), None when it takes them."""
        newer = self.superseded_by()
        return None if newer is None else superseded_refusal(self.cfg.id, self.identity.epoch, newer)

    def status(self) -> dict:
        st = self.node.status()
        ident = self.identity  # read once: the apply thread may replace it between two reads
        st.update(address=format_address(self.cfg.listen), pid=os.getpid(), config=self.cfg.path,
                  cluster=ident.cluster, epoch=ident.epoch,
                  session_expiry_s=self.node.sm.sessions.idle_expiry_us // 1_000_000,
                  peer_protocol=PEER_PROTOCOL_VERSION,  # status names a node of another release
                  peers={p: {k: v for k, v in s.items() if k in ("connected", "queued", "dropped")}
                         for p, s in self.transport.peer_status().items()})
        newer = self.superseded_by()
        if newer is not None:  # a node of an older epoch: `status` names it so (rpc.epochs)
            st["superseded_by"] = newer
        return st


def _root_factory(cfg: NodeConfig) -> Callable[[], Any]:
    """The configured root factory, called so that a failure names the field, not a
    frame of the engine's recovery (a node on new data calls it as it starts)."""
    factory = load_object(cfg.root)
    if not callable(factory):
        raise ConfigError(f"{cfg.path}: field 'root': {cfg.root} is not callable (a {type(factory).__name__}): "
                          "MODULE:FACTORY names a function or class that makes the empty root")

    def make_root() -> Any:
        try:
            return factory()
        except Exception as exc:  # noqa: BLE001 - re-raised, naming the configuration's field
            raise ConfigError(f"{cfg.path}: field 'root': {cfg.root}() failed: {type(exc).__name__}: "
                              f"{one_line(str(exc), 300)}") from exc
    return make_root


def no_data_message(cfg: NodeConfig) -> str:
    """Why a node with no data does not start, and the two ways on (one line)."""
    return (f"{cfg.path}: node {cfg.id!r} has no data in {cfg.data}, and a node never creates its data as it "
            "starts: a voter that lost its data would vote with no memory of what it acknowledged. If it lost its "
            "data, rebuild it: cluster remove, move the directory aside, cluster add (a learner), cluster promote "
            f"(docs/operations.md, \"Rebuilding a node\"); if it has never run: prevalence node --config "
            f"{cfg.path} --init")


def run(config_path: str) -> int:
    """``prevalence node --config FILE``: run until SIGINT/SIGTERM, then stop cleanly."""
    cfg = load_config(config_path)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {cfg.id} %(levelname)s %(name)s: %(message)s")
    logging.getLogger("rpc.rpyc").setLevel(logging.WARNING)  # one line per accept is noise
    process = NodeProcess(cfg).start()
    done = threading.Event()

    def on_signal(signum, frame):  # noqa: ARG001
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not done.wait(0.5):
        pass
    process.stop()
    return 0

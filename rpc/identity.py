"""A node's cluster identity at run time: set once in the log, learnt from it by every node.

Founders initialised one by one (``prevalence node --init`` on each PC) have no cluster
id in their data. So that the handshake check (``rpc.auth``) still holds on such a
cluster, the id lives in the replicated membership (``Membership.cluster``/``epoch``):

- the first leader of a cluster whose log names no id proposes one CONFIG entry that
  sets it (:meth:`ConfigChange.set_identity`): its own data's id if it has one (a
  cluster made by ``cluster up``, ``restore`` or ``recover``), else a fresh random one.
  The core refuses the change once the latest configuration in the leader's log has an
  id, and Raft commits at most one such entry: a leader whose log lacks it knows it was
  never committed, and the log matching property keeps two of them out of one log. Two
  founders elected in turn can thus never leave the cluster split between two ids;
- every node takes the id when that entry is applied (committed for good), or when it
  installs a snapshot, whose membership carries it: it writes it to its
  ``identity.toml`` (fsynced) before anything else happens, and rebinds its peer key
  (:class:`rpc.auth.ClusterKey`), so every later handshake in both directions checks
  it. A founder offline at the time and a learner added with no id learn it the same
  way when they catch up;
- a node's id, once set, changes only by a higher epoch of the same cluster (the entry
  ``cluster recover`` writes). A node never takes an epoch older than one a peer of the
  same cluster proved in a handshake (:meth:`ClusterKey.newest_seen`): after a recover, a
  node added back with no id catches up through the old epoch's entries or snapshot
  before recover's entry reaches it, and taking the old epoch there would refuse the
  leader at its next connection. A different id in the log is never taken: it is logged
  as an error, and the peers of that id refuse this node, naming both ids.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import TYPE_CHECKING, Sequence

from replication.errors import ConfigChangeRefused, ProposalRefused, RaftError
from replication.journal_storage import DataIdentity, new_cluster_id, write_identity
from replication.membership import ConfigChange, Membership
from rpc.auth import ClusterKey

if TYPE_CHECKING:
    from replication.node import Node

log = logging.getLogger("rpc.identity")

#: Seconds a new leader keeps trying to set the id (its term's first commit, a pending change).
PROPOSE_FOR = 60.0


class ClusterIdentity:
    """The identity of one node's data, kept in step with the log (see the module)."""

    def __init__(self, data_dir: str, identity: DataIdentity, keys: Sequence[ClusterKey]):
        self.data_dir = data_dir
        self.current = identity
        self._keys = tuple(keys)
        self._lock = threading.Lock()
        self._conflict: str | None = None  # the foreign id last reported
        self._node: "Node | None" = None
        self._idle = threading.Event()  # no proposal of the id under way
        self._idle.set()
        for key in self._keys:
            key.rebind(identity.cluster, identity.epoch)

    def attach(self, node: "Node") -> None:
        """Before the node starts: take the identity of the committed configuration (the
        start-up replay applies entries without the hook), then follow what is applied."""
        self._node = node  # first: the log's latest configuration is checked at start too
        configs = getattr(node.core, "configs", None)
        if configs is not None:
            self.adopt(configs.at(node.sm.applied_index))
        node.on_config_applied = self.adopt

    def adopt(self, membership: Membership) -> None:
        """The apply thread's hook: a committed configuration's identity, taken if this
        node has none yet or it is a later epoch of the same cluster."""
        cluster, epoch = membership.cluster, membership.epoch
        if not cluster:
            return
        with self._lock:
            cur = self.current
            if (cur.cluster, cur.epoch) == (cluster, epoch):
                return
            if cur.cluster and cur.cluster != cluster:
                if self._conflict != cluster:
                    self._conflict = cluster
                    log.error("%s: the log names cluster %s epoch %d, this node's data cluster %s epoch %d: the data's "
                              "id is kept, and that cluster's nodes refuse this one (docs/operations.md, \"Cluster "
                              "identity\")", cur.node, cluster, epoch, cur.cluster, cur.epoch)
                return
            if cur.cluster and epoch < cur.epoch:
                return  # an entry from before a `cluster recover`, replayed
            latest = self._node.membership if self._node is not None else None
            if latest is not None and latest.cluster == cluster and latest.epoch > epoch:
                return  # a later epoch is in the log already: taking this one would only refuse its leader
            if epoch < max((key.newest_seen(cluster) for key in self._keys), default=-1):
                # a peer of a later epoch (the leader after a `cluster recover`) already
                # connected: this is an entry or snapshot from before the recover, met while
                # catching up; taking it would refuse that leader at the next handshake
                return
            new = dataclasses.replace(cur, cluster=cluster, epoch=epoch)
            write_identity(self.data_dir, new)  # durable before any handshake relies on it
            self.current = new
            for key in self._keys:
                key.rebind(cluster, epoch)
        log.info("%s: cluster id %s epoch %d (from the log), written to identity.toml", cur.node, cluster, epoch)

    def on_leader_start(self, node: "Node") -> None:
        """A leader hook (on the apply thread): set the id if the log has none, on a thread
        of its own (the change waits for its commit)."""
        if not node.membership.cluster:
            self._idle.clear()
            threading.Thread(target=self._propose, args=(node,), name="cluster-id", daemon=True).start()

    def wait_proposal(self, timeout: float) -> None:
        """Until the id this leader proposes is committed (or given up): an operator's
        membership change right after the first election is not refused as "pending"."""
        self._idle.wait(timeout)

    def _propose(self, node: "Node") -> None:
        try:
            self._propose_until_set(node)
        finally:
            self._idle.set()

    def _propose_until_set(self, node: "Node") -> None:
        deadline = time.monotonic() + PROPOSE_FOR
        while time.monotonic() < deadline and node.is_leader and not node.membership.cluster:
            cur = self.current
            change = ConfigChange.set_identity(cur.cluster or new_cluster_id(), cur.epoch if cur.cluster else 0)
            try:
                node.change_membership(change, timeout=10.0)
                return
            except ConfigChangeRefused:
                time.sleep(0.1)  # no entry of this term committed yet, another change pending, or set meanwhile
            except ProposalRefused:
                return  # not the leader any more: the next one sets it
            except (TimeoutError, RaftError) as exc:
                log.warning("%s: setting the cluster id: %s; trying again", cur.node, exc)
                time.sleep(1.0)

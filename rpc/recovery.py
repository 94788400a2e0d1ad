"""``prevalence cluster recover``: a cluster that lost a majority for good, restarted
from one survivor's data as a one-voter cluster of a new epoch.

Raft cannot elect without a majority, and nothing short of editing files brought such
a cluster back. Recovery works on the stopped survivor's data only:

- it keeps everything in that node's log, committed or not, and ends it with a CONFIG
  entry naming the survivor as the only voter, in a term above any it has seen: on its
  next start the node elects itself and commits the whole log. An entry that the old
  majority acknowledged but that never reached the survivor is lost; an entry the
  survivor held but that was never acknowledged is kept (its client saw no answer);
- it raises the epoch in the survivor's ``identity.toml`` and in that CONFIG entry's
  membership (a node added later learns it from the log, ``rpc.identity``): every node
  still holding data of the old epoch is refused by the handshake (``rpc.auth``) until it
  is wiped and added back as a learner (``cluster add``), so the old members cannot
  elect among themselves and rejoin with a conflicting log;
- it names the new epoch in the cluster directory (``rpc.epochs.EPOCH_FILE``): the
  programs that open the directory refuse a node of the old epoch (which may still elect
  a master among its own kind) instead of having their commands acknowledged there.
"""
from __future__ import annotations

import argparse
import os
import time

from prevalence._platform import DirectoryLock
from prevalence.entry import Entry, EntryKind
from replication.errors import RaftError
from replication.journal_storage import (
    DataIdentity,
    JournalStorage,
    new_cluster_id,
    node_data_identity,
    write_identity,
)
from replication.membership import Membership, encode_membership
from replication.messages import MAX_TERM, HardState
from rpc.config import ConfigError, format_address, load_config
from rpc.epochs import EPOCH_FILE, read_superseded, write_directory_epoch

__all__ = ["recover_survivor", "add_recover_parser"]


def _survivor_config(directory: str, survivor: str):
    path = os.path.join(os.path.abspath(directory), f"{survivor}.toml")
    if not os.path.isfile(path):
        raise ConfigError(f"{directory}: no configuration {survivor}.toml: --survivor names a node configured there")
    return load_config(path)


def _log_identity(storage: JournalStorage) -> tuple[str, int]:
    """The cluster id and epoch of the latest configuration in the survivor's log
    (committed or not: recovery keeps the whole log), ("", 0) if none names one."""
    from replication.membership import decode_membership

    found = storage.initial_state()[1]
    first, last = storage.first_index(), storage.last_index()
    for lo in range(first, last + 1, 4096):
        for e in storage.entries(lo, min(lo + 4096, last + 1), None):
            if e.kind == int(EntryKind.CONFIG):
                found = decode_membership(e.data)
    return found.cluster, found.epoch


def recover_survivor(directory: str, survivor: str) -> dict:
    """Make the stopped ``survivor``'s data a one-voter cluster of the next epoch.

    Returns what was kept: ``last_index``, ``last_term``, ``commit`` (the last index the
    survivor knew committed, at most what its log holds), ``cluster``, ``epoch``,
    ``lost`` (entries its stored commit named past its log's end). Changes nothing on refusal: a
    running node (its data is locked), no or damaged data.
    """
    cfg = _survivor_config(directory, survivor)
    if not os.path.isdir(cfg.data):
        raise RaftError(f"{cfg.path}: node {survivor!r} has no data in {cfg.data}: it cannot be the survivor")
    lock = DirectoryLock(cfg.data)
    lock.acquire()  # the node must be stopped: refused with the holder's pid otherwise
    try:
        identity = node_data_identity(cfg.data, survivor)
        # a tail lost from the survivor's disk is recovery's to report, not to refuse: it
        # is the last copy there is (a node's start refuses such a log, see JournalStorage)
        storage = JournalStorage(cfg.data, fsync=cfg.fsync, lost_tail_ok=True)
        try:
            hs, lost = storage.hard_state, storage.lost_committed
            last = storage.last_index()
            last_term = storage.term(last) if last else 0
            term = max(hs.term, last_term) + 1
            if term > MAX_TERM:  # no node would take a message of it, this one included
                raise RaftError(f"{cfg.data}: node {survivor!r} is at term {term - 1}, the largest term a node "
                                "takes (2**62): a recovered cluster could elect no leader; restore a backup taken "
                                "before that term instead (docs/security.md, \"Peer message bounds\")")
            # the log's own identity wins over the file's: the file may predate the entry
            # that set it, applied but not yet written when the node stopped (rpc.identity)
            in_log = _log_identity(storage)
            cluster = in_log[0] or identity.cluster or new_cluster_id()
            # past an epoch a peer proved to this node too (rpc.epochs): a node left out of an
            # earlier recover, recovered in turn, must not make a second, different epoch N
            heard = read_superseded(cfg.data) or ("", 0)
            epoch = max((e for c, e in (in_log, (identity.cluster, identity.epoch), heard) if c == cluster),
                        default=0) + 1
            # the new epoch travels in the log too: a node added later with no id learns it there
            # the address its peers dial ([peers]), not the one it listens on (maybe 0.0.0.0)
            address = format_address(cfg.address)
            members = Membership((survivor,), (), ((survivor, address),), cluster, epoch)
            storage.append([Entry(last + 1, term, int(EntryKind.CONFIG), encode_membership(members))])
            storage.sync()
            storage.set_hard_state(HardState(term, None, hs.commit))
        finally:
            storage.close()
        # last: until the epoch is raised, running it again only appends another such entry
        write_identity(cfg.data, DataIdentity(survivor, "recovered",
                                              time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), cluster, epoch))
    finally:
        lock.release()
    # the directory's clients want the new epoch: a node left in the old one refuses them
    # rather than acknowledge their commands in a cluster of its own (rpc.epochs)
    write_directory_epoch(directory, cluster, epoch)
    return {"last_index": last, "last_term": last_term, "commit": hs.commit, "cluster": cluster, "epoch": epoch,
            "config": cfg.path, "lost": lost}


def cmd_recover(args: argparse.Namespace) -> int:
    kept = recover_survivor(args.cluster, args.survivor)
    uncommitted = kept["last_index"] - kept["commit"]
    print(f"{args.survivor}: the one voter of cluster {kept['cluster']} epoch {kept['epoch']}, keeping its log up to "
          f"index {kept['last_index']} term {kept['last_term']}"
          + (f" ({uncommitted} entries after its last known commit {kept['commit']} kept as well)" if uncommitted
             else ""))
    if kept["lost"]:
        print(f"{args.survivor}: its journal ended {kept['lost']} entries before the commit it had stored (cut off "
              f"on its disk): those entries, committed, are lost unless another node's data still holds them")
    print(f"start it: prevalence node --config {kept['config']}; then, for each other node: move its data and "
          f"config aside, prevalence cluster add --cluster {args.cluster} --id ID --address HOST:PORT, start it, "
          "prevalence cluster promote once it has caught up. A node of the old epoch is refused until wiped")
    print(f"{os.path.join(args.cluster, EPOCH_FILE)} names epoch {kept['epoch']}: programs given this directory (or "
          f"a key file copied with it) refuse the nodes of an older epoch; copy it wherever the directory's keys go")
    return 0


def add_recover_parser(cluster_sub: argparse._SubParsersAction) -> None:
    """``cluster recover``, registered under ``prevalence cluster``."""
    r = cluster_sub.add_parser("recover", help="restart a cluster that lost a majority for good from one stopped "
                               "survivor: a one-voter cluster of a new epoch (docs/operations.md)")
    r.add_argument("--cluster", required=True, metavar="DIR", help="the cluster directory (node configs and keys)")
    r.add_argument("--survivor", required=True, metavar="ID", help="the node whose data is kept (stopped)")
    r.set_defaults(func=cmd_recover)

"""Backups of a running cluster, their check, and a new cluster seeded from one.

A backup is the leader's snapshot taken after a ReadIndex confirmation, so it holds every
transaction acknowledged before it was asked for (a linearizable point), wrapped with
what is needed to trust and use it later::

    b"PVLBACKUP1\\n"  header (one line of JSON)  b"\\n"  snapshot file  sha256(all before)

The header names the cluster id and epoch, the snapshot's index and term, the
application's root factory and imports, and when and where it was taken. The trailing
SHA-256 covers everything before it; the snapshot file inside carries its own CRC.
A backup is a pickle of the whole state: restore only a file from a trusted place.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from prevalence.errors import PrevalenceError
from prevalence.snapshots import SnapshotStore, decode_file
from replication.errors import NotLeader
from replication.journal_storage import DataIdentity, HardStateFile, node_data_identity, write_identity
from replication.membership import Membership
from replication.messages import HardState

__all__ = ["BackupError", "BackupInfo", "take_backup", "read_backup", "fetch_backup", "restore_backup",
           "add_backup_parsers"]

MAGIC = b"PVLBACKUP1\n"
_DIGEST = 32


class BackupError(PrevalenceError):
    """A backup file that cannot be trusted or used: damaged, truncated, not a backup."""


@dataclass(frozen=True)
class BackupInfo:
    cluster: str
    epoch: int
    index: int
    term: int
    root: str
    imports: tuple[str, ...]
    created: str
    node: str
    sha256: str


class _Barrier:
    """A query that reads nothing: run through ReadIndex it confirms the leader and waits
    until everything committed before it is applied."""

    def run(self, root: Any) -> None:  # noqa: ARG002
        return None


def take_backup(process: Any) -> bytes:
    """On the leader (``rpc.server.NodeProcess``): a backup file's bytes, at a snapshot
    that follows a linearizable read, so that no acknowledged write is missing."""
    node = process.node
    if not node.is_leader:  # answered as "not_leader": the caller asks the leader instead
        raise NotLeader(f"{process.cfg.id} is not the leader: a backup is taken on the leader",
                        node.status().get("leader"))
    node.query(_Barrier(), linearizable=True)
    node.snapshot()  # at the applied index, which the barrier put past every acknowledged write
    snap = node.storage.snapshot()
    data = bytes(snap.data)
    meta, _ = decode_file("the leader's snapshot", data)
    ident = process.identity
    header = {"format": 1, "cluster": ident.cluster, "epoch": ident.epoch, "index": meta.index, "term": meta.term,
              "root": process.cfg.root, "imports": list(process.cfg.imports),
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "node": process.cfg.id}
    blob = MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + data
    return blob + hashlib.sha256(blob).digest()


def read_backup(path: str) -> tuple[BackupInfo, bytes]:
    """The header and the snapshot file of a backup, after every check; BackupError (one
    line naming the file) otherwise."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as exc:
        raise BackupError(f"{path}: cannot read the backup: {exc.strerror or exc}") from None
    if not blob.startswith(MAGIC):
        raise BackupError(f"{path}: not a prevalence backup (bad magic)")
    if len(blob) < len(MAGIC) + _DIGEST + 2 or hashlib.sha256(blob[:-_DIGEST]).digest() != blob[-_DIGEST:]:
        raise BackupError(f"{path}: damaged backup (SHA-256 mismatch: truncated or altered); nothing restored")
    body = blob[len(MAGIC):-_DIGEST]
    line, sep, snapshot = body.partition(b"\n")
    try:
        h = json.loads(line)
        info = BackupInfo(h["cluster"], h["epoch"], h["index"], h["term"], h["root"], tuple(h["imports"]),
                          h["created"], h["node"], hashlib.sha256(blob[:-_DIGEST]).hexdigest())
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{path}: damaged backup header: {exc}") from None
    try:
        meta, _ = decode_file(path, snapshot)
    except PrevalenceError as exc:
        raise BackupError(f"{path}: the snapshot inside is damaged: {exc}") from None
    if (meta.index, meta.term) != (info.index, info.term):
        raise BackupError(f"{path}: the header says index {info.index} term {info.term}, the snapshot is at "
                          f"{meta.index} term {meta.term}")
    return info, snapshot


def fetch_backup(directory: str, out: str) -> BackupInfo:
    """``prevalence backup``: ask the leader of the cluster in ``directory`` (admin key)
    for a backup and write it to ``out`` (never over an existing file), checked."""
    from rpc.cluster import admin

    if os.path.exists(out):
        raise BackupError(f"{out} exists: a backup is never written over a file")
    blob = admin(directory, "backup")
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    try:
        info, _ = read_backup(tmp)
    except BackupError:
        os.remove(tmp)
        raise
    os.replace(tmp, out)
    return info


def _addresses(given: list[str], nodes: int) -> dict[str, tuple[str, int]]:
    """``--address n1=HOST:PORT``..., one per node n1..nN, or none."""
    from rpc.config import parse_address

    out = {}
    for item in given:
        nid, sep, address = item.partition("=")
        if not sep:
            raise BackupError(f"--address {item!r}: expected ID=HOST:PORT")
        out[nid] = parse_address(address, f"--address {nid}")
    wanted = {f"n{i}" for i in range(1, nodes + 1)}
    if out and set(out) != wanted:
        raise BackupError(f"--address: give one for each of {', '.join(sorted(wanted))} (got {', '.join(sorted(out))})")
    return out


def restore_backup(path: str, directory: str, nodes: int = 3, base_port: int | None = None,
                   addresses: list[str] | None = None) -> tuple[BackupInfo, str]:
    """``prevalence restore``: a new cluster directory (configs, keys, data) whose nodes
    start from the backup's state, under a new cluster id. Returns (backup, new id).

    With ``addresses`` (``["n1=10.0.0.1:7100", ...]``) the nodes are configured for
    those addresses (PCs), which also travel in the restored membership; otherwise on
    127.0.0.1 from ``base_port``."""
    import dataclasses

    from rpc.cluster import free_port_block, node_config_paths, write_cluster
    from rpc.config import load_config, render_config

    info, snapshot = read_backup(path)  # before anything is written
    if nodes < 1:
        raise BackupError(f"--nodes must be at least 1, got {nodes}")
    placed = _addresses(list(addresses or ()), nodes)
    if os.path.isdir(directory) and os.listdir(directory):
        raise BackupError(f"{directory} is not empty: a backup is restored into a new directory")
    write_cluster(directory, nodes, base_port or free_port_block(nodes), info.root, list(info.imports))
    configs = [load_config(p) for p in node_config_paths(directory)]
    if placed:
        for cfg in configs:
            moved = dataclasses.replace(cfg, listen=placed[cfg.id], peers=dict(placed))
            text = render_config(dataclasses.replace(moved, path="", data=os.path.basename(cfg.data),
                                                     **{f"{r}_secret": os.path.basename(getattr(cfg, f"{r}_secret"))
                                                        for r in ("peer", "client", "admin")}))
            with open(cfg.path, "w", encoding="utf-8") as f:
                f.write(text)
        configs = [load_config(p) for p in node_config_paths(directory)]
    members = Membership(tuple(c.id for c in configs), (),
                         tuple((c.id, f"{c.listen[0]}:{c.listen[1]}") for c in configs))
    meta, body = decode_file(path, snapshot)
    meta.extra = {**meta.extra, "membership": members.to_wire()}
    cluster = ""
    for cfg in configs:
        SnapshotStore(os.path.join(cfg.data, "snapshots")).write(meta, bytes(body))
        HardStateFile(cfg.data).store(HardState(info.term, None, info.index))
        made = node_data_identity(cfg.data, cfg.id)
        cluster = made.cluster
        write_identity(cfg.data, DataIdentity(cfg.id, "restored", made.created, made.cluster, 0))
    return info, cluster


def _describe(info: BackupInfo) -> str:
    return (f"index {info.index} term {info.term} of cluster {info.cluster or '(unknown)'} epoch {info.epoch}, "
            f"taken {info.created} on {info.node}; root {info.root}; sha256 {info.sha256[:16]}")


def cmd_backup(args: argparse.Namespace) -> int:
    if args.out is None:
        raise BackupError("prevalence backup: --cluster DIR --out FILE takes a backup; backup verify FILE checks one")
    info = fetch_backup(args.cluster, args.out)
    print(f"{args.out}: {_describe(info)}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    info, _ = read_backup(args.file)
    print(f"{args.file}: valid backup: {_describe(info)}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    info, cluster = restore_backup(args.file, args.data, args.nodes, args.port, args.address)
    print(f"{args.data}: a new cluster {cluster} of {args.nodes} nodes seeded at index {info.index} term "
          f"{info.term} from {args.file}; start it: prevalence cluster up --data {args.data} --root {info.root}")
    return 0


def add_backup_parsers(sub: argparse._SubParsersAction) -> None:
    """``backup``, ``backup verify`` and ``restore``, registered on ``prevalence``."""
    b = sub.add_parser("backup", help="a consistent backup of a running cluster through its leader "
                       "(admin key); `backup verify FILE` checks one")
    b.add_argument("--cluster", metavar="DIR", help="the cluster directory (its admin key and node addresses)")
    b.add_argument("--out", metavar="FILE", help="the backup file to write (never over an existing one)")
    b.set_defaults(func=cmd_backup)
    bsub = b.add_subparsers(dest="backup_action")
    v = bsub.add_parser("verify", help="check a backup file: checksum, header, snapshot")
    v.add_argument("file", metavar="FILE", help="the backup file")
    v.set_defaults(func=cmd_verify)
    r = sub.add_parser("restore", help="a new cluster (new cluster id) in a new directory from a backup")
    r.add_argument("file", metavar="FILE", help="the backup file")
    r.add_argument("--data", required=True, metavar="DIR", help="a new directory: configs, keys and data")
    r.add_argument("--nodes", type=int, default=3, help="nodes of the new cluster (default 3)")
    r.add_argument("--port", type=int, metavar="BASE", help="first port on 127.0.0.1 (default: a free block)")
    r.add_argument("--address", action="append", metavar="ID=HOST:PORT",
                   help="for the PCs: one per node n1..nN, instead of 127.0.0.1")
    r.set_defaults(func=cmd_restore)

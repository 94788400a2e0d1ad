"""Backups of a running cluster, their check, and a new cluster seeded from one.

A backup is the leader's snapshot taken after a ReadIndex confirmation, so it holds every
transaction acknowledged before it was asked for (a linearizable point), wrapped with
what is needed to trust and use it later (the file's layout: :mod:`rpc.backup_file`).

It travels in chunks (:data:`CHUNK` bytes, far below any frame limit), never as one
reply: ``backup_begin`` takes the snapshot on the leader and opens a session that holds
its bytes (the file itself may be pruned meanwhile) and their SHA-256;
``backup_chunk(session, offset)`` reads one chunk, any number of times (a retry after a
lost connection reads it again); ``backup_end`` lets it go. A session nobody asked for
a chunk in :data:`SESSION_IDLE` seconds, or older than :data:`SESSION_LIFETIME`, is
dropped, and at most :data:`MAX_SESSIONS` are open per node: a vanished or slow client
does not pin the node's memory. The client checks the SHA-256 over the whole stream,
writes to ``FILE.tmp`` and renames it to ``FILE`` only once complete and verified.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from prevalence.snapshots import SnapshotStore, decode_file
from prevalence.text import os_error_text
from replication.errors import NotLeader
from replication.journal_storage import DataIdentity, HardStateFile, node_data_identity, write_identity
from replication.membership import Membership
from replication.messages import HardState
from rpc.backup_file import MAGIC, BackupError, BackupInfo, describe, read_backup

__all__ = ["BackupError", "BackupInfo", "BackupSessions", "take_backup", "read_backup", "fetch_backup",
           "restore_backup", "add_backup_parsers"]

CHUNK = 1 << 20  # bytes of one backup_chunk reply at most
SESSION_IDLE = 60.0  # seconds a backup session lives without a chunk asked for
SESSION_LIFETIME = 3600.0  # seconds a backup session lives at most
MAX_SESSIONS = 2  # backup sessions open at once on one node
_SESSION_ID = re.compile(r"[0-9a-f]{32}")
#: What the backup client reads in one frame at most: one chunk and RPyC's framing.
BACKUP_MAX_FRAME = 4 << 20


class _Barrier:
    """A query that reads nothing: run through ReadIndex it confirms the leader and waits
    until everything committed before it is applied."""

    def run(self, root: Any) -> None:  # noqa: ARG002
        return None


def take_backup(process: Any) -> tuple[bytes, bytes]:
    """On the leader (``rpc.server.NodeProcess``): a backup file's bytes but the trailing
    digest, as (header part, snapshot file), at a snapshot that follows a linearizable
    read, so that no acknowledged write is missing. Two parts: the snapshot is not copied."""
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
    return MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n", data


@dataclass
class _Session:
    head: bytes
    data: bytes
    sha256: bytes
    opened: float
    used: float = field(default=0.0)

    @property
    def size(self) -> int:
        return len(self.head) + len(self.data)

    def read(self, offset: int, n: int) -> bytes:
        """Bytes ``offset``.. of head + data (at most ``n``), copying only those."""
        head = len(self.head)
        if offset >= head:
            return self.data[offset - head:offset - head + n]
        out = self.head[offset:offset + n]
        return out + self.data[:n - len(out)] if len(out) < n else out


class BackupSessions:
    """The backups one node is streaming (see the module): each holds one snapshot's
    bytes until its client ends it or it expires."""

    def __init__(self, idle: float = SESSION_IDLE, lifetime: float = SESSION_LIFETIME,
                 max_sessions: int = MAX_SESSIONS, chunk: int = CHUNK):
        self.idle, self.lifetime, self.max_sessions, self.chunk = idle, lifetime, max_sessions, chunk
        self._sessions: dict[str, _Session] = {}
        self._taking = 0  # begins taking their snapshot, not yet sessions (each holds a slot)
        self._lock = threading.Lock()
        self._reaper: threading.Thread | None = None

    def begin(self, process: Any) -> tuple[str, int, str, int]:
        """Take a backup (leader only); returns (session, size, sha256 hex, chunk size)."""
        with self._lock:
            self._sweep(time.monotonic())
            busy = len(self._sessions) + self._taking
            if busy >= self.max_sessions:
                raise BackupError(f"{busy} backups are already being taken from this node (at most "
                                  f"{self.max_sessions}): try again once they end, or in {self.idle:g} s")
            # the slot is held while the snapshot is taken: each one in flight is a whole
            # copy of the state in memory, so callers beyond the limit never take one
            self._taking += 1
        try:
            head, data = take_backup(process)  # outside the lock: it waits for a snapshot
            digest = hashlib.sha256(head)
            digest.update(data)
        except BaseException:
            with self._lock:
                self._taking -= 1
            raise
        now = time.monotonic()
        session = _Session(head, data, digest.digest(), now, now)
        sid = secrets.token_hex(16)
        with self._lock:
            self._taking -= 1
            self._sessions[sid] = session
            if self._reaper is None or not self._reaper.is_alive():
                self._reaper = threading.Thread(target=self._reap, name="backup-sessions", daemon=True)
                self._reaper.start()
        return sid, session.size, session.sha256.hex(), self.chunk

    def read(self, sid: str, offset: int) -> bytes:
        """One chunk of session ``sid`` from ``offset`` (validated by the caller's types)."""
        with self._lock:
            session = self._sessions.get(sid)
            if session is None:
                raise BackupError("no such backup session: it ended, or expired after "
                                  f"{self.idle:g} s without a chunk asked for; take the backup again")
            if not 0 <= offset < session.size:
                raise BackupError(f"offset {offset} is outside the backup's {session.size} bytes")
            session.used = time.monotonic()
        return session.read(offset, self.chunk)

    def end(self, sid: str) -> bool:
        with self._lock:
            return self._sessions.pop(sid, None) is not None

    def __len__(self) -> int:
        return len(self._sessions)

    def _sweep(self, now: float) -> None:
        for sid, s in list(self._sessions.items()):
            if now - s.used > self.idle or now - s.opened > self.lifetime:
                del self._sessions[sid]

    def _reap(self) -> None:
        """Expires sessions whose client never comes back; ends when none is left."""
        while True:
            time.sleep(min(self.idle, 5.0) / 2)
            with self._lock:
                self._sweep(time.monotonic())
                if not self._sessions:
                    self._reaper = None
                    return


_registry_lock = threading.Lock()


def sessions_of(process: Any) -> BackupSessions:
    """The backup sessions of a node process (made on first use)."""
    with _registry_lock:
        sessions = getattr(process, "backup_sessions", None)
        if sessions is None:
            sessions = process.backup_sessions = BackupSessions()
        return sessions


def session_id_problem(sid: Any) -> str | None:
    """Why ``sid`` is no backup session id (exactly a str of 32 lowercase hex digits)."""
    if type(sid) is not str or not _SESSION_ID.fullmatch(sid):
        return "a backup session id is 32 lowercase hex digits, as backup_begin returned it"
    return None


class _Link:
    """The backup client's connection to one node (admin key, frames of 4 MiB at most),
    opened again after a lost connection: the session there outlives it for
    :data:`SESSION_IDLE` seconds, and a chunk is read again from its offset."""

    def __init__(self, cfg: Any, secret: bytes):
        self.cfg, self._secret, self._conn = cfg, secret, None

    def call(self, method: str, *args: Any, attempts: int = 1) -> list:
        from rpc.auth import ConnectFailed
        from rpc.config import tls_contexts
        from rpc.transport import open_connection, remote_method

        for attempt in range(attempts):
            try:
                if self._conn is None:
                    self._conn = open_connection(self.cfg.address, self._secret, role="admin", ident="backup",
                                                 request_timeout=300.0, ssl_context=tls_contexts(self.cfg)[1],
                                                 max_frame=BACKUP_MAX_FRAME)
                return _decode(remote_method(self._conn, method)(*args))
            except (ConnectFailed, EOFError, OSError):
                self.close()
                if attempt + 1 >= attempts:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - a connection already gone
                pass
            self._conn = None


def _begin_on_leader(directory: str) -> tuple[_Link, list]:
    """(link to the leader, its backup_begin reply), asking the leader first and
    following its redirections; the admin key."""
    from rpc.cluster import cluster_status, directory_key, node_config_paths
    from rpc.config import ConfigError, load_config
    from rpc.epochs import leader_first
    from rpc.status_report import unreachable_summary

    configs = {c.id: c for c in (load_config(p) for p in node_config_paths(directory))}
    secret = directory_key(directory, "admin")
    rows = cluster_status(directory)
    order = leader_first(rows, directory)  # never a leader that an old epoch elected (rpc.epochs)
    tried: list[str] = []
    for nid in order:
        if nid in tried:
            continue
        tried.append(nid)
        link = _Link(configs[nid], secret)
        try:
            reply = link.call("backup_begin")
        except BaseException:
            link.close()
            raise
        if reply[0] == "ok":
            return link, reply[1]
        link.close()
        if reply[0] != "not_leader":
            raise BackupError(f"backup refused by {nid}: {reply[-1]}")
    if not tried:  # the status round had no answer: why (nothing listening, a key or a release refused...)
        why = "; ".join(unreachable_summary(rows).splitlines()) or "no node configured"
        raise ConfigError(f"no leader accepted the backup: no node gave its status ({why})")
    raise ConfigError(f"no leader accepted the backup (asked {', '.join(tried)})")


def _decode(raw: Any) -> list:
    import msgpack

    if type(raw) is not bytes:
        raise BackupError("the node answered something other than bytes")
    reply = msgpack.unpackb(raw, raw=False)
    if type(reply) is not list or not reply:
        raise BackupError("the node's reply is malformed")
    return reply


def fetch_backup(directory: str, out: str) -> BackupInfo:
    """``prevalence backup``: ask the leader of the cluster in ``directory`` (admin key)
    for a backup and stream it, chunk by chunk, to ``out`` (never over an existing
    file): written to ``out.tmp``, checked (the SHA-256 over the whole stream, then the
    file as ``backup verify`` checks it), and only then renamed to ``out``."""
    from prevalence._platform import fsync_dir

    if os.path.exists(out):
        raise BackupError(f"{out} exists: a backup is never written over a file")
    link, begun = _begin_on_leader(directory)
    try:
        sid, size, sha256, chunk = begun
        if session_id_problem(sid) or not (type(size) is int and type(chunk) is int and type(sha256) is str
                                           and 0 < size and 0 < chunk <= BACKUP_MAX_FRAME // 2):
            raise ValueError(begun)
    except (TypeError, ValueError):
        link.close()
        raise BackupError(f"{link.cfg.id} began the backup with a malformed answer") from None
    tmp = out + ".tmp"
    try:
        digest = hashlib.sha256()
        with open(tmp, "wb") as f:
            offset = 0
            while offset < size:
                reply = link.call("backup_chunk", sid, offset, attempts=3)
                if reply[0] != "ok" or type(reply[1]) is not bytes:
                    raise BackupError(f"the backup stopped at byte {offset} of {size}: {reply[-1]}")
                part = reply[1]
                if not part or len(part) > chunk or offset + len(part) > size:
                    raise BackupError(f"the leader sent {len(part)} bytes at {offset} of {size}")
                digest.update(part)
                f.write(part)
                offset += len(part)
            if digest.hexdigest() != sha256:
                raise BackupError("the backup as received does not match the leader's SHA-256 (altered in transit?); "
                                  "nothing written")
            f.write(digest.digest())
            f.flush()
            os.fsync(f.fileno())
        info, _ = read_backup(tmp)
    except BaseException as exc:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):  # a write or fsync says neither the file nor that nothing was kept
            raise BackupError(f"cannot write the backup {out}: {os_error_text(exc)}; nothing written") from exc
        raise
    finally:
        try:
            link.call("backup_end", sid)  # the node lets the snapshot go now
        except Exception:  # noqa: BLE001 - it expires on its own
            pass
        link.close()
    os.replace(tmp, out)
    fsync_dir(os.path.dirname(os.path.abspath(out)))
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
    info, snapshot = read_backup(path)  # before anything is written
    if nodes < 1:
        raise BackupError(f"--nodes must be at least 1, got {nodes}")
    if base_port is not None and not 1 <= base_port <= 65536 - nodes:  # checked before anything is written
        raise BackupError(f"--port {base_port}: the ports of {nodes} nodes from there are not all in 1..65535")
    placed = _addresses(list(addresses or ()), nodes)
    if os.path.isdir(directory) and os.listdir(directory):
        raise BackupError(f"{directory} is not empty: a backup is restored into a new directory")
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise BackupError(f"{directory} is a file: a backup is restored into a new directory")
    existed = os.path.isdir(directory)
    try:
        return info, _seed(directory, nodes, base_port, placed, info, path, snapshot)
    except BaseException as exc:
        _remove_made(directory, existed)  # a retry would find it "not empty"
        if isinstance(exc, OSError):  # a write says neither where nor that nothing was kept
            raise BackupError(f"cannot restore into {directory}: {os_error_text(exc)}; nothing left there") from exc
        raise


def _seed(directory: str, nodes: int, base_port: int | None, placed: dict, info: BackupInfo, path: str,
          snapshot: memoryview) -> str:
    """Write the new cluster's configs, keys and data into ``directory``; its id."""
    import dataclasses

    from rpc.cluster import free_port_block, node_config_paths, write_cluster
    from rpc.config import load_config, render_config

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
    cluster = node_data_identity(configs[0].data, configs[0].id).cluster  # write_cluster's new id, one for all
    # the snapshot's membership carries the new id: a node added later learns it there
    members = Membership(tuple(c.id for c in configs), (),
                         tuple((c.id, f"{c.address[0]}:{c.address[1]}") for c in configs), cluster, 0)
    meta, body = decode_file(path, snapshot)
    meta.extra = {**meta.extra, "membership": members.to_wire()}
    for cfg in configs:
        SnapshotStore(os.path.join(cfg.data, "snapshots")).write(meta, bytes(body))
        HardStateFile(cfg.data).store(HardState(info.term, None, info.index))
        made = node_data_identity(cfg.data, cfg.id)
        write_identity(cfg.data, DataIdentity(cfg.id, "restored", made.created, cluster, 0))
    return cluster


def _remove_made(directory: str, existed: bool) -> None:
    """Undo a restore that failed: ``directory`` was empty or absent before it began."""
    import shutil

    if not existed:
        shutil.rmtree(directory, ignore_errors=True)
        return
    for name in os.listdir(directory):
        full = os.path.join(directory, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            try:
                os.remove(full)
            except OSError:
                pass


def cmd_backup(args: argparse.Namespace) -> int:
    if args.out is None:
        raise BackupError("prevalence backup: --cluster DIR --out FILE takes a backup; backup verify FILE checks one")
    info = fetch_backup(args.cluster, args.out)
    print(f"{args.out}: {describe(info)}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    info, _ = read_backup(args.file)
    print(f"{args.file}: valid backup: {describe(info)}")
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

"""The Raft log on disk: the prevalence journal, its snapshots, and a hard-state file.

There is no second log: Raft entries are journal records (index, term, kind, data), the
engine's snapshots are the Raft snapshots (their metadata carries the membership), and
compaction removes the journal segments the kept snapshots cover.

Durability: :meth:`JournalStorage.sync` fsyncs every appended entry, whatever the
journal's own policy, so the acknowledgements and votes sent after it promise only what
is on disk. Term and vote are fsynced (temp file, fsync, rename) whenever they change,
before the Ready's persisted messages go out. The commit index is written with them but
not on every advance: a stale commit on disk is safe (it only means re-learning it); a
commit past the durable journal is not, so the stored one is capped at what is durable.
It is also written when it has doubled or moved COMMIT_STORE_EVERY entries since the last
write: the stored commit is what tells a restart that its log lost entries it had (a
journal deleted or cut off under a stopped node), which it then refuses to start on
(its vote would count without the entries it acknowledged).

The ``fsync`` setting of a node (:data:`NODE_FSYNC_MODES`): ``"always"`` (the default),
or ``"unsafe-no-fsync"``, which hands entries to the operating system without fsyncing
them, so that acknowledged entries and the logs that votes relied on can be lost at a
power failure or OS crash: for tests and benchmarks only. The engine's ``"batch"`` and
``"never"`` are refused: they would acknowledge before the disk has the entry.

All file I/O goes through an injected :class:`~prevalence.fs.FileSystem` (``fs=``, the OS
by default). Storage failures: :class:`~prevalence.errors.DiskFull` from ``sync``,
``append``, ``truncate``, ``set_hard_state`` or a snapshot write means nothing was lost
and the same call may be retried once space returns; any other error (EngineHaltedError
from a failed fsync) means the journal is poisoned and the node must stop.
"""
from __future__ import annotations

import json
import logging
import os
import struct
import time
import tomllib
from dataclasses import dataclass
from typing import Sequence
from zlib import crc32

import msgpack

from prevalence import _platform
from prevalence.entry import Entry
from prevalence.errors import DiskFull
from prevalence.fs import OS, FileSystem, make_dirs, read_file, write_file_durably
from prevalence.journal import DEFAULT_SEGMENT_BYTES, Journal
from prevalence.snapshots import SnapshotMeta as FileMeta
from prevalence.snapshots import SnapshotStore, decode_file
from replication.errors import CompactedError, RaftError, UnavailableError
from replication.membership import Membership, cluster_id_problem
from replication.messages import HardState, Snapshot, SnapshotMeta

log = logging.getLogger("replication.journal_storage")

HARD_STATE_FILE = "raft-state"
#: The stored commit is refreshed at least this often (in entries): the log a restart
#: can tell was lost is all but at most this many last entries (or half, early on).
COMMIT_STORE_EVERY = 1024
_CRC = struct.Struct("<I")

NODE_FSYNC_MODES = ("always", "unsafe-no-fsync")


def fsync_mode_problem(mode: object) -> str | None:
    """Why ``mode`` is not a cluster node's fsync setting (one line), or None if it is one."""
    if mode in NODE_FSYNC_MODES:
        return None
    if mode in ("batch", "never"):
        return (f'= "{mode}" is not offered on a cluster node: it acknowledges entries and votes before '
                'they are on disk; use "always" (the default), or "unsafe-no-fsync" for tests and '
                "benchmarks only (docs/operations.md)")
    return f'must be "always" or "unsafe-no-fsync", got {mode!r}'


class HardStateFile:
    """term, vote and commit in one small checksummed file, replaced atomically."""

    def __init__(self, directory: str, fs: FileSystem = OS):
        self.path = os.path.join(directory, HARD_STATE_FILE)
        self.directory = directory
        self.fs = fs

    def load(self) -> HardState:
        try:
            data = read_file(self.fs, self.path)
        except FileNotFoundError:
            return HardState()
        body, tail = data[:-4], data[-4:]
        if len(data) < 5 or _CRC.unpack(tail)[0] != crc32(body):
            raise RaftError(f"{self.path}: damaged hard state file (checksum mismatch); the node cannot know "
                            "its term and vote: rebuild it (docs/operations.md)")
        try:
            term, vote, commit = msgpack.unpackb(body)
        except Exception as exc:
            raise RaftError(f"{self.path}: malformed hard state: {exc}") from None
        if type(term) is not int or term < 0 or type(commit) is not int or commit < 0 \
                or not (vote is None or isinstance(vote, str)):
            raise RaftError(f"{self.path}: malformed hard state: {[term, vote, commit]!r:.200}")
        return HardState(term, vote, commit)

    def store(self, hs: HardState) -> None:
        """Replace the file durably. A full disk raises DiskFull with the old file intact."""
        body = msgpack.packb([hs.term, hs.vote, hs.commit])
        try:
            write_file_durably(self.fs, self.path, [body + _CRC.pack(crc32(body))])
        except OSError as exc:
            if _platform.is_disk_full(exc):
                raise DiskFull(f"cannot store the hard state {self.path}: disk full ({exc})") from exc
            raise


# -- a node's identity: whether its data directory was ever created ---------------------
#
# A node's data is created once, with the node (``create_node_data``): by the tool that
# writes a new cluster's configurations, by ``cluster add``, or explicitly for a
# hand-written configuration. A node process never creates it when it starts
# (``node_data_identity`` refuses a missing one): a voter that lost its data and started
# empty would vote with no memory of the entries it acknowledged, and a leader elected
# with that vote can overwrite them. The file is TOML with a ``format`` number, so that
# more of the node's identity (a cluster id) can be added to it.

IDENTITY_FILE = "identity.toml"
#: 2 adds the cluster id and epoch; format 1 files are read as "cluster unknown, epoch 0".
IDENTITY_FORMAT = 2
ORIGINS = ("new-cluster", "join", "adopted", "recovered", "restored")  # adopted: data from before identity files


class NoDataError(RaftError):
    """A node's data directory is missing or holds no node data."""


@dataclass(frozen=True)
class DataIdentity:
    node: str  # the node id the data belongs to
    origin: str  # how the data was created (ORIGINS)
    created: str  # when, UTC, ISO 8601
    cluster: str = ""  # the random id of the cluster the data belongs to; "" not known yet (rpc.identity)
    epoch: int = 0  # raised by `cluster recover`: data of an older epoch is refused by the peers


def new_cluster_id() -> str:
    """A random cluster id: two clusters that share a key still tell each other apart."""
    import secrets

    return secrets.token_hex(8)


def holds_node_data(directory: str, *, fs: FileSystem = OS) -> bool:
    """Anything a node wrote: its identity, hard state, a journal segment or a snapshot."""
    if any(fs.exists(os.path.join(directory, name)) for name in (IDENTITY_FILE, HARD_STATE_FILE)):
        return True
    for sub, suffix in (("journal", ".log"), ("snapshots", ".snap")):
        try:
            if any(name.endswith(suffix) for name in fs.listdir(os.path.join(directory, sub))):
                return True
        except OSError:
            pass
    return False


def create_node_data(directory: str, node_id: str, origin: str, cluster: str = "", epoch: int = 0, *,
                     fs: FileSystem = OS) -> DataIdentity:
    """The data directory of a node that has never run: its identity and a term-0 hard
    state (from then on a missing hard state is damage, not a first start). A directory
    that already holds node data is refused: its votes and entries may count."""
    if origin not in ORIGINS:
        raise RaftError(f"origin must be one of {', '.join(ORIGINS)}, got {origin!r}")
    directory = os.path.abspath(directory)
    if holds_node_data(directory, fs=fs):
        raise RaftError(f"{directory} already holds node data; a node's data is created once, with the node "
                        "(a node that must start afresh is rebuilt: docs/operations.md, \"Rebuilding a node\")")
    make_dirs(fs, directory)
    fs.fsync_dir(os.path.dirname(directory))  # also when it existed, empty: it may be new
    HardStateFile(directory, fs).store(HardState())
    identity = DataIdentity(node_id, origin, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), cluster, epoch)
    _write_identity(directory, identity, fs)  # last: the directory is a node's data once it is there
    return identity


def node_data_identity(directory: str, node_id: str, *, fs: FileSystem = OS) -> DataIdentity:
    """The identity of the data a node is about to start on, after the checks that keep it
    from starting on no data, on another node's data, or without its term and vote.

    Data from before identity files is adopted (its identity is written now)."""
    directory = os.path.abspath(directory)
    path = os.path.join(directory, IDENTITY_FILE)
    hard_state = os.path.join(directory, HARD_STATE_FILE)
    if fs.exists(path):
        identity = read_identity(path, fs)
        if identity.node != node_id:
            raise RaftError(f"{directory} holds the data of node {identity.node!r} ({path}), not of {node_id!r}: "
                            "check the configuration's data directory")
    elif holds_node_data(directory, fs=fs):
        identity = None
    else:
        raise NoDataError(f"{directory}: no node data")
    if not fs.exists(hard_state):
        raise RaftError(f"{hard_state} is missing: the node would forget its term and vote; rebuild it "
                        "(docs/operations.md, \"Rebuilding a node\")")
    if identity is None:
        identity = DataIdentity(node_id, "adopted", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        _write_identity(directory, identity, fs)
    return identity


_REBUILD = "rebuild this node (docs/operations.md, \"Rebuilding a node\")"


def read_identity(path: str, fs: FileSystem = OS) -> DataIdentity:  # an IDENTITY_FILE, checked
    try:
        doc = tomllib.loads(read_file(fs, path).decode("utf-8"))
    except OSError as exc:
        raise RaftError(f"{path}: unreadable node identity: {exc}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:  # the file is written whole: the disk damaged it
        raise RaftError(f"{path}: damaged node identity ({exc}): {_REBUILD}") from None
    fmt = doc.get("format")
    if fmt is None:  # every version writes one first: an empty file, or one the disk lost
        raise RaftError(f"{path}: damaged node identity (empty, or no format line): {_REBUILD}")
    if not isinstance(fmt, int) or not 1 <= fmt <= IDENTITY_FORMAT:
        raise RaftError(f"{path}: node identity format {fmt!r} is not one this version reads "
                        f"(up to {IDENTITY_FORMAT})")
    fields = {k: doc.get(k) for k in ("node", "origin", "created")}
    if not all(isinstance(v, str) for v in fields.values()) or fields["origin"] not in ORIGINS:
        raise RaftError(f"{path}: malformed node identity: {doc!r}")
    cluster, epoch = doc.get("cluster", ""), doc.get("epoch", 0)
    if cluster_id_problem(cluster if cluster != "" else "-", epoch):  # "" is no id yet
        raise RaftError(f"{path}: malformed cluster id or epoch: {doc!r}")
    return DataIdentity(**fields, cluster=cluster, epoch=epoch)


def write_identity(directory: str, identity: DataIdentity, *, fs: FileSystem = OS) -> None:
    """Replace a node's identity (``cluster recover`` moves a survivor to a new epoch)."""
    _write_identity(os.path.abspath(directory), identity, fs)


def _write_identity(directory: str, identity: DataIdentity, fs: FileSystem = OS) -> None:
    path = os.path.join(directory, IDENTITY_FILE)
    text = (f"# This node's identity, written when its data was created. A node starts only on a\n"
            f"# data directory that has one (docs/operations.md, \"Rebuilding a node\").\n"
            f"format = {IDENTITY_FORMAT}\n"
            + "".join(f"{k} = {json.dumps(getattr(identity, k))}\n"
                      for k in ("node", "origin", "created", "cluster", "epoch")))
    write_file_durably(fs, path, [text.encode("utf-8")])


class JournalStorage:
    """The Storage protocol (replication.storage) on a node's data directory."""

    def __init__(
        self,
        directory: str,
        *,
        initial_membership: Membership = Membership(),
        fsync: str = "always",
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        keep_snapshots: int = 2,
        fs: FileSystem = OS,
        lost_tail_ok: bool = False,
    ):
        """``lost_tail_ok``: a log that ends before the stored commit is opened, its commit
        taken as the log's end (``lost_committed`` says how many entries that lost), not
        refused: for ``cluster recover``, which keeps whatever a last survivor holds."""
        self.directory = os.path.abspath(directory)
        self.lost_committed = 0
        self.fs = fs
        problem = fsync_mode_problem(fsync)
        if problem is not None:
            raise RaftError(f"{self.directory}: fsync {problem}")
        self.fsync = fsync
        self._unsafe_no_fsync = fsync == "unsafe-no-fsync"
        make_dirs(fs, self.directory)
        # "never": sync() then only writes to the OS; "always" fsyncs on reads of unwritten
        # entries too (sync() fsyncs in any case, see there)
        journal_dir = os.path.join(self.directory, "journal")
        if not fs.isdir(journal_dir) and not lost_tail_ok:
            # The journal is made at the first start, before any term: a node past one whose
            # journal is gone (and no snapshot stands for it) lost its log, and it must not
            # be made again here, or the next start would take the empty one for the log.
            term = HardStateFile(self.directory, fs).load().term
            snaps = os.path.join(self.directory, "snapshots")
            if term > 0 and not (fs.isdir(snaps) and any(n.endswith(".snap") for n in fs.listdir(snaps))):
                raise RaftError(
                    f"{journal_dir} is missing, yet {HARD_STATE_FILE} says this node took part in term {term}: its "
                    "log was deleted, and its vote would count without the entries it acknowledged: rebuild this "
                    "node (docs/operations.md, \"Rebuilding a node\")"
                )
        self.journal = Journal(journal_dir, fsync="never" if self._unsafe_no_fsync else "always",
                               segment_bytes=segment_bytes, fs=fs)
        self.snapshots = SnapshotStore(os.path.join(self.directory, "snapshots"), keep=keep_snapshots, fs=fs)
        self._hs_file = HardStateFile(self.directory, fs)
        self.hard_state = self._stored = self._hs_file.load()
        self._snap = SnapshotMeta(0, 0, initial_membership)
        for index in self.snapshots.indexes():  # newest valid one; damaged ones are skipped
            try:
                meta, _ = self.snapshots.read(index)
            except Exception as exc:  # noqa: BLE001 - skipped for an older one, and said: the disk damages files
                path = self.snapshots.path_of(index)
                log.warning("skipping damaged snapshot: %s", exc if path in str(exc) else f"{path}: {exc}")
                continue
            self._snap = SnapshotMeta(meta.index, meta.term, Membership.from_wire(meta.extra["membership"]))
            break
        j = self.journal
        if j.last_index < self._snap.index:
            # A snapshot installed from the leader, and we stopped before the journal was
            # reset: everything the journal holds is covered; the log resumes after it.
            j.reset(self._snap.index + 1)
        elif j.first_index > self._snap.index + 1:
            self.journal.close()
            raise RaftError(
                f"{self.directory}: the journal starts at index {j.first_index} but the newest usable snapshot "
                f"is at {self._snap.index}: entries {self._snap.index + 1}..{j.first_index - 1} are missing. "
                "This node cannot rejoin with this data; rebuild it (docs/operations.md)"
            )
        if self.hard_state.commit > self.last_index() and lost_tail_ok:
            hs, last = self.hard_state, self.last_index()
            self.lost_committed = hs.commit - last
            self.hard_state = HardState(hs.term, hs.vote, last)
        elif self.hard_state.commit > self.last_index():
            last = self.last_index()
            self.journal.close()
            raise RaftError(
                f"{self.directory}: {HARD_STATE_FILE} says entries up to {self.hard_state.commit} were committed and "
                f"on this disk, but the journal and snapshots end at {last}: entries were deleted or cut off. "
                "Its vote would count without the entries it acknowledged: rebuild this node "
                "(docs/operations.md, \"Rebuilding a node\")"
            )

    # -- reads (the core) -----------------------------------------------------------
    def initial_state(self) -> tuple[HardState, Membership]:
        return self.hard_state, self._snap.membership

    def first_index(self) -> int:
        return self._snap.index + 1

    def last_index(self) -> int:
        return max(self.journal.last_index, self._snap.index)

    # The disk lane's thread publishes a snapshot (replaces ``_snap``) while the core reads:
    # each read takes ``_snap`` once, so its index, term and file belong together.
    def term(self, index: int) -> int:
        snap = self._snap
        if index == snap.index:
            return snap.term
        if index < snap.index:
            raise CompactedError(index, snap.index + 1)
        if index > self.journal.last_index:
            raise UnavailableError(f"index {index} is past the last stored index {self.last_index()}")
        try:
            return self.journal.term(index)
        except IndexError:
            self._compacted_meanwhile(index)
            raise

    def entries(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry]:
        snap = self._snap.index
        if lo <= snap:
            raise CompactedError(lo, snap + 1)
        if hi > self.last_index() + 1:
            raise UnavailableError(f"entries up to {hi - 1} requested, last stored is {self.last_index()}")
        if lo >= hi:
            return []
        try:
            return self.journal.entries(lo, hi, max_bytes)
        except IndexError:
            self._compacted_meanwhile(lo)
            raise

    def _compacted_meanwhile(self, index: int) -> None:
        """CompactedError if a snapshot published since the caller's check covers ``index``:
        the core then sends it, instead of stopping on the journal's IndexError."""
        snap = self._snap.index
        if index <= snap:
            raise CompactedError(index, snap + 1) from None

    def snapshot(self) -> Snapshot:
        """The newest snapshot as the whole, self-checking file (what a follower installs)."""
        snap = self._snap
        if snap.index == 0:
            return Snapshot(snap, b"")
        try:
            data = self.snapshots.read_encoded(snap.index)
        except Exception as exc:
            raise UnavailableError(f"snapshot {snap.index} cannot be read: {exc}") from exc
        return Snapshot(snap, data)

    # -- writes (the host, following the Ready contract) ------------------------------
    def set_hard_state(self, hs: HardState) -> None:
        self.hard_state = hs
        if self.hard_state_needs_write(hs):
            self._store(hs)

    def _capped(self, hs: HardState) -> HardState:
        """``hs`` with its commit capped at the durable log: the file is fsynced at once,
        the entries maybe later (or never, after a write failure), and a commit on disk
        past what survived would name entries that a restart does not have."""
        durable = max(self.journal.durable_index, self._snap.index)
        return hs if hs.commit <= durable else HardState(hs.term, hs.vote, durable)

    def _store(self, hs: HardState) -> None:
        hs = self._capped(hs)
        self._hs_file.store(hs)
        self._stored = hs

    def hard_state_needs_write(self, hs: HardState) -> bool:
        """Term or vote changed: the file must be replaced (and fsynced) before acks go out.
        Or the commit has doubled, or moved COMMIT_STORE_EVERY entries, since it was stored:
        then a restart can tell a log that lost entries (see the module's docstring).
        The commit counted is the one a write would store (capped at the durable log): one
        the cap holds back (unsafe-no-fsync, a leader ahead of its own disk) is not due
        again on every batch, each time a file replaced and fsynced for nothing."""
        stored = self._stored
        if (hs.term, hs.vote) != (stored.term, stored.vote):
            return True
        return self._capped(hs).commit >= max(1, stored.commit + min(stored.commit, COMMIT_STORE_EVERY))

    def note_commit(self, hs: HardState) -> None:
        """A commit-only change: kept in memory, written with the next term/vote change,
        by :meth:`refresh_commit`, or at close (a stale commit on disk only means
        re-learning it)."""
        self.hard_state = hs

    def refresh_commit(self) -> None:
        """After a batch of writes (the disk lane): store the commit kept in memory when
        it is due (see ``hard_state_needs_write``). A leader learns its commits in Readys
        of their own, which write nothing (``note_commit``): without this, its stored
        commit would stay where its term began. A term or vote is written only by the
        Ready that carries it, never from here."""
        hs = self.hard_state
        if (hs.term, hs.vote) == (self._stored.term, self._stored.vote) and self.hard_state_needs_write(hs):
            try:
                self._store(hs)
            except OSError as exc:  # DiskFull included
                # optional: the file is replaced by a rename, so a failure leaves the old one,
                # whose older commit is safe; it is tried again after the next batch. Raised,
                # it stopped the node (out of file descriptors, a full disk) for a refresh.
                log.warning("%s: the stored commit was not refreshed (tried again later): %s", self.directory,
                            exc)

    def truncate(self, from_index: int) -> None:
        if from_index <= self._snap.index:
            raise CompactedError(from_index, self._snap.index + 1)
        self.journal.truncate_after(from_index - 1)

    def append(self, entries: Sequence[Entry]) -> None:
        """Append; an overlap with stored entries replaces them (Raft's conflicting suffix)."""
        if not entries:
            return
        if entries[0].index <= self._snap.index:
            entries = [e for e in entries if e.index > self._snap.index]
            if not entries:
                return
        first = entries[0].index
        if first > self.last_index() + 1:
            raise RaftError(f"gap in log: appending {first} after {self.last_index()}")
        if first <= self.journal.last_index:
            self.journal.truncate_after(first - 1)
        self.journal.extend(entries)

    def sync(self) -> None:
        """Make every appended entry durable (before persisted messages are sent).

        ``journal.sync()``, not ``journal.wait()``: what ``wait`` promises depends on the
        journal's policy, and an acknowledgement must never promise less than the disk.
        With ``fsync="unsafe-no-fsync"`` the entries are only handed to the OS.
        """
        if self._unsafe_no_fsync:
            self.journal.wait(self.journal.last_index)
        else:
            self.journal.sync()

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Install a snapshot received from the leader: it replaces the whole log."""
        if snap.meta.index < self._snap.index:
            raise RaftError(f"snapshot {snap.meta.index} is older than the stored {self._snap.index}")
        meta, _body = decode_file("snapshot from the leader", snap.data)
        if meta.index != snap.meta.index:
            raise RaftError(f"snapshot file is at index {meta.index}, the message says {snap.meta.index}")
        self.snapshots.write_encoded(snap.data)
        self._snap = snap.meta
        self.journal.reset(snap.meta.index + 1)

    # A snapshot the host took of its state machine is stored in three steps, so that the
    # file (the slow part) can be written off the thread that drives the core: the term
    # is looked up and the snapshot published there, the file written anywhere between.
    def snapshot_term(self, index: int) -> int:
        if index <= self._snap.index:
            raise RaftError(f"snapshot {index} is not newer than {self._snap.index}")
        if index > self.last_index():
            raise UnavailableError(f"snapshot index {index} is past the last index {self.last_index()}")
        return self.term(index)

    def write_snapshot(self, meta: FileMeta, body: bytes, membership: Membership, term: int) -> None:
        """Write the file; it is not this storage's snapshot until :meth:`publish_snapshot`."""
        meta.term = term
        meta.extra = {**meta.extra, "membership": membership.to_wire()}
        self.snapshots.write(meta, body, prune=False)  # the published one may still be read

    def publish_snapshot(self, meta: FileMeta, membership: Membership) -> SnapshotMeta:
        if meta.index <= self._snap.index:
            raise RaftError(f"snapshot {meta.index} is not newer than {self._snap.index}")
        self._snap = SnapshotMeta(meta.index, meta.term, membership)
        self.snapshots.prune()
        return self._snap

    def compact(self) -> int:
        """Remove journal segments that every kept snapshot covers; returns how many."""
        kept = self.snapshots.indexes()
        return self.journal.compact(min(kept)) if kept else 0

    def close(self) -> None:
        # The journal is synced first (unless a write failed: then its durable index says
        # what is on disk), and the commit stored below is capped at it.
        self.journal.close()
        if self._capped(self.hard_state) != self._stored:
            self._store(self.hard_state)  # a fresher commit saves replay next time

"""Which epoch of a cluster a client, a command or a node takes part in.

``cluster recover`` (and ``grid recover``) moves a cluster into a new epoch; the nodes of
the old epoch are refused by the new one's peers (``rpc.auth``). Yet nodes of the old
epoch started again with their old data and config (a PC unreachable during the
recovery, back as a service) still elect a master of their own when enough of them
come back: a client that reaches them would get its commands acknowledged there, a
split brain the operator cannot see. Three things keep that from happening:

- the cluster directory names the epoch its clients want: ``cluster recover`` writes
  :data:`EPOCH_FILE` (cluster id and epoch) next to the node configs and keys. Every
  program that opens the directory (the CLI, the grid window, :class:`LocalCluster`), or a
  ``client.secret`` copied with that file beside it, sends the wanted id and epoch in its
  hello, and a node refuses a client that wants another cluster or a later epoch than
  its data's (:func:`client_mismatch`), naming itself, its epoch and the wanted one. A
  directory without the file (made before this release) wants nothing: nothing checked;
- a node that a peer of a later epoch of its own cluster dialled (proved with the peer
  key: the proof is checked before the refusal) knows for certain it was left out of a
  recover: it logs it, keeps it in its data (:data:`SUPERSEDED_FILE`: after a reboot
  while the new epoch is down it must not serve the old one again), reports
  ``superseded_by`` in its status, and refuses commands, queries and subscriptions from
  then on (:func:`superseded_refusal`), so that a client given no epoch (an older
  program) is not acknowledged there either. It keeps running its Raft loop (the core
  knows no epochs, and an old-epoch election that gets nothing acknowledged harms
  nothing) and its application's agent: the new epoch's master still pushes to the agent
  on that PC, and the agents are fenced by (epoch, term). A refusal that the node only
  *read* (its own dial refused by a node of a later epoch) proves nothing (no proof
  follows a refusal): it is only logged;
- ``prevalence status`` ranks the nodes by epoch before term: a node of an older epoch of
  the wanted cluster is shown as not a member of it, never as a second master; so do the
  grid window, a grid command's diagnosis, the client's leader watch, and the choice of
  the leader that takes a membership change or a backup.
"""
from __future__ import annotations

import logging
import os
import tomllib
from typing import Any, Callable

from prevalence._platform import NotRegularFile, read_small_file
from prevalence.fs import OS, write_file_durably
from replication.membership import cluster_id_problem
from rpc.config import ConfigError

log = logging.getLogger("rpc.auth")  # where the handshake's other refusals are said

__all__ = ["EPOCH_FILE", "Wanted", "write_directory_epoch", "directory_epoch", "secret_file_epoch",
           "check_wanted", "client_mismatch", "epoch_refusal", "superseded_refusal", "REBUILD", "current_epoch",
           "epoch_notes", "leader_first", "SUPERSEDED_FILE", "write_superseded", "read_superseded",
           "peer_proved_epoch", "refused_when_superseded"]

#: The file in a cluster directory naming the cluster id and epoch its clients want.
EPOCH_FILE = "cluster-epoch.toml"
#: What an operator does with a node of an older epoch (docs/operations.md).
REBUILD = "stop it and rebuild it (docs/operations.md, \"A majority of PCs replaced\")"

#: The file in a node's data directory naming the later epoch a peer proved (kept across
#: restarts: this data can never rejoin, and its PC may reboot while the new epoch is down).
SUPERSEDED_FILE = "superseded.toml"

#: (cluster id, epoch) a client wants; the id "" when only the epoch is known.
Wanted = tuple[str, int]


def write_directory_epoch(directory: str, cluster: str, epoch: int) -> str:
    """Name ``cluster`` at ``epoch`` as the one the clients of ``directory`` want; the
    file's path. Written durably (a crash leaves the old file or the new one)."""
    problem = cluster_id_problem(cluster, epoch)
    if problem:
        raise ConfigError(f"{directory}: {problem}")
    path = os.path.join(os.path.abspath(directory), EPOCH_FILE)
    text = ("# The cluster and epoch that the clients of this directory talk to: a node of\n"
            "# another cluster or an older epoch refuses them (written by `cluster recover`).\n"
            f"cluster = \"{cluster}\"\nepoch = {epoch}\n")
    write_file_durably(OS, path, [text.encode("utf-8")])
    return path


def directory_epoch(directory: str, name: str = EPOCH_FILE) -> Wanted | None:
    """The cluster id and epoch that ``directory`` names, None when it names none (a
    directory of an earlier release, or never recovered). A damaged file is refused
    (ConfigError naming it): guessing would let a client talk to the old epoch."""
    path = os.path.join(os.path.abspath(directory), name)
    try:
        data, _ = read_small_file(path, 4096)
    except FileNotFoundError:
        return None
    except NotRegularFile:
        raise ConfigError(f"{path}: not a regular file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    problem = cluster_id_problem(doc.get("cluster"), doc.get("epoch"))
    if problem:
        raise ConfigError(f"{path}: {problem} (write it again: cluster = \"ID\", epoch = N)")
    return doc["cluster"], doc["epoch"]


def write_superseded(data_dir: str, cluster: str, epoch: int) -> None:
    """Remember, in the node's data, that a peer proved ``cluster`` at ``epoch`` (durable:
    after a reboot the node must not take commands for the old epoch again)."""
    text = ("# A peer proved that this node's cluster was recovered into this epoch: this data was\n"
            "# left out, and the node takes no command (docs/operations.md, \"Nodes left in an old epoch\").\n"
            f"cluster = \"{cluster}\"\nepoch = {epoch}\n")
    write_file_durably(OS, os.path.join(data_dir, SUPERSEDED_FILE), [text.encode("utf-8")])


def read_superseded(data_dir: str) -> Wanted | None:
    """What :func:`write_superseded` wrote in ``data_dir``, None if nothing. A damaged file
    raises ConfigError: only a proof writes one, so the node (rpc.server) takes it for a
    proof of an epoch past its own rather than for none."""
    return directory_epoch(data_dir, SUPERSEDED_FILE)


def secret_file_epoch(secret_file: str | os.PathLike | bytes) -> Wanted | None:
    """What the directory of a key file copied from a cluster directory names (an
    operator's PC holds ``client.secret`` and, beside it, the directory's epoch file)."""
    path = os.fsdecode(secret_file)
    return directory_epoch(os.path.dirname(os.path.abspath(path)))


def check_wanted(cluster: object, epoch: object) -> Wanted | None:
    """``rpc.connect``'s ``cluster`` and ``epoch`` arguments as one wanted pair, checked:
    None when neither is given (nothing compared, as before this release)."""
    if cluster is None and epoch is None:
        return None
    from prevalence.errors import PrevalenceError

    if cluster is not None:
        problem = cluster_id_problem(cluster, 0 if epoch is None else epoch)
    else:
        problem = cluster_id_problem("x", epoch)
    if problem:
        raise PrevalenceError(f"rpc.connect: {problem}")
    return ("" if cluster is None else cluster), (0 if epoch is None else epoch)


def epoch_refusal(node: str, epoch: int, wanted: int) -> str:
    """The one line that a node of an older epoch is refused with (client side or its own);
    ``node`` "" where the line is already about that node."""
    named = f" ({node})" if node else ""
    return f"this node{named} belongs to epoch {epoch}, the cluster was recovered into epoch {wanted}: {REBUILD}"


def client_mismatch(node: str, ours: Wanted, wanted: Wanted) -> str | None:
    """Why a node whose data is ``ours`` must not serve a client that wants ``wanted``, or
    None. A later epoch than wanted serves (the client's directory predates a recover it
    did not see); a node whose data names no cluster yet is not compared."""
    if not ours[0]:
        return None
    if wanted[0] and wanted[0] != ours[0]:
        return (f"this node ({node}) is of cluster {ours[0]}, the client wants cluster {wanted[0]}: another "
                "cluster that shares the client key; check the addresses and the directory this client was given")
    if ours[1] < wanted[1]:
        return epoch_refusal(node, ours[1], wanted[1])
    return None


def peer_proved_epoch(key: object, node: str, peer: str, theirs: Wanted, ours: Wanted) -> None:
    """The handshake's hook when a peer whose proof matched ``key`` (the peer key, a
    ``rpc.auth.ClusterKey``) is refused for its cluster or epoch: a later epoch of this
    node's own cluster means this node was left out of a recover. Said once per epoch at
    ERROR, and kept on disk through the key's ``on_newer`` (the node's data)."""
    heard = getattr(key, "heard_newer", None)
    if heard is None or theirs[0] != ours[0] or not ours[0] or theirs[1] <= ours[1] or not heard(*theirs):
        return
    if key.on_newer is not None:  # type: ignore[attr-defined]
        try:
            key.on_newer(*theirs)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - kept in memory still; said, not fatal
            log.error("%s: could not keep epoch %d on disk: %s", node, theirs[1], exc)
    log.error("%s: %s proved that cluster %s was recovered into epoch %d; this node's data is of epoch %d: it "
              "takes no command, query or subscription from now on: %s", node, f"{peer!r:.40}", theirs[0], theirs[1],
              ours[1], REBUILD)


def refused_when_superseded(method: Callable[..., bytes], superseded: Callable[[], str | None],
                            refusal: Callable[[str], bytes]) -> Callable[..., bytes]:
    """``method`` (a client service's), answered ``refusal(why)`` at each call once
    ``superseded()`` says why (a client looks a method up once per connection, so the
    check cannot be at the lookup): nothing done on a left-behind node would reach the
    recovered cluster."""
    def call(*args: Any, **kwargs: Any) -> bytes:
        why = superseded()
        return refusal(why) if why else method(*args, **kwargs)
    return call


def superseded_refusal(node: str, epoch: int, newer: int) -> str:
    """What a node that a peer of a later epoch dialled answers commands with."""
    return f"{epoch_refusal(node, epoch, newer)}; it takes no command, query or subscription"


def current_epoch(rows: list[dict], wanted: Wanted | None) -> Wanted | None:
    """The cluster and epoch a status report's nodes are members of: the one the
    directory names, or else the cluster id most nodes report; at the newest epoch any
    node of that cluster reports (epochs only rise: an older one was left behind by a
    recover). None when no node names a cluster."""
    ids = [r["cluster"] for r in rows if r.get("cluster")]
    # a tie between two ids: the same one at every run (the smaller)
    cluster = wanted[0] if wanted and wanted[0] else max(sorted(set(ids)), key=ids.count) if ids else None
    if cluster is None:
        return None
    epochs = [r["epoch"] for r in rows if r.get("cluster") == cluster and type(r.get("epoch")) is int]
    return cluster, max(epochs + ([wanted[1]] if wanted else []), default=0)


def epoch_notes(rows: list[dict], wanted: Wanted | None) -> list[tuple[str, str]]:
    """A node and a note for each node that is not a member of the current epoch
    (:func:`current_epoch`), whose row is marked ``row["other_epoch"]`` (what the table
    shows instead of its role: it is no second master); and one for a directory whose
    epoch file is older than the nodes' epoch."""
    current = current_epoch(rows, wanted)
    if current is None:
        return []
    cluster, epoch = current
    notes = []
    for r in rows:
        theirs = r.get("cluster")
        if not theirs or (theirs, r.get("epoch")) == current and r.get("superseded_by") is None:
            continue
        if theirs != cluster:
            r["other_epoch"] = "another cluster"
            why = (f"cluster {theirs} epoch {r['epoch']}, the others {cluster} epoch {epoch}: another cluster that "
                   "shares the client key; check its data directory (docs/operations.md, \"Cluster identity\")")
        else:
            newer = max(epoch, r.get("superseded_by") or 0)
            r["other_epoch"] = f"not of epoch {newer}"
            why = f"not a member of epoch {newer}: {epoch_refusal('', r['epoch'], newer)}"
        notes.append((r["id"], why))
    if wanted and wanted[0] == cluster and wanted[1] < epoch:
        notes.append(("directory", f"its {EPOCH_FILE} names epoch {wanted[1]}, yet nodes of epoch {epoch} answer: "
                                   "a recover was made from another copy of this directory; copy that one's "
                                   f"{EPOCH_FILE} here"))
    return notes


def leader_first(rows: list[dict], directory: str) -> list[str]:
    """The ids to ask an administrative call of (a membership change, a backup): the
    leader first, then the others that answer, leaving out the nodes of another epoch or
    cluster than the directory's (:func:`epoch_notes`): the leader an old epoch elected
    among its own must not take the change."""
    epoch_notes(rows, directory_epoch(directory))
    rows = [r for r in rows if not r.get("other_epoch")]
    return [r["id"] for r in rows if r["role"] == "leader"] + [r["id"] for r in rows if r["reachable"]]

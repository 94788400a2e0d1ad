"""Membership administration of a cluster directory: the admin calls to its leader
(``prevalence cluster add|remove|promote|transfer``), adding a node's files, and a new
node's first start (``prevalence node --init``)."""
from __future__ import annotations

import os
import re
import shutil
from typing import Any

from prevalence.errors import PrevalenceError
from prevalence.text import one_line
from replication.errors import RaftError
from replication.journal_storage import HARD_STATE_FILE, IDENTITY_FILE, create_node_data, holds_node_data
from rpc.auth import AuthenticationFailed, ConnectFailed
from rpc.cluster import cluster_status, cluster_status_full, directory_key, next_free_port, node_config_paths
from rpc.config import (
    ConfigError, NodeConfig, check_data_path, format_address, load_config, render_config, tls_contexts,
)
from rpc.secret import KEY_FILES, load_secret
from rpc.status_report import unreachable_summary
from rpc.transport import STATUS_MAX_FRAME, NodeLink

def _cluster_of(statuses: list[dict]) -> tuple[str, int]:
    """The cluster id and epoch a joining node takes from the members that answer: the
    newest epoch's (a node left on an older one is refused by the others anyway)."""
    known = [(st.get("epoch", 0), st.get("cluster", "")) for st in statuses if st.get("cluster")]
    if not known:
        return "", 0
    epoch, cluster = max(known)
    return cluster, epoch


def _admin_call(cfg: NodeConfig, secret: bytes, method: str, *args: Any, timeout: float = 5.0) -> list:
    with NodeLink(cfg.address, secret, ident="admin", timeout=timeout, ssl_context=tls_contexts(cfg)[1],
                  role="admin") as link:
        return link.call(method, *args)


class MembershipNotChanged(ConfigError):
    """A maintenance call that certainly took no effect: refused, or no leader took it."""


def admin(directory: str, method: str, *args: Any, elect_wait: float = 5.0) -> Any:
    """Send a maintenance call, with the admin key, to the leader of the cluster
    configured in ``directory``. :class:`MembershipNotChanged` when it certainly took no
    effect; a plain ConfigError when it may still (not confirmed). While no node says it
    leads (an election under way) it asks again, up to ``elect_wait`` s."""
    import time

    configs = {c.id: c for c in (load_config(p) for p in node_config_paths(directory))}
    secret = directory_key(directory, "admin")
    deadline = time.monotonic() + elect_wait
    while True:
        try:
            return _admin_round(directory, configs, secret, method, args)
        except _NoLeader as exc:  # nothing changed: ask again once an election may have ended
            if time.monotonic() >= deadline:
                raise MembershipNotChanged(str(exc)) from None
            time.sleep(0.25)


class _NoLeader(ConfigError):
    """No node took the call as leader; nothing was changed."""


def _admin_round(directory: str, configs: dict[str, NodeConfig], secret: bytes, method: str, args: tuple) -> Any:
    """One round of :func:`admin`: the status, then the leader first, the others next."""
    from rpc.epochs import leader_first

    rows = cluster_status(directory)
    order = leader_first(rows, directory)  # never a leader that an old epoch elected (rpc.epochs)
    tried, silent = [], []
    for nid in order:
        if nid in tried or nid not in configs:  # a status may claim any id: only configured nodes are asked
            continue
        tried.append(nid)
        try:
            # the node waits up to 10 s for the change to commit; give it time to say so
            reply = _admin_call(configs[nid], secret, method, *args, timeout=15.0)
        except AuthenticationFailed:
            raise  # the key: every node would say the same
        except ConnectFailed as exc:  # not sent: the node died or hangs since the status; ask the next
            silent.append(f"{nid}: {one_line(str(exc), 200)}")
            continue
        except (OSError, EOFError, PrevalenceError) as exc:  # sent, never answered: it may have been applied
            raise ConfigError(f"{method} not confirmed by {nid}: {one_line(str(exc), 200) or type(exc).__name__}; "
                              f"it may still take effect: check with `prevalence status --cluster {directory}` "
                              "before acting on it") from None
        if reply[0] == "ok":
            return reply[1]
        if reply[0] == "not_leader":
            continue
        if reply[0] == "unavailable":
            raise ConfigError(f"{method} not confirmed by {nid}: {reply[-1]} (no quorum?); it may still take "
                              f"effect: check with `prevalence status --cluster {directory}` before acting on it")
        raise MembershipNotChanged(f"{method} refused by {nid}: {reply[-1]} (nothing was changed)")
    if not tried:  # the status round had no answer: why (a key refused, nothing listening...)
        why = "; ".join(unreachable_summary(rows).splitlines()) or "no node configured"
        raise _NoLeader(f"no leader accepted {method}: no node gave its status ({why}); nothing was changed")
    raise _NoLeader(f"no leader accepted {method} (asked {', '.join(tried)}"
                    f"{''.join(f'; {why}' for why in silent)}; nothing was changed)")


NEW_NODE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


def add_node(directory: str, node_id: str, address: str | None = None, *, voter: bool = False) -> str:
    """Write ``DIR/<id>.toml`` for a new node (join = true) and add it to the membership.

    Without ``voter`` it joins as a learner: it catches up without counting for the
    quorum, and ``promote`` makes it a voter once it has.
    """
    from rpc.config import parse_peer_address

    if not NEW_NODE_ID.fullmatch(node_id):  # it names DIR/<id>.toml and DIR/<id>/: nothing outside DIR
        raise ConfigError(f"--id: a new node's id is 1-64 letters, digits, '_', '.' or '-', not starting with "
                          f"'.' (it names its config and data in {directory}), got {node_id!r}")
    configs = [load_config(p) for p in node_config_paths(directory)]
    if any(c.id == node_id for c in configs):
        raise ConfigError(f"a node called {node_id!r} is already configured in {directory}")
    data = os.path.join(os.path.abspath(directory), node_id)
    if holds_node_data(data):
        raise ConfigError(f"{data} already holds node data: move it aside first, the new node starts "
                          "empty (docs/operations.md, \"Rebuilding a node\")")
    listen = parse_peer_address(address, "--address") if address else \
        ("127.0.0.1", next_free_port(max(c.address[1] for c in configs) + 1))
    taken = [c.id for c in configs if c.address == listen]
    if taken:  # its peers would dial that node as this one
        raise ConfigError(f"--address {format_address(listen)} is {taken[0]}'s address already; nothing was changed")
    template = configs[0]
    peers = {c.id: c.address for c in configs}  # where each is dialled
    peers[node_id] = listen
    here = os.path.abspath(directory)
    keys = {f"{role}_secret": os.path.relpath(getattr(template, f"{role}_secret"), here)
            if os.path.dirname(getattr(template, f"{role}_secret")) == here else getattr(template, f"{role}_secret")
            for role in KEY_FILES}  # the other nodes' key files, named as in their configs
    cfg = NodeConfig(path="", id=node_id, listen=listen, data=node_id, root=template.root,
                     peers=peers, fsync=template.fsync, imports=template.imports, **keys,
                     tick=template.tick, election_ticks=template.election_ticks,
                     heartbeat_ticks=template.heartbeat_ticks, snapshot_every=template.snapshot_every,
                     keep_snapshots=template.keep_snapshots, join=True, app=dict(template.app),
                     tls_cert=template.tls_cert, tls_key=template.tls_key, tls_ca=template.tls_ca,
                     rotation=dict(template.rotation))
    # the cluster's id first: with no member answering, nothing is written (the new node's
    # data would have no cluster id, and its files would be left for the next try to refuse)
    cluster, epoch = _cluster_of(cluster_status_full(directory))
    if not cluster:
        raise ConfigError(f"no node of {directory} answers: start the cluster before adding a node; "
                          "nothing was changed")
    path = os.path.join(directory, f"{node_id}.toml")
    existed = os.path.isdir(data)  # with no node data in it (checked above), maybe the operator's files
    try:
        with open(path, "x", encoding="utf-8") as f:
            f.write(render_config(cfg))
    except FileExistsError:  # another `add` of the same id, since the check above
        raise ConfigError(f"a node called {node_id!r} is already configured in {directory}") from None
    try:
        create_node_data(data, node_id, "join", cluster=cluster, epoch=epoch)  # its one start from empty data
    except BaseException:
        os.remove(path)
        _remove_new_data(data, existed)  # half of it would refuse every retry
        raise
    try:
        admin(directory, "change_membership", "add_voter" if voter else "add_learner", node_id,
              format_address(listen))
    except MembershipNotChanged as exc:  # not a member: its config and the data made above go
        os.remove(path)
        _remove_new_data(data, existed)
        raise MembershipNotChanged(f"{exc}; removed {node_id}.toml and its data") from None
    return path


def _remove_new_data(data: str, existed: bool) -> None:
    """Undo create_node_data: the directory if it made it, else only the files it writes."""
    if not existed:
        shutil.rmtree(data, ignore_errors=True)
        return
    for name in (IDENTITY_FILE, HARD_STATE_FILE):
        for path in (os.path.join(data, name), os.path.join(data, name + ".tmp")):
            try:
                os.remove(path)
            except FileNotFoundError:
                pass


def init_node(config_path: str, timeout: float = 1.0) -> str:
    """``prevalence node --config FILE --init``: create the data of a node that has never
    run, for a configuration written by hand (on its own PC). Returns what was done.

    Empty data starts only a founder of a cluster that has never run, or a node that
    joins as the learner ``cluster add`` made. The peers that answer are asked, so that a
    node that lost its data is not re-created in place of being rebuilt: a founder is
    refused once the cluster has run (a node added later joins as a learner), a joining
    node while the cluster counts it as a voter."""
    cfg = load_config(config_path)
    check_data_path(cfg)
    if holds_node_data(cfg.data):
        raise RaftError(f"{cfg.data} already holds node data; --init is for a node that has never run")
    answers = _peer_statuses(cfg, timeout)
    for peer, st in answers:
        if not cfg.join and st.get("term", 0) > 0:
            raise RaftError(
                f"{cfg.path}: {peer} answers in term {st['term']}: this cluster has run, so {cfg.id!r} cannot found "
                "it with empty data; a node that lost its data is rebuilt, a late one added, as a learner with "
                "cluster add (docs/operations.md, \"Rebuilding a node\")")
        if cfg.join and cfg.id in st.get("voters", ()):
            raise RaftError(
                f"{cfg.path}: {peer} counts {cfg.id!r} as a voter: a voter that lost its data is removed, then "
                "added back as a learner (docs/operations.md, \"Rebuilding a node\")")
    cluster, epoch = _cluster_of([st for _, st in answers]) if cfg.join else ("", 0)
    create_node_data(cfg.data, cfg.id, "join" if cfg.join else "new-cluster", cluster=cluster, epoch=epoch)
    role = ("joins the cluster as the member cluster add made" if cfg.join else
            "founds a new cluster with its [peers]; its first leader sets the cluster id")
    return f"{cfg.id}: data created in {cfg.data} (it {role}); start it with: prevalence node --config {cfg.path}"


def _peer_statuses(cfg: NodeConfig, timeout: float) -> list[tuple[str, dict]]:
    """(id, status) of the peers in ``cfg`` that answer within ``timeout``, asked at once."""
    from concurrent.futures import ThreadPoolExecutor

    secret = load_secret(cfg.client_secret)
    client_tls = tls_contexts(cfg)[1]

    def ask(item: tuple[str, tuple[str, int]]) -> tuple[str, dict] | None:
        peer, address = item
        try:
            with NodeLink(address, secret, ident="init", timeout=timeout, connect_timeout=timeout,
                          ssl_context=client_tls, max_frame=STATUS_MAX_FRAME, frame_timeout=timeout) as link:
                reply = link.call("status")
        except Exception:  # noqa: BLE001 - a peer that does not answer says nothing
            return None
        return (peer, reply[1]) if reply[0] == "ok" else None

    others = [(p, a) for p, a in cfg.peers.items() if p != cfg.id]
    if not others:
        return []
    with ThreadPoolExecutor(len(others)) as pool:
        return [r for r in pool.map(ask, others) if r is not None]

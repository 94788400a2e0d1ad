"""``grid replace`` and ``grid recover``: a replaced PC, or a grid that lost a majority,
brought back in one command on a grid directory (``grid up``'s, or one holding the node
configurations and the key files).

``grid replace ID --address HOST:PORT`` runs the documented rebuild (remove, wipe, add
as a learner, catch up, promote) step by step, saying each, and refuses at the start
when taking the node out would leave its voters without a majority: that grid needs
``grid recover`` instead. ``grid recover --survivor ID`` is ``prevalence cluster
recover`` (rpc/recovery.py) for the grid directory.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Callable

from prevalence._platform import DirectoryLock
from prevalence.errors import PrevalenceError

__all__ = ["ReplaceRefused", "replace_node", "add_parsers"]


class ReplaceRefused(PrevalenceError):
    """A replacement that would cost the quorum, or that cannot start safely."""


def _quorum_problem(rows: list[dict], node_id: str) -> str | None:
    """Why removing ``node_id`` now would leave the voters without a majority, or None."""
    status = [r for r in rows if r.get("voters")]
    if not status:
        return "no node of the grid answers: nothing can be changed (grid recover, if a majority is gone for good)"
    voters = set(max(status, key=lambda r: r.get("term", 0))["voters"])
    live = {r["id"] for r in rows}  # the nodes that answered
    left = voters - {node_id}
    up = len(left & live)
    if left and up < len(left) // 2 + 1:
        return (f"only {up} of the other {len(left)} voters ({', '.join(sorted(left))}) answer: removing {node_id} "
                "would leave no majority. Bring voters back first, or, if a majority is gone for good, grid recover "
                "--survivor ID (docs/operations.md)")
    return None


def replace_node(directory: str, node_id: str, address: str, *, timeout: float = 120.0,
                 progress: Callable[[str], None] = print) -> None:
    """Remove ``node_id``, wipe its data here, add it back as a learner at ``address``,
    start it (when its address is this machine's loopback), wait for its catch-up and
    promote it, if it was a voter. Refused before any change when it would cost the quorum
    or when its process still runs on this directory's data."""
    from rpc.admin import NEW_NODE_ID, add_node, admin
    from rpc.cluster import cluster_status_full, node_config_paths, start_node
    from rpc.config import ConfigError, load_config, parse_peer_address

    # every argument is checked before the first step: a step that fails after the removal
    # and the wipe leaves the node out of the grid, with no config for a second try to use
    configs = {c.id: c for c in map(load_config, node_config_paths(directory))}
    cfg = configs.get(node_id)
    if cfg is None:  # by id, not by file name: "n1/../n2" must not reach n2's files
        raise ReplaceRefused(f"{directory}: no node {node_id!r} configured there "
                             f"(nodes: {', '.join(sorted(configs))})")
    path = cfg.path
    if not NEW_NODE_ID.fullmatch(node_id):  # step 3 (cluster add) would refuse it after the removal and the wipe
        raise ReplaceRefused(f"grid replace {node_id!r} refused, nothing changed: cluster add takes a new node's id "
                             "only as 1-64 letters, digits, '_', '.' or '-' (it names its files): rebuild this node "
                             "by hand (docs/operations.md, \"Rebuilding a node\")")
    try:
        listen = parse_peer_address(address, "--address")  # as cluster add (step 3) takes it
    except ConfigError as exc:
        raise ReplaceRefused(f"grid replace {node_id} refused, nothing changed: {exc}") from None
    # where the others dial a node (its [peers] entry), as cluster add compares: it may listen on 0.0.0.0
    problem = _layout_problem(cfg, node_id, address)  # its agent moves there too (_move_in_layout)
    if problem:
        raise ReplaceRefused(f"grid replace {node_id} refused, nothing changed: --address {address!r} cannot go into "
                             f"the grid's layout: {problem}")
    other = next((c.id for c in configs.values() if c.id != node_id and c.address == listen), None)
    if other is not None:
        raise ReplaceRefused(f"grid replace {node_id} refused, nothing changed: --address {address} is where "
                             f"{other} listens")
    rows = cluster_status_full(directory)
    problem = _quorum_problem(rows, node_id)
    if problem:
        raise ReplaceRefused(f"grid replace {node_id} refused, nothing changed: {problem}")
    # as the newest configuration has it; a node it does not hold at all (left out by grid
    # recover, or removed by an earlier try) comes back a voter, as the grid's nodes are
    current = max((r for r in rows if r.get("voters")), key=lambda r: (r.get("epoch", 0), r.get("term", 0)),
                  default={})
    member = node_id in (*current.get("voters", ()), *current.get("learners", ()))
    was_voter = node_id in current.get("voters", ()) or not member
    if os.path.isdir(cfg.data):
        lock = DirectoryLock(cfg.data)
        try:
            lock.acquire()  # its process must be gone: refused with its pid otherwise
        except PrevalenceError as exc:
            raise ReplaceRefused(f"grid replace {node_id} refused, nothing changed: {exc}; stop it first") from None
        lock.release()
    stamp = time.strftime("%Y%m%dT%H%M%S")
    progress(f"1/5 removing {node_id} from the membership")
    if any(node_id in (*r.get("voters", ()), *r.get("learners", ())) for r in rows):
        admin(directory, "change_membership", "remove", node_id)
    progress(f"2/5 wiping: its data and config moved aside (*.replaced-{stamp})")
    if os.path.exists(cfg.data):
        os.replace(cfg.data, f"{cfg.data}.replaced-{stamp}")
    os.replace(path, f"{path}.replaced-{stamp}")
    progress(f"3/5 adding {node_id} at {address} as a learner")
    new_path = add_node(directory, node_id, address)
    new = load_config(new_path)
    if new.listen[0] in ("127.0.0.1", "localhost", "::1"):
        start_node(new_path, os.path.join(os.path.dirname(new_path), f"{node_id}.log"), cwd=os.getcwd())
        progress(f"    started here (log {node_id}.log)")
    else:
        progress(f"    start it on its PC: copy {new_path} there, prevalence node --config {node_id}.toml --init, "
                 "then start its service")
    _move_in_layout(cfg, node_id, address, progress)
    progress(f"4/5 waiting for {node_id} to catch up")
    deadline, shown = time.monotonic() + timeout, -1
    while True:
        st = {r["id"]: r for r in cluster_status_full(directory)}
        target = max((r.get("commit_index", 0) for r in st.values() if r.get("role") == "leader"), default=None)
        have = st.get(node_id, {}).get("applied_index")
        if target is not None and have is not None and have >= target:
            break
        if have is not None and have != shown and target:
            progress(f"    applied {have} of {target}")
            shown = have
        if time.monotonic() > deadline:
            raise ReplaceRefused(f"{node_id} did not catch up within {timeout:g} s; it stays a learner: look at its "
                                 f"log, then prevalence cluster promote --cluster {directory} --id {node_id}")
        time.sleep(0.2)
    if was_voter:
        progress(f"5/5 promoting {node_id} to voter" + ("" if member else " (the grid's configuration held it no "
                                                        "longer: left out by grid recover, or removed)"))
        admin(directory, "change_membership", "promote_learner", node_id)
    else:
        progress(f"5/5 {node_id} was a learner: it stays one")
    progress(f"{node_id} replaced; check: grid show --cluster {directory}")


def _layout_problem(cfg, node_id: str, address: str) -> str | None:
    """Why the layout could not take ``address`` for ``node_id`` (a grid node there), or
    None; an unreadable layout is :func:`_move_in_layout`'s to report, it stops nothing."""
    from dataclasses import replace

    from app.layout import LayoutError, read_layout
    from app.model import GridError, check_layout

    name = cfg.app.get("layout")
    if not isinstance(name, str):
        return None
    try:
        layout = read_layout(os.path.join(os.path.dirname(os.path.abspath(cfg.path)), name))
    except LayoutError:
        return None
    if not any(n.id == node_id for n in layout.nodes):
        return None
    try:
        check_layout(layout.rows, layout.columns,
                     [replace(n, address=address) if n.id == node_id else n for n in layout.nodes], strict=True)
    except GridError as exc:
        return str(exc)
    return None


def _move_in_layout(cfg, node_id: str, address: str, progress: Callable[[str], None]) -> None:
    """The layout names where each node's agent answers: the replacement's address is saved
    there too (the nodes' watchers apply the file), or the master keeps driving the dead one."""
    from dataclasses import replace

    from app.layout import LayoutError, read_layout, render_layout

    name = cfg.app.get("layout")
    if not isinstance(name, str):
        return
    path = os.path.join(os.path.dirname(os.path.abspath(cfg.path)), name)
    try:
        layout = read_layout(path)
    except LayoutError as exc:
        progress(f"    the layout was not updated ({exc}): give {node_id} the address {address} there")
        return
    nodes = [replace(n, address=address) if n.id == node_id else n for n in layout.nodes]
    if nodes == list(layout.nodes):
        return  # not a grid node, or at the same address
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(render_layout(layout.rows, layout.columns, nodes))
    os.replace(path + ".tmp", path)
    progress(f"    {name}: {node_id}'s agent is now at {address} (the grid applies the saved layout; "
             "copy it to the other PCs)")


def cmd_replace(args: argparse.Namespace) -> int:
    replace_node(args.cluster, args.id, args.address, timeout=args.timeout)
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from rpc.recovery import cmd_recover as recover

    return recover(args)


def _duration(text: str) -> float:
    """Seconds: a positive, finite number (nan, inf, 0 and negatives would never wait or never end)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):  # nan fails too
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive number of seconds")
    return value


def add_parsers(sub: argparse._SubParsersAction, default_dir: str) -> None:
    """``grid replace`` and ``grid recover``, registered on ``grid``."""
    r = sub.add_parser("replace", help="a replaced PC: remove, wipe, add as learner, catch up, promote; refused "
                       "when it would cost the quorum")
    r.add_argument("id", metavar="ID", help="the node whose PC was replaced")
    r.add_argument("--address", required=True, metavar="HOST:PORT", help="where the replacement listens")
    r.add_argument("--cluster", default=default_dir, metavar="DIR", help="the grid directory")
    r.add_argument("--timeout", type=_duration, default=120.0, metavar="S", help="catch-up limit (default 120 s)")
    r.set_defaults(func=cmd_replace)
    rc = sub.add_parser("recover", help="a grid that lost a majority for good: one stopped survivor becomes the "
                        "one voter of a new epoch (docs/operations.md)")
    rc.add_argument("--survivor", required=True, metavar="ID", help="the node whose data is kept (stopped)")
    rc.add_argument("--cluster", default=default_dir, metavar="DIR", help="the grid directory")
    rc.set_defaults(func=cmd_recover)

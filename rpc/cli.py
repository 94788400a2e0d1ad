"""The ``prevalence`` command: the engine's offline tools plus the cluster commands."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from prevalence import cli as engine_cli


def _cwd_importable() -> None:
    """The root factory's module, found from the current directory as `python -m` would
    (the console script alone does not put it on the path)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def cmd_node(args: argparse.Namespace) -> int:
    if args.init:
        from rpc.admin import init_node

        print(init_node(args.config))
        return 0
    from rpc.server import run

    _cwd_importable()
    return run(args.config)


def cmd_cluster_up(args: argparse.Namespace) -> int:
    from rpc.cluster import NoNodeConfig, node_config_paths
    from rpc.localcluster import cluster_up

    _cwd_importable()
    try:
        node_config_paths(args.data)
    except NoNodeConfig:  # a new cluster: its nodes must be able to import these, checked before anything is made
        from prevalence.factory import load_object

        for spec in [args.root, *(m + ":__name__" for m in args.imports or ())]:
            load_object(spec)
    return cluster_up(args.data, args.nodes, args.port, args.root, args.imports, app=args.app)


def cmd_status(args: argparse.Namespace) -> int:
    import tabulate as _tabulate
    from tabulate import tabulate

    _tabulate.MIN_PADDING = 0  # headers no wider than their words: the table fits 80 columns

    from rpc.cluster import cluster_status
    from rpc.epochs import directory_epoch, epoch_notes
    from rpc.status_report import FIELDS, describe_master, other_releases, unreachable_summary, why_no_status

    rows = cluster_status(args.cluster)
    # nodes of another epoch first: they are no members, whatever their role or term says
    notes = epoch_notes(rows, directory_epoch(args.cluster))
    members = [r for r in rows if not r.get("other_epoch")]
    # nodes that take no part
    notes = other_releases(rows) + notes + not_members(members) + stale_leaders(members)
    if args.json:
        # each node exactly the contract's fields (DESIGN.md); what the table says beside them
        noted: dict[str, str] = {}
        for node, note in notes:  # a node may have more than one (removed, and a stale leader)
            noted[node] = f"{noted[node]}; {note}" if node in noted else note
        conditions = {r["id"]: {"disk_full": r.get("disk_full") is True, "disk_stalled": r.get("disk_stalled", 0.0),
                                "snapshot_error": r.get("snapshot_error"), "apply_blocked": r.get("apply_blocked"),
                                "error": why_no_status(r), "note": noted.get(r["id"]),
                                "other_epoch": bool(r.get("other_epoch"))} for r in rows}
        print(json.dumps({"nodes": [{k: r[k] for k in FIELDS} for r in rows], "master": describe_master(members),
                          "conditions": conditions}, indent=2))
    else:
        here = os.path.abspath(args.cluster)
        shown = [{**r, "config": os.path.relpath(r["config"], here) if os.path.dirname(r["config"]) == here
                  else r["config"], "reachable": "yes" if r["reachable"] else "no",
                  "role": _role_shown(r, _newest_term(members))} for r in rows]
        headers = [{"commit_index": "commit", "applied_index": "applied"}.get(k, k) for k in FIELDS]
        print(tabulate([[r[k] if r[k] is not None else "-" for k in FIELDS] for r in shown], headers=headers))
        print(describe_master(members))  # who is master, or why there is none
        for node, note in notes:
            print(f"{node}: {note}")
        summary = unreachable_summary(rows)  # why, each cause once
        if summary:
            print(summary)
        for r in rows:
            if r.get("snapshot_error"):  # not fatal, but its journal grows until one succeeds
                print(f"{r['id']}: snapshots failing: {r['snapshot_error']}")
            if r.get("apply_blocked"):  # a rolling upgrade under way: it stores and votes, applies nothing
                print(f"{r['id']}: cannot apply {r['apply_blocked']['reason']}: upgrade this node")
    return 0 if any(r["reachable"] for r in rows) else 1


def _role_shown(row: dict, newest: int | None = None) -> str | None:
    """The role, with what is wrong with the node although it serves (``newest``: the
    newest term that answers; a leader of an older one is stale). A node of another
    epoch or cluster has no role in this one (``rpc.epochs``)."""
    if row.get("other_epoch"):
        return row["other_epoch"]
    stale = row["role"] == "leader" and type(row["term"]) is int and newest is not None and row["term"] < newest
    stalled = row.get("disk_stalled") or 0.0
    notes = [note for note, on in (("stale", stale), ("disk full", row.get("disk_full")),
                                   (f"disk stalled {stalled:.0f} s", stalled),
                                   ("snapshots failing", row.get("snapshot_error")),
                                   ("cannot apply", row.get("apply_blocked"))) if on]
    return ", ".join([row["role"], *notes]) if notes and row["role"] is not None else row["role"]


def wait_for_leader(directory: str, node_id: str, timeout: float | None = None) -> int:
    """The term in which ``node_id`` leads, once it does; ConfigError naming who leads
    instead when it does not within ``timeout`` (default: a few of its election
    timeouts). A leader only starts a transfer: it lapses when the target cannot take
    over (down, hung, behind), and the old leader keeps leading."""
    import time

    from rpc.cluster import cluster_status, load_config, node_config_paths
    from rpc.config import ConfigError

    if timeout is None:
        timeouts = [c.tick * c.election_ticks for c in map(load_config, node_config_paths(directory))]
        timeout = max([3.0] + [4 * t for t in timeouts])
    deadline = time.monotonic() + timeout
    while True:
        rows = cluster_status(directory, timeout=1.0)
        mine = [r for r in rows if r["id"] == node_id and r["reachable"]]
        if mine and mine[0]["role"] == "leader":
            return mine[0]["term"]
        if time.monotonic() >= deadline:
            leaders = [f"{r['id']} (term {r['term']})" for r in rows if r["role"] == "leader"]
            raise ConfigError(f"{node_id} did not take over within {timeout:g} s "
                              f"({'it does not answer' if not mine else 'it is ' + str(mine[0]['role'])}); "
                              f"{'the leader is ' + ', '.join(leaders) if leaders else 'no leader answers'}: "
                              f"see `prevalence status --cluster {directory}`")
        time.sleep(0.1)


def _newest_term(rows: list[dict]) -> int | None:
    terms = [r["term"] for r in rows if r["reachable"] and type(r["term"]) is int]
    return max(terms) if terms else None


def stale_leaders(rows: list[dict]) -> list[tuple[str, str]]:
    """A node and a note for each node that says it leads in a term older than another
    node's: a paused leader resumed, or one cut off, for the moment until it hears of the
    newer term. It is no master: the table must not show two."""
    newest = _newest_term(rows)
    current = sorted(r["id"] for r in rows if r["reachable"] and r["role"] == "leader" and r["term"] == newest)
    who = f"{', '.join(current)} leads it" if current else "no leader answers in it yet"
    return [(r["id"], f"says it leads, in term {r['term']}; term {newest} is newer ({who}): it is no master and steps "
                      "down once it hears of that term") for r in rows
            if r["reachable"] and r["role"] == "leader" and type(r["term"]) is int and r["term"] < newest]


def not_members(rows: list[dict]) -> list[tuple[str, str]]:
    """A node and a note for each node of the directory that the leader's membership
    leaves out (removed, or an add that did not finish): one that answers only waits,
    and should be stopped; one that does not is no member down."""
    leaders = [r for r in rows if r["reachable"] and r["role"] == "leader" and r["term"] == _newest_term(rows)]
    if len(leaders) != 1:
        return []
    members = set(leaders[0]["voters"]) | set(leaders[0].get("learners", ()))
    if not members:  # a leader that names no membership tells nothing about the others
        return []
    # one that does not answer either is no member down: its config was left behind
    return [(r["id"], f"not a member of {leaders[0]['id']}'s cluster (removed, or its add did not finish): "
                      + ("stop its process and move its config and data aside" if r["reachable"] else
                         "it does not answer either; move its config and data aside")) for r in rows
            if r["id"] not in members and r.get("cluster", "") in ("", leaders[0].get("cluster"))]


def cmd_cluster_admin(args: argparse.Namespace) -> int:
    from rpc.admin import add_node, admin

    if args.action == "add":
        path = add_node(args.cluster, args.id, args.address, voter=args.voter)
        print(f"{args.id} added as a {'voter' if args.voter else 'learner'}; start it with: prevalence node --config {path}")
        if not args.voter:
            print(f"once it has caught up: prevalence cluster promote --cluster {args.cluster} --id {args.id}")
    elif args.action == "promote":
        admin(args.cluster, "change_membership", "promote_learner", args.id)
        print(f"{args.id} is now a voter")
    elif args.action == "remove":
        admin(args.cluster, "change_membership", "remove", args.id)
        print(f"{args.id} removed from the membership; stop its process")
    elif args.action == "sessions":
        from prevalence.sessions import SetSessionExpiry
        from rpc.config import ConfigError
        from rpc.localcluster import LocalCluster

        tx = SetSessionExpiry(args.idle_expiry)
        try:
            tx.check(None)  # the nodes check it too; this names the problem without a round trip
        except ValueError as exc:
            raise ConfigError(f"--idle-expiry: {exc}") from None
        with LocalCluster.open(args.cluster).client(admin=True) as client:  # administration: the admin key
            client.execute(tx)
        print(f"client sessions now expire after {args.idle_expiry} s without a command (journaled time)")
    elif args.action == "transfer":
        admin(args.cluster, "transfer_leadership", args.to)  # starts it; it lapses if the node cannot take over
        term = wait_for_leader(args.cluster, args.to)
        print(f"leadership handed to {args.to} (term {term})")
    elif args.action == "keys":
        from rpc.cluster import migrate_keys

        done = migrate_keys(args.cluster)
        print("\n".join(done) if done else f"{args.cluster}: every key file is there; nothing to do")
    return 0


CLUSTER_HELP = "the cluster's directory: its node configs and key files (as `cluster up` wrote them)"


def build_parser() -> argparse.ArgumentParser:
    p = engine_cli.build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    n = sub.add_parser("node", help="run one cluster node")
    n.add_argument("--config", required=True, metavar="FILE", help="the node's TOML configuration")
    n.add_argument("--init", action="store_true",
                   help="create the data of a node that has never run (a hand-written config), then exit")
    n.set_defaults(func=cmd_node)
    c = sub.add_parser("cluster", help="a local cluster on this machine").add_subparsers(dest="action", required=True)
    up = c.add_parser("up", help="start N nodes on 127.0.0.1 in the foreground (an existing DIR: as configured "
                      "there); Ctrl-C stops them")
    up.add_argument("--nodes", type=int, default=3, help="how many nodes, n1.. (default 3)")
    up.add_argument("--data", required=True, metavar="DIR", help="configs, key files and data go here")
    up.add_argument("--port", type=int, default=7100, metavar="BASE", help="first port (default 7100)")
    up.add_argument("--root", required=True, metavar="MODULE:FACTORY",
                    help="the function or class that makes the empty root object")
    up.add_argument("--import", dest="imports", action="append", metavar="MODULE",
                    help="also import MODULE in every node (more transaction classes); repeatable")
    up.add_argument("--app", metavar="MODULE[:FUNCTION]",
                    help="host the application plugin MODULE:FUNCTION (default function: attach) in every node, "
                         "as the config's [app] plugin")
    up.set_defaults(func=cmd_cluster_up)
    add = c.add_parser("add", help="add a node to a running cluster (as a learner unless --voter)")
    add.add_argument("--cluster", required=True, metavar="DIR", help=CLUSTER_HELP)
    add.add_argument("--id", required=True, help="the new node's id (its config is DIR/ID.toml)")
    add.add_argument("--address", metavar="HOST:PORT", help="default: 127.0.0.1, the next free port after the others")
    add.add_argument("--voter", action="store_true", help="count for the quorum at once")
    add.set_defaults(func=cmd_cluster_admin)
    for name, text in (("promote", "make a learner a voter"), ("remove", "remove a node from the membership")):
        a = c.add_parser(name, help=text)
        a.add_argument("--cluster", required=True, metavar="DIR", help=CLUSTER_HELP)
        a.add_argument("--id", required=True, help="the node's id")
        a.set_defaults(func=cmd_cluster_admin)
    se = c.add_parser("sessions", help="how long an idle client session keeps its exactly-once guarantee")
    se.add_argument("--cluster", required=True, metavar="DIR", help=CLUSTER_HELP)
    se.add_argument("--idle-expiry", required=True, type=int, metavar="SECONDS",
                    help="60 s to 366 days (default 24 h); a replicated setting")
    se.set_defaults(func=cmd_cluster_admin)
    tr = c.add_parser("transfer", help="hand leadership to another voter")
    tr.add_argument("--cluster", required=True, metavar="DIR", help=CLUSTER_HELP)
    tr.add_argument("--to", required=True, metavar="ID", help="the voter to lead next")
    tr.set_defaults(func=cmd_cluster_admin)
    ks = c.add_parser("keys", help="make the missing key files (peer, client, admin) in DIR and move its node "
                      "configs off the one shared cluster.secret; run with the nodes stopped")
    ks.add_argument("--cluster", required=True, metavar="DIR", help=CLUSTER_HELP)
    ks.set_defaults(func=cmd_cluster_admin)
    from rpc.recovery import add_recover_parser  # disaster recovery: rpc/recovery.py

    add_recover_parser(c)
    s = sub.add_parser("status", help="role, term and indexes of every node of a cluster directory")
    s.add_argument("--cluster", required=True, metavar="DIR", help=CLUSTER_HELP)
    s.add_argument("--json", action="store_true", help="an object whose nodes list holds every field")
    s.set_defaults(func=cmd_status)
    from rpc.backup import add_backup_parsers  # backup, backup verify, restore: rpc/backup.py

    add_backup_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from prevalence import interrupt

    try:
        with interrupt.guarded():  # Ctrl-C ends the command even if Python loses the exception
            args = build_parser().parse_args(argv)
            return engine_cli.run(args, configure_logging=args.command != "node")  # a node sets up its own
    except KeyboardInterrupt:  # Ctrl-C before a command set its own handler (a node still starting)
        return interrupt.say_interrupted()


if __name__ == "__main__":
    sys.exit(main())

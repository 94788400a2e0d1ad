"""The ``prevalence`` command: the engine's offline tools plus the cluster commands."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Sequence

from prevalence import cli as engine_cli
from prevalence.errors import PrevalenceError


def cmd_node(args: argparse.Namespace) -> int:
    from rpc.server import run

    return run(args.config)


def cmd_cluster_up(args: argparse.Namespace) -> int:
    from rpc.cluster import cluster_up

    if os.getcwd() not in sys.path:  # the root factory's module, as `python -m` would find it
        sys.path.insert(0, os.getcwd())
    return cluster_up(args.data, args.nodes, args.port, args.root, args.imports)


def cmd_status(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from rpc.cluster import FIELDS, cluster_status

    rows = cluster_status(args.cluster)
    if args.json:
        print(json.dumps({"nodes": [{k: r[k] for k in FIELDS} for r in rows]}, indent=2))
    else:
        print(tabulate([[r[k] if r[k] is not None else "-" for k in FIELDS] for r in rows], headers=FIELDS))
    return 0 if any(r["reachable"] for r in rows) else 1


def build_parser() -> argparse.ArgumentParser:
    p = engine_cli.build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    n = sub.add_parser("node", help="run one cluster node")
    n.add_argument("--config", required=True, metavar="FILE", help="the node's TOML configuration")
    n.set_defaults(func=cmd_node)
    c = sub.add_parser("cluster", help="a local cluster on this machine").add_subparsers(dest="action", required=True)
    up = c.add_parser("up", help="start N nodes on 127.0.0.1 in the foreground; Ctrl-C stops them")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--data", required=True, metavar="DIR", help="configs, secret and data go here")
    up.add_argument("--port", type=int, default=7100, metavar="BASE", help="first port (default 7100)")
    up.add_argument("--root", required=True, metavar="MODULE:FACTORY")
    up.add_argument("--import", dest="imports", action="append", metavar="MODULE")
    up.set_defaults(func=cmd_cluster_up)
    s = sub.add_parser("status", help="role, term and indexes of every node of a cluster directory")
    s.add_argument("--cluster", required=True, metavar="DIR")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in ("node",):
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except PrevalenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())

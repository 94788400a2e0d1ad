"""The ``grid`` command: run a local grid, show it, command it, and the failover demo."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from prevalence.errors import PrevalenceError

DEFAULT_DIR = os.environ.get("GRID_CLUSTER", "grid-data")


def named(cluster: str, source: str | None = None) -> str:
    """``cluster`` and where it came from, for an error: --cluster, $GRID_CLUSTER or the default."""
    if source == "$GRID_CLUSTER":
        return f"{cluster} (from $GRID_CLUSTER; --cluster overrides it)"
    if source == "default":
        return f"{cluster} (the default: give --cluster or set $GRID_CLUSTER)"
    return f"{cluster} (from --cluster; $GRID_CLUSTER sets the default)"


def open_client(cluster: str, secret_file: str | None = None, timeout: float = 10.0, source: str | None = None):
    """A client of the grid: ``cluster`` is a local grid directory or HOST:PORT,HOST:PORT..."""
    from rpc.client import ClusterClient

    addresses, secret = cluster_addresses(cluster, secret_file, source)
    return ClusterClient(addresses, secret, timeout=timeout, **cluster_epoch(cluster, secret_file))


def cluster_epoch(cluster: str, secret_file: str | None = None) -> dict:
    """``cluster=`` and ``epoch=`` for the client, as the grid directory names them (or the
    directory of the ``--secret-file`` given with addresses): a node left in an older
    epoch by ``grid recover`` then refuses the client rather than take its commands."""
    from rpc.epochs import directory_epoch, secret_file_epoch

    wanted = directory_epoch(cluster) if os.path.isdir(cluster) else \
        secret_file_epoch(secret_file) if secret_file else None
    return {} if wanted is None else {"cluster": wanted[0], "epoch": wanted[1]}


def _client(args: argparse.Namespace):
    """A client of the grid the command names, with its ``--timeout``."""
    return open_client(args.cluster, args.secret_file, timeout=args.timeout or 10.0, source=args.cluster_from)


def cluster_addresses(cluster: str, secret_file: str | None = None,
                      source: str | None = None) -> tuple[list[str], bytes]:
    from rpc.config import ConfigError
    from rpc.localcluster import LocalCluster
    from rpc.secret import load_secret

    if os.path.isdir(cluster):
        try:
            local = LocalCluster.open(cluster)
        except ConfigError as exc:
            raise ConfigError(f"{named(cluster, source)} is not a grid directory: {exc}") from None
        addresses = list(local.addresses.values())
        secret = load_secret(secret_file) if secret_file else local.secret
    else:
        addresses = [a.strip() for a in cluster.split(",") if a.strip()]
        if not any(":" in a and a.rpartition(":")[2].isdigit() for a in addresses):
            raise ConfigError(f"no grid directory {named(cluster, source)}: name a directory made by `grid up`, "
                              "or HOST:PORT,... with --secret-file")
        if not secret_file:
            raise ConfigError(f"{cluster!r} is not a grid directory; give the addresses' --secret-file "
                              "(their client.secret), or a directory made by `grid up`")
        secret = load_secret(secret_file)
    return addresses, secret


def cmd_up(args: argparse.Namespace) -> int:
    from prevalence._platform import DirectoryLock
    from prevalence.errors import LockedError
    from rpc.config import ConfigError

    os.makedirs(args.data, exist_ok=True)
    run_lock = DirectoryLock(args.data)  # held while this grid up runs: two at once would both start every node
    try:
        run_lock.acquire()
    except LockedError:
        raise ConfigError(f"{os.path.abspath(args.data)}: the grid is already running (grid up pid "
                          f"{run_lock.holder() or 'unknown'}); stop it first (Ctrl-C where it was started)") from None
    try:
        return _up(args)
    finally:
        run_lock.release()


def _up(args: argparse.Namespace) -> int:
    """grid up, holding the directory's lock."""
    from app.local import PLUGIN, LocalGrid, report_layout, write_grid
    from rpc.cluster import node_config_paths, refuse_if_running, stop_on_signals
    from rpc.config import ConfigError, load_config

    try:
        paths = node_config_paths(args.data)
    except PrevalenceError:
        paths = []
    if paths:
        configs = [load_config(p) for p in paths]
        alien = next((c for c in configs if c.app.get("plugin") != PLUGIN), None)
        if alien is not None:  # started, it would be a cluster that refuses every grid command
            raise ConfigError(f"{os.path.abspath(args.data)} holds a cluster that is not a grid ({alien.path} runs "
                              f"{alien.root} without [app] plugin = \"{PLUGIN}\"): give grid up an empty or new "
                              "directory, or run that cluster with prevalence cluster up")
        refuse_if_running(configs, "grid", args.data)
        print(f"starting the grid already configured in {os.path.abspath(args.data)}", flush=True)
    else:
        write_grid(args.data, args.rows, args.columns, args.port)
    grid = LocalGrid.open(args.data)
    stop = stop_on_signals()  # from the first node started, Ctrl-C and SIGTERM stop them all
    held = [nid for nid in grid.configs if grid.held_back(nid)]
    for nid in held:
        print(grid.held_back(nid), flush=True)
    grid.start()
    running = [a for nid, a in grid.addresses.items() if nid not in held]
    print(f"{len(running)} node{'s' if len(running) != 1 else ''} on {_span(running)}"
          + (f" ({len(held)} held back: {', '.join(held)})" if held else "") + "\n"
          f"try: grid show --cluster {args.data}    (Ctrl-C stops the grid)", flush=True)
    stop_reporting = report_layout(grid, lambda line: print(line, flush=True))
    try:
        return grid.supervise(None if args.no_restart else args.restart_after, name="grid", stop=stop)
    finally:
        stop_reporting()
        for line in grid.stop_strays():  # e.g. a node grid replace started: the grid stops whole
            print(line, flush=True)


def _span(addresses) -> str:
    """127.0.0.1:7100..7108 for consecutive ports of one host, else the list."""
    addresses = list(addresses)
    if len(addresses) < 2:
        return ", ".join(addresses) or "no address"
    hosts_ports = [a.rpartition(":") for a in addresses]
    ports = sorted(int(p) for _, _, p in hosts_ports)
    if len({h for h, _, _ in hosts_ports}) == 1 and ports == list(range(ports[0], ports[0] + len(ports))):
        return f"{hosts_ports[0][0]}:{ports[0]}..{ports[-1]}"
    return ", ".join(addresses)


def cmd_show(args: argparse.Namespace) -> int:
    from app.model import GridView
    from app.view import render, with_cluster

    with _client(args) as client:
        view = client.query(GridView(), args.consistency)
        shown = with_cluster(view, client.status())
    print(json.dumps(shown, indent=2) if args.json else render(shown))
    return 0


def _execute(args: argparse.Namespace, tx) -> object:
    with _client(args) as client:
        return client.execute(tx)


def cmd_set(args: argparse.Namespace) -> int:
    from app.model import SetSettings
    from app.settings import parse_assignments

    targets = [i for i in args.items if "=" not in i]
    settings = parse_assignments([i for i in args.items if "=" in i])
    changed = _execute(args, SetSettings(tuple(targets), settings))
    print(f"set on {', '.join(changed)}; the master pushes it to their agents")
    return 0


def cmd_preset(args: argparse.Namespace) -> int:
    from app.model import ApplyPreset, DefinePreset, DeletePreset, GridView, check_name
    from app.settings import as_text, parse_assignments

    if args.action == "define":
        check_name(args.name, "preset name")  # new names whole and in ASCII
        _execute(args, DefinePreset(args.name, parse_assignments(args.settings)))
        print(f"preset {args.name} defined")
    elif args.action == "apply":
        changed = _execute(args, ApplyPreset(args.name, tuple(args.targets)))
        print(f"preset {args.name} applied to {', '.join(changed)}")
    elif args.action == "delete":
        _execute(args, DeletePreset(args.name))
        print(f"preset {args.name} deleted")
    else:
        with _client(args) as client:
            presets = client.query(GridView())["presets"]
        for name, values in presets.items():
            print(f"{name}: {as_text(values)}")
        if not presets:
            print("no presets defined")
    return 0


def cmd_layout(args: argparse.Namespace) -> int:
    from app.layout import read_layout
    from app.model import LayoutUnchanged

    layout = read_layout(args.file)
    if args.action == "check":
        print(f"{args.file}: valid, {layout.rows}x{layout.columns} grid with {len(layout.nodes)} nodes")
        return 0
    try:
        result = _execute(args, layout)
    except LayoutUnchanged:
        print(f"{args.file}: already applied")
        return 0
    print(f"applied: added {result['added'] or 'none'}, removed {result['removed'] or 'none'}, "
          f"changed {result['changed'] or 'none'}")
    return 0


def cmd_kill_master(args: argparse.Namespace) -> int:
    from prevalence._platform import kill_hard
    from rpc.config import ConfigError

    from app.model import GridView

    with _client(args) as client:
        client.query(GridView(), "leader")  # the client now talks to the master
        st = client.status()
    if st.get("role") != "leader":
        raise ConfigError(f"no master found (asked {st.get('id')}, role {st.get('role')})")
    if not st["address"].startswith(("127.", "localhost", "[::1]")):
        raise ConfigError(f"the master {st['id']} runs at {st['address']}, not on this machine")
    kill_hard(st["pid"])
    print(f"killed the master {st['id']} (pid {st['pid']}, {st['address']}); the others elect a new one")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from app.demo import run_demo

    return run_demo(rows=args.rows, columns=args.columns, keep_running=args.keep_running, data=args.data)


def cmd_ui(args: argparse.Namespace) -> int:
    from rpc.client import ClusterClient
    from rpc.config import ConfigError

    try:
        from app.ui.window import run
    except ImportError as exc:  # some Linux Pythons ship Tk separately
        raise ConfigError(f"the window needs Tk, which this Python lacks ({exc}); on Debian: apt install python3-tk")

    addresses, secret = cluster_addresses(args.cluster, args.secret_file, args.cluster_from)
    return run(ClusterClient(addresses, secret, timeout=args.timeout or 30.0,
                             **cluster_epoch(args.cluster, args.secret_file)), secret)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.1 <= value <= 3600:  # nan fails too
        raise argparse.ArgumentTypeError(f"{text!r}: must be seconds from 0.1 to 3600")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="grid", description="The grid of node PCs and its replicated master.")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the client does")
    sub = p.add_subparsers(dest="command", required=True)

    def cluster_args(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--cluster", default=None, metavar="DIR|ADDRESSES",
                        help=f"a grid directory (from `grid up`) or HOST:PORT,... (default {DEFAULT_DIR}, or $GRID_CLUSTER)")
        sp.add_argument("--secret-file", metavar="FILE", help="the client key (default: DIR/client.secret)")
        sp.add_argument("--timeout", type=_seconds, metavar="S",
                        help="give up when no master answers within S seconds (default 10; the window's 30)")
        return sp

    demo = sub.add_parser("demo", help="start a local 3x3 grid, kill its master, show it recover, clean up")
    demo.add_argument("--keep-running", action="store_true", help="leave the grid up at the end (Ctrl-C stops it)")
    demo.add_argument("--rows", type=int, default=3, help="rows of the grid (default 3)")
    demo.add_argument("--columns", type=int, default=3, help="columns of the grid (default 3)")
    demo.add_argument("--data", metavar="DIR", help="where to put the grid (default: a temporary directory)")
    demo.set_defaults(func=cmd_demo)

    up = sub.add_parser("up", help="run a local grid on 127.0.0.1 in the foreground (Ctrl-C stops it)")
    up.add_argument("--data", default=DEFAULT_DIR, metavar="DIR", help=f"configs, key files, layout, data (default {DEFAULT_DIR})")
    up.add_argument("--rows", type=int, default=3, help="rows of a new grid (default 3)")
    up.add_argument("--columns", type=int, default=3, help="columns of a new grid (default 3)")
    up.add_argument("--port", type=int, metavar="BASE", help="first port (default: a free block)")
    up.add_argument("--restart-after", type=float, default=3.0, metavar="S",
                    help="restart a node that dies after S seconds, as its PC would reboot (default 3)")
    up.add_argument("--no-restart", action="store_true", help="leave dead nodes dead")
    up.set_defaults(func=cmd_up)

    show = cluster_args(sub.add_parser("show", help="the grid: desired vs actual settings, health, master"))
    show.add_argument("--json", action="store_true", help="the whole view as JSON")
    show.add_argument("--consistency", default="linearizable", choices=("linearizable", "leader", "local"),
                      help="linearizable (default): confirmed by the master; local: the node asked, maybe behind")
    show.set_defaults(func=cmd_show)

    st = cluster_args(sub.add_parser("set", help="set settings on nodes: grid set n1 row:2 volume=40 power=on"))
    st.add_argument("items", nargs="+", metavar="NODE|all|row:N|column:N|key=value",
                    help="the nodes, then the settings")
    st.set_defaults(func=cmd_set)

    pr = sub.add_parser("preset", help="named sets of settings").add_subparsers(dest="action", required=True)
    d = cluster_args(pr.add_parser("define", help="grid preset define NAME key=value..."))
    d.add_argument("name", help="the preset's name")
    d.add_argument("settings", nargs="+", metavar="key=value", help="the settings it sets")
    a = cluster_args(pr.add_parser("apply", help="grid preset apply NAME NODE|all|row:N|column:N..."))
    a.add_argument("name", help="a defined preset")
    a.add_argument("targets", nargs="+", metavar="NODE|all|row:N|column:N", help="the nodes to apply it to")
    dl = cluster_args(pr.add_parser("delete", help="grid preset delete NAME"))
    dl.add_argument("name", help="a defined preset")
    ls = cluster_args(pr.add_parser("list", help="the presets and their settings"))
    for sp in (d, a, dl, ls):
        sp.set_defaults(func=cmd_preset)

    lay = sub.add_parser("layout", help="check or apply a layout file").add_subparsers(dest="action", required=True)
    lc = lay.add_parser("check", help="say whether FILE is a valid layout")
    la = cluster_args(lay.add_parser("apply", help="apply FILE now (edits to a node's own file apply by themselves)"))
    for sp in (lc, la):
        sp.add_argument("file", metavar="FILE", help="a layout TOML file (as grid up writes layout.toml)")
        sp.set_defaults(func=cmd_layout)

    ui = cluster_args(sub.add_parser("ui", help="the operator's window: tiles, commands, rides through failover"))
    ui.set_defaults(func=cmd_ui)

    km = cluster_args(sub.add_parser("kill-master", help="SIGKILL the master's process (local grids, for demos)"))
    km.set_defaults(func=cmd_kill_master)
    from app.replace import add_parsers  # grid replace, grid recover: app/replace.py

    add_parsers(sub, DEFAULT_DIR)
    return p


def _naming_the_cluster(func):
    """``func``, whose "no master answered" says which cluster, what the nodes say about
    their master (or why there is none), and each cause once."""
    def call(args: argparse.Namespace) -> int:
        from rpc.auth import AuthenticationFailed
        from rpc.client import ClusterUnavailable
        from rpc.config import ConfigError
        from rpc.status_report import collapse_causes
        from prevalence.errors import OutcomeUnknown

        try:
            return func(args)
        except OutcomeUnknown as exc:  # sent, then the answer was lost: never "no master answered"
            what = str(exc).partition("; tried ")[0].partition("; the command was sent")[0]
            raise ConfigError(f"the command was sent to {named(args.cluster, args.cluster_from)} but its answer was "
                              f"lost ({what}): it may have been applied; look with grid show before sending it "
                              "again") from None
        except ClusterUnavailable as exc:
            what, _, tried = str(exc).partition("; tried ")
            said = _why_no_master(args)
            why = f"the nodes say: {said}" if said else collapse_causes(tried) if tried else what
            hint = ("; `grid show --consistency local` shows a node's copy, which may be behind"
                    if func is cmd_show and args.consistency != "local" else "")
            raise ConfigError(f"no master of {named(args.cluster, args.cluster_from)} answered; {why}{hint}") from None
        except AuthenticationFailed as exc:  # every node refused the key, or this release: no retry helps
            raise ConfigError(f"the nodes of {named(args.cluster, args.cluster_from)} refused this program: "
                              f"{collapse_causes(str(exc))}") from None
    return call


def _why_no_master(args: argparse.Namespace) -> str:
    """What the nodes of ``args.cluster`` say about their master, asked at once (about
    1.5 s at most), and why the others do not answer; "" if that cannot be asked."""
    from rpc.cluster import cluster_status
    from rpc.config import parse_address
    from rpc.status_report import ask_status, describe_master, status_row, unreachable_summary

    try:
        secret_file = getattr(args, "secret_file", None)  # grid replace and recover have none
        if os.path.isdir(args.cluster) and not secret_file:
            rows = cluster_status(args.cluster)
        else:
            addresses, secret = cluster_addresses(args.cluster, secret_file, args.cluster_from)
            targets = [(parse_address(a, "address"), None) for a in addresses]
            rows = [status_row(a, a, None, reply) for a, reply in zip(addresses, ask_status(targets, secret, None))]
        from rpc.epochs import epoch_notes

        # the old epoch's master (a grid recover left it behind) is none of this grid's
        wanted = cluster_epoch(args.cluster, secret_file)
        epoch_notes(rows, (wanted["cluster"], wanted["epoch"]) if wanted else None)
    except (PrevalenceError, OSError):  # the diagnosis adds to the error; without it the error stands
        return ""
    members = [r for r in rows if not r.get("other_epoch")]
    return "; ".join(filter(None, [describe_master(members), *unreachable_summary(rows).splitlines()]))


def main(argv: Sequence[str] | None = None) -> int:
    """The ``grid`` command; Ctrl-C ends it with one line and the shell's 130, wherever it waits."""
    from prevalence import interrupt

    try:
        with interrupt.guarded():  # Ctrl-C ends the command even if Python loses the exception
            return _main(argv)
    except KeyboardInterrupt:
        return interrupt.say_interrupted()


def _main(argv: Sequence[str] | None) -> int:
    from prevalence.cli import run

    args = build_parser().parse_args(argv)
    if hasattr(args, "cluster"):
        args.cluster_from = "--cluster" if args.cluster is not None else \
            "$GRID_CLUSTER" if os.environ.get("GRID_CLUSTER") else "default"
        args.cluster = args.cluster or os.environ.get("GRID_CLUSTER") or "grid-data"
        args.func = _naming_the_cluster(args.func)
    # ValueError too: the grid's own refusals (GridError, SettingsError) come back as such
    return run(args, errors=(PrevalenceError, ValueError))


if __name__ == "__main__":
    sys.exit(main())

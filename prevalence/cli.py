"""prevalence: run and inspect a replicated master. Cluster nodes and a local cluster
(node, cluster, status) and offline tools for a node's or an engine's data directory
(journal verify/dump/repair, state)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from . import tools
from .errors import PrevalenceError
from .text import one_line, os_error_text


def _json_default(obj: object) -> object:
    if isinstance(obj, (bytes, bytearray)):
        return obj.hex()
    return repr(obj)


_JSON_KEYS = (str, int, float, bool, type(None))


def _json_keys(obj: object) -> object:
    """``obj`` with every map key JSON cannot take (bytes: a plain ``dict`` field may
    hold them) written as a value of its type is (hex, else its repr)."""
    if isinstance(obj, dict):
        return {(k if isinstance(k, _JSON_KEYS) else _json_default(k)): _json_keys(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_keys(v) for v in obj]
    return obj


def _json(obj: object) -> str:
    """One line of JSON, keys sorted where they can be: a map whose keys mix types (1 and
    "a") cannot be sorted, and is written in its own order rather than not at all; a
    key that is no JSON key (bytes) is written as its value would be."""
    try:
        return json.dumps(obj, default=_json_default, sort_keys=True)
    except TypeError:
        pass
    try:
        return json.dumps(obj, default=_json_default)
    except TypeError:
        return json.dumps(_json_keys(obj), default=_json_default)


def cmd_verify(args: argparse.Namespace) -> int:
    r = tools.verify(args.path)
    if args.json:
        print(json.dumps({**r.__dict__, "ok": r.ok}, indent=2, default=_json_default))
        return 0 if r.ok else 1
    print(f"journal {r.journal}: {len(r.segments)} segment(s), entries {r.first_index}..{r.last_index}")
    for t in r.torn:
        print(f"  warning: torn tail {t}")
    for s in r.snapshots:
        print(f"  snapshot {s['index']}: " + ("ok" if s["ok"] else f"DAMAGED: {s['error']}"))
    if r.error:
        print(f"DAMAGED: {r.error}")
        print("  (`prevalence journal repair` cuts the journal there, or drops the segments before it that a "
              "snapshot covers, after a backup copy)")
    if r.gap:
        print(f"DAMAGED: {r.gap}")
    print("ok" if r.ok else "damage found")
    return 0 if r.ok else 1


def cmd_dump(args: argparse.Namespace) -> int:
    for row in tools.dump(args.path, args.start, args.stop, note=lambda text: print(f"note: {text}", file=sys.stderr)):
        if args.json:
            print(_json(row))
        else:
            fields = _json(row["fields"])
            print(f"{row['index']}\t{row['time'] or '-'}\t{row['type']}\t{fields}")
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    r = tools.repair(args.path)
    if r.damaged is None:
        print(f"nothing to repair: the journal is sound up to index {r.kept_last_index}")
        return 0
    print(f"damage: {r.damaged}")
    print(f"backup copy: {r.backup}")
    if r.cut:
        print(f"cut {r.cut}")
    for f in r.removed_files:
        print(f"removed {f}")
    print(f"the journal now ends at index {r.kept_last_index}")
    return 0


def cmd_state(args: argparse.Namespace) -> int:
    import os

    from . import state_at
    from .factory import load_object

    if os.getcwd() not in sys.path:  # find the application's modules as `python -m` would
        sys.path.insert(0, os.getcwd())

    if args.at is not None and args.at < 0:
        raise PrevalenceError(f"--at {args.at}: an index is at least 0")
    for module in args.imports or ():
        load_object(module + ":__name__")
    make = load_object(args.root)
    tools.require_data(args.path)

    def factory() -> object:  # the operator's MODULE:FACTORY, maybe the wrong one
        try:
            return make()
        except Exception as exc:
            raise PrevalenceError(f"the root factory {args.root} failed: {type(exc).__name__}: {exc}") from None

    with state_at(args.path, factory, args.at) as view:
        picture = view.query(_Describe())
        if args.json:
            print(json.dumps({"index": view.last_index, "root": picture}, default=_json_default))
        else:
            print(f"state as of index {view.last_index}")
            for line in _outline(picture):
                print(line)
    return 0


def _outline(value: object, indent: str = "") -> list[str]:
    """Plain data as indented ``key: value`` lines, one scalar a line (YAML-like, for eyes)."""
    if isinstance(value, dict):
        items = [(str(k), v) for k, v in value.items() if k != "__type__"]
        lines = [f"{indent}({value['__type__']})"] if "__type__" in value and not items else []
        for k, v in items:
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{indent}{k}:")
                lines.extend(_outline(v, indent + "  "))
            else:
                lines.append(f"{indent}{k}: {_scalar(v)}")
        return lines
    if isinstance(value, list):
        lines = []
        for v in value:
            if isinstance(v, (dict, list)) and v:
                sub = _outline(v, indent + "  ")
                lines.append(f"{indent}- {sub[0].lstrip()}")
                lines.extend(sub[1:])
            else:
                lines.append(f"{indent}- {_scalar(v)}")
        return lines
    return [f"{indent}{_scalar(value)}"]


def _scalar(v: object) -> str:
    if isinstance(v, dict):
        return "{}"
    if isinstance(v, list):
        return "[]"
    return json.dumps(v, default=_json_default) if isinstance(v, str) and (not v or v != v.strip()) else str(v)


class _Describe:
    """A query the engine runs like any other (not registered: it never travels)."""

    def run(self, root: object) -> object:
        return tools.describe(root)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prevalence", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    journal = sub.add_parser("journal", help="inspect or repair a journal").add_subparsers(dest="action", required=True)
    v = journal.add_parser("verify", help="check every checksum and the index sequence; exit 1 on damage")
    v.add_argument("path", help="data directory (or its journal/ directory)")
    v.add_argument("--json", action="store_true", help="the report as JSON")
    v.set_defaults(func=cmd_verify)
    d = journal.add_parser("dump", help="one entry per line: index, time, type, fields")
    d.add_argument("path", help="data directory (or its journal/ directory)")
    d.add_argument("--from", dest="start", type=int, default=None, metavar="N", help="first index (default: the first kept)")
    d.add_argument("--to", dest="stop", type=int, default=None, metavar="M", help="last index (default: the last)")
    d.add_argument("--json", action="store_true", help="JSON lines")
    d.set_defaults(func=cmd_dump)
    r = journal.add_parser("repair", help="cut the journal at its first damage (or drop the segments a snapshot covers), after a backup copy")
    r.add_argument("path", help="data directory (or its journal/ directory)")
    r.set_defaults(func=cmd_repair)

    s = sub.add_parser("state", help="print the state as of an index (read-only)")
    s.add_argument("path", help="data directory")
    s.add_argument("--root", required=True, metavar="MODULE:FACTORY", help="the root factory (its module defines the transactions)")
    s.add_argument("--at", type=int, default=None, metavar="N", help="index (default: the newest)")
    s.add_argument("--import", dest="imports", action="append", metavar="MODULE", help="also import MODULE (more transaction classes)")
    s.add_argument("--json", action="store_true", help="one line of JSON instead of the readable outline")
    s.set_defaults(func=cmd_state)
    return p


def run(args: argparse.Namespace, *, configure_logging: bool = True,
        errors: tuple[type[BaseException], ...] = (PrevalenceError,)) -> int:
    """Run a parsed command (``args.func``) as the command-line tools do: ``errors`` as one
    line on stderr and exit code 1, never a traceback; a closed pipe ends it quietly."""
    if configure_logging:
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except errors as exc:
        print(f"error: {one_line(str(exc), None)}", file=sys.stderr)  # words from elsewhere: no escapes
        return 1
    except BrokenPipeError:  # `prevalence journal dump ... | head`
        return 0
    except OSError as exc:  # the disk or the operator's paths (permissions, a directory for a file)
        print(f"error: {one_line(os_error_text(exc), None)}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""Mutation testing gate: does the simulator notice when a safety rule is broken?

    python -m replication.mutants [--seeds N] [--only NAME] [--layer core|runtime] [--jobs J]

Each mutation is one small textual change of shipped code (file, exact original text,
replacement). For each, the packages are copied to a temporary directory, the change
is made there (never in the real tree), and a subprocess whose ``sys.path`` starts with
that copy runs the simulator seed by seed until the first violation, up to ``--seeds``
(default 2,000; every fifth seed with 5 nodes, the others with 3). The table gives the
seeds to first detection, the invariant that caught it and the time; the exit status is
non-zero if any mutation went unnoticed. An original text that is not found exactly
once stops the gate: the list must follow the code, not rot silently.

``layer`` says which simulator a mutation needs: "core" mutations live in the Raft core,
which ``replication.sim`` runs over MemoryStorage; "runtime" ones live in the node
runtime, its storage or the state machine (the machine, the disk and apply lanes,
journal_storage.py, prevalence/), which ``replication.sim_runtime`` runs on a simulated
disk. A mutated module the simulator never imports is reported NOT CAUGHT after one
seed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("replication", "prevalence", "rpc", "app")


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to the repository root
    original: str
    replacement: str
    description: str
    layer: str  # "core": the simulator runs this code today; "runtime": it does not yet


MUTATIONS: tuple[Mutation, ...] = (
    # ------------------------------------------------------------------ core
    Mutation(
        "figure8", "replication/raft_log.py",
        "if index > self.committed and self.match_term(index, term):",
        "if index > self.committed and index <= self.last_index():",
        "Figure-8 rule removed: a leader commits an older term's entry by counting replicas", "core"),
    Mutation(
        "vote_not_restored", "replication/core.py",
        "self.term, self.vote = hs.term, hs.vote",
        "self.term, self.vote = hs.term, None",
        "the core reloads its term but not its vote at restart (the vote is not persisted)", "core"),
    Mutation(
        "vote_before_durable", "replication/core.py",
        "_AFTER_PERSIST = (Vote, VoteResp, AppendResp)",
        "_AFTER_PERSIST = (Vote, AppendResp)",
        "vote reply sent before the vote is durable", "core"),
    Mutation(
        "ack_before_durable", "replication/core.py",
        "_AFTER_PERSIST = (Vote, VoteResp, AppendResp)",
        "_AFTER_PERSIST = (Vote, VoteResp)",
        "append acknowledged before the entries are durable (the core's Ready contract)", "core"),
    Mutation(
        "prevote_bumps_term", "replication/core.py",
        "if t is PreVote or (t is PreVoteResp and not m.reject):",
        "if t is PreVoteResp and not m.reject:",
        "a PreVote raises the receiver's term", "core"),
    Mutation(
        "lease_ignored", "replication/core.py",
        "return self.heard_at is not None and self.clock - self.heard_at < self.cfg.election_tick",
        "return False",
        "followers in a leader's lease stop ignoring (pre)votes", "core"),
    Mutation(
        "apply_uncommitted", "replication/raft_log.py",
        "return self.committed if allow_unstable else min(self.committed, self.offset - 1)",
        "return min(self.committed + 1, self.last_index() if allow_unstable else self.offset - 1)",
        "apply of an entry before it is committed (one past the commit index)", "core"),
    # ------------------------------------------------------------------ runtime
    Mutation(
        "storage_drops_vote", "replication/journal_storage.py",
        "body = msgpack.packb([hs.term, hs.vote, hs.commit])",
        "body = msgpack.packb([hs.term, None, hs.commit])",
        "vote not persisted by storage (the hard state file keeps the term only)", "runtime"),
    Mutation(
        "lane_sends_before_write", "replication/persist.py",
        "    write_batch(storage, batch)\n    for work in batch:\n        if work.rd is not None:\n"
        "            for m in work.rd.persisted_messages:\n                send(m.dst, encode(m))\n",
        "    for work in batch:\n        if work.rd is not None:\n"
        "            for m in work.rd.persisted_messages:\n                send(m.dst, encode(m))\n"
        "    write_batch(storage, batch)\n",
        "vote reply (and acks) sent by the disk lane before the write is durable", "runtime"),
    Mutation(
        "ack_before_fsync", "replication/persist.py",
        "    if dirty:\n        st.sync()\n",
        "    if dirty:\n        pass\n",
        "append acknowledged before fsync (the disk lane's batch is never synced)", "runtime"),
    Mutation(
        "reports_out_of_order", "replication/persist.py",
        "    report([work.seq for work in batch])",
        "    report([work.seq for work in reversed(batch)])",
        "writer reports persisted out of order", "runtime"),
    Mutation(
        "sweep_local_clock", "prevalence/state.py",
        "self.sessions.sweep(timestamp_us)",
        "self.sessions.sweep(timestamp_us + id(self) * 2654435761 % 90_000_000)",
        # each replica its own offset of up to 90 s: the objects' ids are close together in
        # memory, so id % 90 s alone gave every replica nearly the same offset (a shared
        # schedule, not a local one) and the mutation went unseen in 2,000 seeds
        "session sweep on a local schedule (each replica sweeps as of its own time)", "runtime"),
    Mutation(
        "snapshot_without_sessions", "replication/apply.py",
        "sm.sessions = new.root, new.applied_index, new.timestamp_us, new.sessions",
        "sm.sessions = new.root, new.applied_index, new.timestamp_us, sm.sessions",
        "snapshot install without the session table (the old table is kept)", "runtime"),
    Mutation(
        "client_reuses_seq", "replication/client_policy.py",
        "session.next_seq = seq + 1  # whether or not that command applied",
        "session.next_seq = seq  # whether or not that command applied",
        "the client numbers its next command like the last one (the cluster answers it from the cache)",
        "runtime"),
    Mutation(
        "client_keeps_expired_session", "replication/client_policy.py",
        'if reply is None or reply[0] != "expired":',
        "if True:",
        "the client keeps a session the cluster expired (every command on it is refused)", "runtime"),
    Mutation(
        "overdue_ignored", "replication/runtime/peer_link.py",
        "if now - sent_at > self.cfg.request_timeout:",
        "if False:",
        "the peer link never finds a call overdue: a connection that drops silently is kept forever",
        "runtime"),
)


def gate_nodes(seed: int) -> int:
    """The gate's seed plan: every fifth seed runs 5 nodes, the others 3."""
    return 5 if seed % 5 == 4 else 3


def check_mutations(mutations=MUTATIONS, root: Path = ROOT) -> None:
    """Every original text must occur exactly once in its file: raise otherwise."""
    names = [m.name for m in mutations]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise SystemExit(f"mutation names used twice: {sorted(dupes)}")
    for m in mutations:
        if m.layer not in ("core", "runtime"):
            raise SystemExit(f"mutation {m.name}: layer must be core or runtime, not {m.layer!r}")
        text = (root / m.file).read_text()
        n = text.count(m.original)
        if n != 1:
            raise SystemExit(f"mutation {m.name}: its original text occurs {n} times in {m.file} "
                             f"(must be exactly once; update the list):\n{m.original}")


def make_copy(m: Mutation, root: Path = ROOT) -> Path:
    """A temporary copy of the packages with ``m`` applied (the caller removes it)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"mutant-{m.name}-"))
    for pkg in PACKAGES:
        if (root / pkg).is_dir():
            shutil.copytree(root / pkg, tmp / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    path = tmp / m.file
    text = path.read_text()
    if text.count(m.original) != 1:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SystemExit(f"mutation {m.name}: original text not found exactly once in {m.file}")
    path.write_text(text.replace(m.original, m.replacement))
    return tmp


def run_mutation(m: Mutation, seeds: int, start: int = 0, root: Path = ROOT) -> dict:
    """Apply ``m`` to a copy and run the simulator on it; the worker's result as a dict."""
    tmp = make_copy(m, root)
    began = time.monotonic()
    try:
        env = dict(os.environ, PYTHONPATH=str(tmp), PYTHONDONTWRITEBYTECODE="1")
        code = "import sys; from replication.mutants import worker; sys.exit(worker(sys.argv[1:]))"
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp), m.file, str(start), str(seeds), m.layer],
            cwd=tmp, env=env, capture_output=True, text=True,
        )
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if out.returncode != 0 or not lines:
            res = {"caught": False, "seeds": 0, "invariant": f"worker failed (exit {out.returncode}): "
                   + (out.stderr.strip().splitlines() or ["?"])[-1]}
        else:
            res = json.loads(lines[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res.update(name=m.name, layer=m.layer, description=m.description, seconds=time.monotonic() - began)
    return res


def worker(argv: list[str]) -> int:
    """In the mutated copy: run seeds until the first violation; print one JSON line."""
    tmp, rel, start, seeds = argv[0], argv[1], int(argv[2]), int(argv[3])
    layer = argv[4] if len(argv) > 4 else "core"
    import replication
    from replication.sim import SimConfig, check_seed

    if layer == "runtime":  # the node runtime that ships, on a simulated disk
        import logging

        from replication.sim_runtime import RtConfig, RuntimeSim, check
        from replication.sim_runtime import Violation as RtViolation  # noqa: F401 - imported for the copy check

        logging.disable(logging.CRITICAL)

        def check_seed(seed, cfg):  # noqa: F811 - the runtime simulator's verdict in the core's shape
            ok, why = check(RuntimeSim(seed, RtConfig(nodes=cfg.nodes)))
            if ok:
                return None
            first = why.splitlines()[0] if why else "?"
            return _Verdict(first.split(": ", 1)[-1][:80], why[:400])

    here = Path(replication.__file__).resolve()
    if not str(here).startswith(str(Path(tmp).resolve())):
        print(f"the mutated copy is not the one imported: {here}", file=sys.stderr)
        return 2
    module = rel[:-3].replace("/", ".")
    for i, seed in enumerate(range(start, start + seeds)):
        nodes = gate_nodes(seed)
        try:
            v = check_seed(seed, SimConfig(nodes=nodes))
        except Exception as exc:  # noqa: BLE001 - the mutant crashed the simulator: noticed, say how
            print(json.dumps({"caught": True, "seeds": i + 1, "seed": seed, "nodes": nodes,
                              "invariant": f"simulator crash: {type(exc).__name__}: {exc}"[:120]}))
            return 0
        if v is not None:
            print(json.dumps({"caught": True, "seeds": i + 1, "seed": seed, "nodes": nodes,
                              "invariant": v.invariant, "detail": v.detail[:200]}))
            return 0
        if i == 0 and module not in sys.modules:
            print(json.dumps({"caught": False, "seeds": 1, "invariant": f"{rel} is not run by the simulator"}))
            return 0
    print(json.dumps({"caught": False, "seeds": seeds, "invariant": ""}))
    return 0


@dataclass(frozen=True)
class _Verdict:
    invariant: str
    detail: str


def table(results: list[dict]) -> str:
    rows = [("mutation", "layer", "detected", "seed", "invariant", "seconds")]
    for r in results:
        found = f"after {r['seeds']} seeds" if r["caught"] else f"NOT CAUGHT in {r['seeds']}"
        seed = f"{r['seed']} ({r['nodes']} nodes)" if r.get("caught") and "seed" in r else "-"
        rows.append((r["name"], r["layer"], found, seed, r["invariant"] or "-", f"{r['seconds']:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m replication.mutants", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=2000, help="bound on seeds per mutation")
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--only", action="append", help="run only this mutation (repeatable)")
    p.add_argument("--layer", choices=("core", "runtime"), help="run only the mutations of this layer")
    p.add_argument("--jobs", type=int, default=1, help="mutations run in parallel")
    p.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = p.parse_args(argv)
    check_mutations()
    chosen = [m for m in MUTATIONS if (not args.only or m.name in args.only) and (not args.layer or m.layer == args.layer)]
    unknown = set(args.only or ()) - {m.name for m in MUTATIONS}
    if unknown or not chosen:
        p.error(f"no such mutation: {sorted(unknown)}" if unknown else "no mutation selected")
    if args.list:
        for m in chosen:
            print(f"{m.name:28} {m.layer:8} {m.file}: {m.description}")
        return 0
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(lambda m: run_mutation(m, args.seeds, args.start), chosen))
    print(table(results))
    missed = [r["name"] for r in results if not r["caught"]]
    print(f"{len(results) - len(missed)} of {len(results)} mutations caught within {args.seeds} seeds"
          + (f"; NOT CAUGHT: {', '.join(missed)}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Deterministic simulation of whole Raft clusters under faults.

    python -m replication.sim --seeds N --start S [--nodes K] [--steps M]

runs seeds S..S+N-1 and prints ``N seeds, 0 violations``, or stops at the first
violation (or unknown verdict), printing the seed, the invariant, the tail of the
trace and the command that reproduces it, and exits 1.

One run: K nodes (RaftNode + SimHost), clients, and a fault schedule, all driven by
a single ``random.Random(seed)`` in virtual time (100 units = one base tick; each
node ticks at its own, slightly skewed, period). The seed also draws pre_vote,
check_quorum and lease_read (lease seeds: skew within lease_margin, no pauses), and
its fault mix (sim_faults.FaultPlan). For ``steps`` ticks faults are injected:
message loss, duplication, long delays (reordering), symmetric and one-way
partitions, an isolated leader, clogged links, crashes with torn writes and
restarts, pauses, crashes and cuts triggered by elections, commits and votes;
meanwhile membership changes, leadership transfers and snapshots
happen. Then everything heals and a new proposal must commit within a bound
(liveness). Safety invariants are checked at every step (see sim_check); at the
end every write acknowledged to a client must be on the disks of a majority of the
voters, and the clients' history must be linearizable (a search that exhausts its
step budget is an unknown verdict, which fails the seed too).
"""
from __future__ import annotations

import argparse
import hashlib
import heapq
import random
import sys
from collections import deque
from dataclasses import dataclass

from replication.config import RaftConfig
from replication.errors import RaftError
from replication.linearizability import KeyValueModel, LinearizabilityTimeout, check_history
from replication.membership import Membership
from replication.messages import (
    Append, Heartbeat, InstallSnapshot, PreVote, PreVoteResp, Vote, VoteResp, decode, encode,
)
from replication.progress import quorum
from replication.ready import Role
from replication.sim_check import Checker, Unknown, Violation
from replication.sim_faults import FaultPlan, FaultsMixin, lease_skew
from replication.sim_host import SimHost
from replication.sim_net import Network
from replication.sim_workload import TICK, Client

__all__ = ["SimConfig", "SimResult", "Simulation", "check_seed", "lease_skew", "main", "report", "run_seed"]


@dataclass
class SimConfig:
    nodes: int = 3
    steps: int = 300  # ticks of the chaotic phase
    heal_ticks: int = 300  # liveness bound after healing
    clients: int = 3
    keys: int = 2
    faults: bool = True
    codec: bool = True  # send every message through encode/decode
    attempt_ticks: int = 25
    give_up_ticks: int = 120
    election_tick: int = 10
    heartbeat_tick: int = 2
    trace_tail: int = 80
    lin_steps: int = 1_000_000  # search budget of the linearizability check (seeds need < 1,000)
    async_writes: bool | None = None  # the core's async storage writes; None: drawn per seed


class SimResult:
    def __init__(self, seed: int, trace_hash: str, stats: dict) -> None:
        self.seed, self.trace_hash, self.stats = seed, trace_hash, stats


class Simulation(FaultsMixin):
    def __init__(self, seed: int, cfg: SimConfig | None = None) -> None:
        self.seed = seed
        self.cfg = cfg = cfg or SimConfig()
        self.rng = rng = random.Random(seed)
        self.now = 0
        self._queue: list = []
        self._seq = 0
        self.steps = 0
        self._trace: deque[str] = deque(maxlen=cfg.trace_tail)
        self._hash = hashlib.sha256()
        self.hosts: dict[str, SimHost] = {}  # filled in below, once the seed has drawn the config
        self.check = Checker(self.hosts, on_leader=self.on_leader, on_commit=self.on_commit)
        self.ids = [f"n{i}" for i in range(1, cfg.nodes + 1)]
        self.net = Network(rng, self.ids)
        self.history: list = []
        self.counts: dict[str, int] = {}
        self.healed = False
        self.lin_steps = 0
        self.acked: list[tuple[int, int, bytes]] = []  # (index, term, data) answered to a client
        self.final_voters: tuple[str, ...] = ()  # where the liveness probe committed
        pre_vote = rng.random() < 0.75
        check_quorum = rng.random() < 0.75
        lease = check_quorum and rng.random() < 0.5
        raft_cfg = RaftConfig(
            election_tick=cfg.election_tick,
            heartbeat_tick=cfg.heartbeat_tick,
            max_size_per_msg=rng.choice([1, 64, 1 << 20]),
            max_inflight_msgs=rng.choice([1, 4, 256]),
            snapshot_chunk_size=rng.choice([16, 256, 1 << 16]),
            pre_vote=pre_vote,
            check_quorum=check_quorum,
            lease_read=lease,
            async_storage_writes=rng.random() < 0.75 if cfg.async_writes is None else cfg.async_writes,
        )
        self.raft_cfg = raft_cfg
        # Lease reads assume bounded drift and no pauses: their seeds skew clocks only
        # within what lease_margin tolerates, and never pause a node.
        skew = cfg.faults and rng.random() < 0.7
        max_skew = lease_skew(raft_cfg) if lease else 12
        self.pauses = pauses = cfg.faults and not lease and rng.random() < 0.7
        self.check.check_quorum, self.check.election_tick = check_quorum, cfg.election_tick
        self.plan = FaultPlan.draw(rng, pauses) if cfg.faults else FaultPlan()
        # node -> its clock when a leader last reached it; a node (re)starting counts its
        # start as that with lease reads (what the core assumes), else it knows of none
        self.heard: dict[str, int | None] = {i: 0 if lease else None for i in self.ids}
        self.net.delay = self.plan.delay
        membership = Membership(tuple(self.ids))
        for i in self.ids:
            self.hosts[i] = SimHost(self, i, membership, raft_cfg)
            self.hosts[i].tick_period = TICK + (rng.randint(-max_skew, max_skew) if skew else 0)
            self.schedule(rng.randrange(TICK), "tick", i)
        self.clients = {f"c{i}": Client(self, f"c{i}", keys=tuple(f"k{j}" for j in range(cfg.keys))) for i in range(cfg.clients)}
        for c in self.clients:
            self.schedule(rng.randint(5, 20) * TICK, "client", c)
        self.probe = Client(self, "probe", record=False, keys=("__live__",))
        if cfg.faults:
            self.schedule(rng.randint(5, 30) * TICK, "fault", None)
            self.schedule(rng.randint(20, 60) * TICK, "admin", None)
        self.trace(f"seed={seed} nodes={cfg.nodes} pre_vote={pre_vote} check_quorum={check_quorum} lease_read={lease} "
                   f"skew={max_skew if skew else 0} pauses={pauses} max_size={raft_cfg.max_size_per_msg} inflight={raft_cfg.max_inflight_msgs} chunk={raft_cfg.snapshot_chunk_size} "
                   f"async_writes={raft_cfg.async_storage_writes}")
        if cfg.faults:
            self.trace(self.plan.describe())

    # ---------------------------------------------------------------- plumbing
    def schedule(self, at: int, kind: str, arg) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, kind, arg))

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def trace(self, line: str) -> None:
        line = f"{self.now:>8} {line}"
        self._trace.append(line)
        self._hash.update(line.encode())
        self._hash.update(b"\n")

    def trace_tail(self) -> str:
        return "\n".join(self._trace)

    def send(self, m) -> None:
        self.check.on_send(m)
        if type(m) is VoteResp and not m.reject:
            self.on_vote_granted(m.src)
        times = self.net.deliveries(self.now, m.src, m.dst)
        payload = encode(m) if self.cfg.codec else m
        for t in times:
            self.schedule(t, "msg", (m.dst, payload, m.src, self.hosts[m.src].incarnation, self.now))

    # ---------------------------------------------------------------- events
    def step(self) -> None:
        at, _, kind, arg = heapq.heappop(self._queue)
        self.now = at
        self.steps += 1
        if kind == "msg":
            dst, payload, src, inc, sent = arg
            host = self.hosts[dst]
            if host.node is None:
                return
            crashed = self.hosts[src].crash_times.get(inc)
            if crashed is not None and crashed - sent < self.plan.outbox:
                return  # still in the sender's buffers when it crashed: lost with it
            if host.paused_until > at:
                self.schedule(host.paused_until + self.rng.randint(0, 20), "msg", arg)
                return
            m = decode(payload) if self.cfg.codec else payload
            self._trace_msg(m)
            self._step(host, m)
            host.process()
        elif kind == "tick":
            host = self.hosts[arg]
            self.schedule(at + host.tick_period, "tick", arg)
            if host.node is not None and host.paused_until <= at:
                node = host.node
                before = (node.role, node.term)
                node.tick()
                host.process()
                if host.node is not None and (host.node.role, host.node.term) != before:
                    self.trace(f"{arg} tick -> {host.node.role} term {host.node.term}")
        elif kind == "write_done":
            host = self.hosts[arg[0]]
            if host.paused_until > at:
                self.schedule(host.paused_until + 1, kind, arg)
            else:
                host.write_done(arg[1])
        elif kind == "client":
            (self.probe if arg == "probe" else self.clients[arg]).wake()
        elif kind == "fault":
            self._fault()
        elif kind == "admin":
            self._admin()
        elif kind == "crash":
            host = self.hosts[arg]
            if host.node is not None and host.torn_next_write:
                self.trace(f"{arg} crashes (no write came)")
                host.crash()
            if host.node is None:
                self.schedule(at + self.restart_delay(), "restart", arg)
        elif kind == "kill":
            if self.hosts[arg].node is not None and not self.healed:
                self.trace(f"{arg} killed by a trigger")
                self.crash_node(arg, torn=False)
        elif kind == "restart":
            host = self.hosts[arg]
            if host.node is None:
                host.start()
                self.heard[arg] = 0 if self.raft_cfg.lease_read else None
                self.trace(f"{arg} restarts: term {host.node.term} commit {host.node.log.committed} last {host.node.log.last_index()}")
                host.process()

    def _step(self, host: SimHost, m) -> None:
        """Deliver ``m``, noting for the lease-promise check when a leader reached the
        node and whether the node granted a (pre)vote, from the messages themselves."""
        node = host.node
        t = type(m)
        request = t is Vote or t is PreVote
        if request:
            before = (len(node.msgs), len(node.msgs_after))
        node.step(m)
        if t is Append or t is Heartbeat or t is InstallSnapshot:
            if node.role == Role.FOLLOWER and node.leader == m.src and node.term == m.term:
                self.heard[host.id] = node.clock
        elif request:
            new = node.msgs[before[0]:] + node.msgs_after[before[1]:]
            if any(type(r) in (VoteResp, PreVoteResp) and r.dst == m.src and not r.reject for r in new):
                self.check.on_vote_granted(host, m, self.heard.get(host.id))

    def _trace_msg(self, m) -> None:
        t = type(m).__name__
        extra = ""
        if t == "Append":
            extra = f" prev={m.prev_index}/{m.prev_term} n={len(m.entries)} commit={m.commit}"
        elif t == "AppendResp":
            extra = f" index={m.index}" + (f" reject hint={m.hint_index}/{m.hint_term}" if m.reject else "")
        elif t in ("VoteResp", "PreVoteResp"):
            extra = " reject" if m.reject else " granted"
        elif t == "InstallSnapshot":
            extra = f" snap={m.meta.index} off={m.offset} done={m.done}"
        self.trace(f"{m.src}>{m.dst} {t} t{m.term}{extra}")
        self.count(t)

    # ---------------------------------------------------------------- client hooks
    def write_done(self, client: str, seq: int, result, entry, node: str) -> None:
        """A host answers a client's write with the log entry that carried it."""
        c = self.probe if client == "probe" else self.clients.get(client)
        if c is None or not c.write_done(seq, result):
            return
        if c.record:
            self.acked.append((entry.index, entry.term, entry.data))
        elif self.hosts[node].node is not None:
            self.final_voters = self.hosts[node].node.membership.voters

    def read_done(self, client: str, ctx: bytes, value, node: str) -> None:
        c = self.clients.get(client)
        if c is not None:
            c.read_done(ctx, value)

    def attempt_failed(self, client: str, seq: int, node: str) -> None:
        c = self.probe if client == "probe" else self.clients.get(client)
        if c is not None:
            c.attempt_failed(seq, node)

    # ---------------------------------------------------------------- the run
    def heal_all(self) -> None:
        self.healed = True
        self.net.heal()
        for h in self.hosts.values():
            h.paused_until = 0
            if h.node is None:
                self.schedule(self.now, "restart", h.id)
            h.torn_next_write = False
        self.trace("heal everything")

    def run_for(self, ticks: int) -> None:
        """Process events for ``ticks`` base ticks of virtual time."""
        end = self.now + ticks * TICK
        while self._queue and self._queue[0][0] < end:
            self.step()
        self.now = max(self.now, end)

    def run(self) -> SimResult:
        self.run_for(self.cfg.steps)
        return self.finish()

    def finish(self) -> SimResult:
        """Heal everything, require liveness, then check the end-of-run invariants."""
        cfg = self.cfg
        self.heal_all()
        self.schedule(self.now + TICK, "client", "probe")
        healed_at = self.now
        deadline = self.now + cfg.heal_ticks * TICK
        while self.probe.completed == 0:
            if self.now > deadline or not self._queue:
                raise Violation("liveness", f"no new proposal committed within {cfg.heal_ticks} ticks after healing")
            self.step()
        self.trace(f"liveness ok: a new proposal committed {(self.now - healed_at) // TICK} ticks after healing")
        self._final_checks()
        stats = {
            "steps": self.steps, "ops": len(self.history), "acked": len(self.acked),
            "committed": self.check.max_committed, "terms": len(self.check.leaders), "lin_steps": self.lin_steps,
            **{k: self.counts[k] for k in sorted(self.counts)},
        }
        return SimResult(self.seed, self._hash.hexdigest(), stats)

    def _final_checks(self) -> None:
        self._check_durability()
        for c in self.clients.values():
            c.finalize()
        try:  # a step budget, not a timeout: the verdict must not depend on the machine
            result = check_history(KeyValueModel(), self.history, timeout=None, max_steps=self.cfg.lin_steps)
        except LinearizabilityTimeout as exc:
            raise Unknown("linearizability unknown", f"{exc} (SimConfig.lin_steps={self.cfg.lin_steps})") from exc
        self.lin_steps = result.steps
        if not result.ok:
            raise Violation("linearizability", result.explanation)

    def _check_durability(self) -> None:
        """Every write answered to a client is on the disks of a majority of the voters
        that committed the liveness probe: as that log entry, or under a snapshot whose
        log (rebuilt from the persist record) holds it. What the hosts applied plays no
        part: an acknowledgement recorded as applied would prove nothing."""
        voters = self.final_voters
        for index, term, data in self.acked:
            holders = [v for v in voters if self._holds(self.hosts[v].disk, index, term, data)]
            if len(holders) < quorum(len(voters)):
                raise Violation(
                    "durability",
                    f"the write acknowledged at index {index} (term {term}) is on the disks of "
                    f"{len(holders)} of the voters {list(voters)} ({', '.join(holders) or 'none'}): no majority",
                )

    def _holds(self, disk, index: int, term: int, data: bytes) -> bool:
        if index >= disk.first_index():
            if index > disk.last_index():
                return False
            e = disk.entries(index, index + 1, None)[0]
            return e.term == term and e.data == data
        meta = disk.snapshot().meta  # compacted: look in the log the snapshot covers
        return self.check.persisted_log(meta.index, meta.term).get(index) == (term, data)


def check_seed(seed: int, cfg: SimConfig | None = None) -> Violation | None:
    """Run one seed; the violation it found (an Unknown verdict included), or None.
    For callers that run many seeds in one process (replication.mutants)."""
    try:
        run_seed(seed, cfg)
    except Violation as v:
        return v
    return None


def run_seed(seed: int, cfg: SimConfig | None = None) -> SimResult:
    """Run one seed; raises Violation (with ``.sim`` attached) on a broken invariant."""
    sim = Simulation(seed, cfg)
    try:
        return sim.run()
    except Violation as v:
        v.sim = sim
        raise
    except RaftError as exc:  # the core refused something it should never see
        v = Violation("core error", f"{type(exc).__name__}: {exc}")
        v.sim = sim
        raise v from exc


def report(v: Violation, seed: int) -> str:
    sim = getattr(v, "sim", None)
    lines = [f"{'UNKNOWN' if isinstance(v, Unknown) else 'VIOLATION'} seed={seed} invariant={v.invariant}", v.detail]
    if sim is not None:
        lines.append(f"--- last {len(sim._trace)} trace lines (time in 1/100 ticks) ---")
        lines.append(sim.trace_tail())
        lines.append("--- nodes ---")
        for i in sim.ids:
            h = sim.hosts[i]
            lines.append(f"{i}: " + (str(h.node.status()) if h.node is not None else "down"))
        lines.append(f"reproduce: python -m replication.sim --seeds 1 --start {seed} --nodes {sim.cfg.nodes} --steps {sim.cfg.steps}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m replication.sim", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=100)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--steps", type=int, default=SimConfig.steps, help="ticks of the faulty phase per seed")
    p.add_argument("--no-codec", action="store_true", help="pass message objects instead of bytes")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    cfg = SimConfig(nodes=args.nodes, steps=args.steps, codec=not args.no_codec)
    for seed in range(args.start, args.start + args.seeds):
        try:
            res = run_seed(seed, cfg)
        except Violation as v:
            print(report(v, seed))
            return 1
        if args.verbose:
            print(f"seed {seed}: {res.stats} {res.trace_hash[:12]}")
    print(f"{args.seeds} seeds, 0 violations")
    return 0


if __name__ == "__main__":
    sys.exit(main())

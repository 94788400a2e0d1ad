"""Deterministic simulation of whole Raft clusters under faults.

    python -m replication.sim --seeds N --start S [--nodes K] [--steps M]

runs seeds S..S+N-1 and prints ``N seeds, 0 violations``, or stops at the first
violation (or unknown verdict), printing the seed, the invariant, the tail of the
trace and the command that reproduces it, and exits 1.

One run: K nodes (RaftNode + SimHost), clients, and a fault schedule, all driven by
a single ``random.Random(seed)`` in virtual time (100 units = one base tick; each
node ticks at its own, slightly skewed, period). The seed also draws pre_vote,
check_quorum and lease_read (lease seeds: skew within lease_margin, no pauses). For
``steps`` ticks faults are
injected: message loss, duplication, long delays (reordering), symmetric and
one-way partitions, an isolated leader, clogged links, crashes with torn writes and
restarts, pauses; meanwhile membership changes, leadership transfers and snapshots
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
from replication.membership import ConfigChange, Membership
from replication.messages import decode, encode
from replication.progress import quorum
from replication.ready import Role
from replication.sim_check import Checker, Unknown, Violation
from replication.sim_host import SimHost
from replication.sim_net import Network
from replication.sim_workload import TICK, Client


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


def lease_skew(cfg: RaftConfig) -> int:
    """The largest per-node tick period offset (in 1/100 ticks) lease reads tolerate.

    A follower that answers a heartbeat refuses votes for at least election_tick - 1
    of its periods after receiving it; the leader reads on that answer for at most
    election_tick - lease_margin of its periods after sending it. With periods of
    TICK +- k: (et - margin) * (TICK + k) <= (et - 1) * (TICK - k).
    """
    et, margin = cfg.election_tick, cfg.lease_margin
    return max(0, TICK * (margin - 1) // (2 * et - margin - 1))


class SimResult:
    def __init__(self, seed: int, trace_hash: str, stats: dict) -> None:
        self.seed, self.trace_hash, self.stats = seed, trace_hash, stats


class Simulation:
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
        self.check = Checker()
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
        membership = Membership(tuple(self.ids))
        self.hosts: dict[str, SimHost] = {}
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
        times = self.net.deliveries(self.now, m.src, m.dst)
        payload = encode(m) if self.cfg.codec else m
        for t in times:
            self.schedule(t, "msg", (m.dst, payload))

    # ---------------------------------------------------------------- events
    def step(self) -> None:
        at, _, kind, arg = heapq.heappop(self._queue)
        self.now = at
        self.steps += 1
        if kind == "msg":
            dst, payload = arg
            host = self.hosts[dst]
            if host.node is None:
                return
            if host.paused_until > at:
                self.schedule(host.paused_until + self.rng.randint(0, 20), "msg", arg)
                return
            m = decode(payload) if self.cfg.codec else payload
            self._trace_msg(m)
            host.node.step(m)
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
                self.schedule(at + self.rng.randint(1, 30) * TICK, "restart", arg)
        elif kind == "restart":
            host = self.hosts[arg]
            if host.node is None:
                host.start()
                self.trace(f"{arg} restarts: term {host.node.term} commit {host.node.log.committed} last {host.node.log.last_index()}")
                host.process()

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

    # ---------------------------------------------------------------- faults
    def _leader(self) -> SimHost | None:
        best = None
        for i in self.ids:
            h = self.hosts[i]
            if h.node is not None and h.node.role == Role.LEADER and (best is None or h.node.term > best.node.term):
                best = h
        return best

    def disk_latency(self) -> int:
        """Time one Ready's write takes: often instant, else up to 1.5 ticks."""
        return 0 if self.rng.random() < 0.5 else self.rng.randint(1, 150)

    def _fault(self) -> None:
        if self.healed:
            return
        rng, net, now = self.rng, self.net, self.now
        self.schedule(now + rng.randint(3, 25) * TICK, "fault", None)
        ids = self.ids
        action = rng.choices(
            ["heal", "partition", "isolate_leader", "one_way", "clog", "lossy", "crash", "crash_leader", "pause"],
            weights=[5, 2, 2, 2, 2, 2, 2, 2, 2 if self.pauses else 0],
        )[0]
        if action == "heal":
            net.heal()
        elif action == "partition":
            k = rng.randint(1, max(1, len(ids) // 2))
            net.partition(rng.sample(ids, k))
        elif action == "isolate_leader":
            leader = self._leader()
            if leader is not None:
                net.isolate(leader.id)
        elif action == "one_way":
            a, b = rng.sample(ids, 2)
            net.cut_one_way(a, b)
        elif action == "clog":
            a, b = rng.sample(ids, 2)
            net.clog(a, b, now + rng.randint(5, 40) * TICK)
        elif action == "lossy":
            net.loss = rng.choice([0.0, 0.05, 0.2])
            net.dup = rng.choice([0.0, 0.05, 0.2])
            net.long_delay_p = rng.choice([0.0, 0.05, 0.2])
        elif action in ("crash", "crash_leader"):
            victim = self._leader() if action == "crash_leader" else self.hosts[rng.choice(ids)]
            if victim is not None:
                self.crash_node(victim.id, torn=rng.random() < 0.5)
            return
        elif action == "pause":
            self.pause_node(rng.choice(ids), rng.randint(3, 40))
            return
        self.count(action)
        self.trace(f"fault {action}: {net.describe()}")

    def _admin(self) -> None:
        if self.healed:
            return
        rng = self.rng
        self.schedule(self.now + rng.choice([1, rng.randint(5, 40)]) * TICK, "admin", None)
        self.admin(rng.choice(["membership", "transfer", "snapshot", "snapshot"]))

    def admin(self, action: str) -> None:
        """An operator action: "membership" change, leadership "transfer", "snapshot"."""
        rng = self.rng
        leader = self._leader()
        try:
            if action == "snapshot":
                host = self.hosts[rng.choice(self.ids)]
                if host.node is not None:
                    idx = host.take_snapshot(keep=rng.randint(0, 5))
                    if idx is not None:
                        self.count("snapshot")
                        self.trace(f"{host.id} snapshot at {idx}")
                return
            if leader is None or leader.paused_until > self.now:
                return
            node = leader.node
            if action == "transfer":
                others = [v for v in node.membership.voters if v != leader.id]
                if others:
                    to = rng.choice(others)
                    node.transfer_leadership(to)
                    self.count("transfer")
                    self.trace(f"{leader.id} transfers leadership to {to}")
            else:
                m = node.membership
                outside = [i for i in self.ids if not m.is_member(i)]
                if m.learners and rng.random() < 0.7:
                    change = ConfigChange.promote_learner(rng.choice(m.learners))
                elif outside and rng.random() < 0.8:
                    change = ConfigChange.add_learner(rng.choice(outside))
                elif len(m.voters) > 2 or (len(m.voters) == 2 and rng.random() < 0.3):
                    change = ConfigChange.remove_voter(rng.choice(m.voters))
                else:
                    return
                idx = node.propose_config_change(change)
                self.count(change.op.name)
                self.trace(f"{leader.id} proposes {change.op.name} {change.node_id} at {idx}")
            leader.process()
        except RaftError as exc:
            self.trace(f"admin {action} refused: {exc}")

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

    # ---------------------------------------------------------------- fault primitives
    def crash_node(self, node_id: str, torn: bool) -> None:
        """Crash now (tearing a write in flight), or during the node's next write."""
        victim = self.hosts[node_id]
        if victim.node is None:
            return
        self.count("crash")
        self.trace(f"fault crash {node_id} torn={torn}")
        if torn:
            # sometimes aim at the next write of a term or vote: the narrow window in
            # which a vote already sent could be forgotten
            victim.torn_next_write = "vote" if self.rng.random() < 0.3 else True
            self.schedule(self.now + 3 * TICK, "crash", node_id)
        else:
            victim.crash()
            self.schedule(self.now, "crash", node_id)

    def pause_node(self, node_id: str, ticks: int) -> None:
        if self.raft_cfg.lease_read:  # a paused leader's clock stops: leases assume no pauses
            self.trace(f"no pause of {node_id}: lease reads")
            return
        self.hosts[node_id].paused_until = self.now + ticks * TICK
        self.trace(f"fault pause {node_id} for {ticks} ticks")

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

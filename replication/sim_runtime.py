"""Deterministic simulation of the node runtime that ships, on a simulated disk.

    python -m replication.sim_runtime --seeds N [--start S] [--nodes K]

Each node is built by :func:`replication.runtime.assemble.assemble`, as the threaded
node builds it: the real ``JournalStorage`` (journal segments, hard-state file) on a
:class:`~prevalence.simfs.SimFileSystem`, the real ``StateMachine`` with its session
table recovered from that disk, the Raft core and the :class:`NodeMachine`. The disk
lane runs :class:`replication.persist.DiskWorker` and the apply lane
:class:`replication.apply.Applier`, the code the node's threads run. What this module
supplies is only what the threads, sockets and clocks supply in production: one heap
of actions in virtual time, ordered by the seed, that interleaves each node's inbox
drains, timers, disk-lane batches (of drawn size, after drawn latency) and apply-lane
items in any order the real threads allow, while each lane stays FIFO. A node process
(its parts, inbox and lanes) and its clocks are :mod:`replication.sim_process`'s.

Messages between nodes go through each node's :class:`PeerLink` per peer, the policy
``rpc.peer_sender`` ships, over modelled connections (:mod:`replication.sim_links`).

Faults, each seed drawing which ones and how often (swarm testing): connections that
break (reset or silently, found by overdue detection), so that calls in flight are lost,
arrive late or twice; partitions; crashes at any moment, after which each file keeps
its synced bytes and a random prefix of the rest (a torn write at any byte), and the
node restarts from that disk; a failed fsync (the node stops: fail-stop, then restarts
as its service manager would); slow disks; monotonic clocks that drift and wall clocks
that drift and jump both ways.

Clients use sessions as the real client does: a command keeps its (session, seq)
across retries on any node, and a session is registered through the log. Checked:
every replica's state and session table are identical at every applied index
(digests); at the end every acknowledged command is applied exactly once on every
node, nothing is applied that no client sent, and journal time never goes back.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import heapq
import random
import sys
import time as _time
from dataclasses import dataclass
from typing import Any, Callable

from prevalence.codec import CODEC
from prevalence.errors import PrevalenceError
from prevalence.sessions import SetSessionExpiry
from prevalence.simfs import SimFileSystem
from replication.config import RaftConfig
from replication.errors import RaftError
from replication.linearizability import LinearizabilityTimeout, check_history
from replication.ready import Role
from replication.runtime.assemble import NodeOptions
from replication.runtime.events import ApplyWork, Complete, DiskWork, Propose, Send
from replication.sim_clients import ListsModel, SimClient, Violation
from replication.sim_links import SimNetwork
from replication.sim_process import Clock, SimNode


# -- the simulation ---------------------------------------------------------------------------
@dataclass
class RtConfig:
    nodes: int = 3
    chaos: float = 6.0  # virtual seconds of faults
    heal: float = 20.0  # then this long, healed, for every client to finish
    clients: int = 3
    ops: int = 40  # commands per client
    keys: int = 3
    tick: float = 0.025


class RuntimeSim:
    MAX_STEPS = 2_000_000  # actions per run: a livelock in virtual time fails the seed
    LIN_STEPS = 1_000_000  # search steps of the linearizability check (counted, not timed)
    def __init__(self, seed: int, cfg: RtConfig | None = None) -> None:
        self.seed = seed
        self.cfg = cfg = cfg or RtConfig()
        self.rng = rng = random.Random(seed)
        self.t = 0.0
        self.heap: list = []
        self.seq = 0
        self.ids = [f"n{k + 1}" for k in range(cfg.nodes)]
        raft = RaftConfig(election_tick=10, heartbeat_tick=2, pre_vote=rng.random() < 0.8)
        raft.check_quorum = rng.random() < 0.7
        self.opts = NodeOptions(tick_interval=cfg.tick, raft=raft, snapshot_every=rng.choice([0, 10, 40]),
                                keep_snapshots=rng.choice([1, 2]))
        # swarm testing: each seed its own mix of faults
        self.p_dup = rng.choice([0.0, 0.02, 0.1])
        self.max_delay = rng.choice([0.001, 0.01, 0.05])
        self.crash_rate = rng.choice([0.0, 0.2, 0.6, 1.5])  # per virtual second, cluster-wide
        self.partition_rate = rng.choice([0.0, 0.3, 1.0])
        self.fsync_fail_rate = rng.choice([0.0, 0.0, 0.1])
        self.p_crash_unsynced = rng.choice([0.0, 0.003, 0.02, 0.05])  # per disk item emitted
        self.slow_rate = rng.choice([0.0, 0.2])
        self.full_rate = rng.choice([0.0, 0.0, 0.5])
        self.jump_rate = rng.choice([0.0, 0.5])
        # sessions that expire: a 60 s expiry (the shortest allowed) and the whole
        # cluster's wall clock stepping forward by minutes (NTP after a wrong RTC), so
        # that journal time crosses minute boundaries and idle sessions are swept
        self.short_expiry = rng.random() < 0.4
        self.leap_rate = rng.choice([0.2, 0.6]) if self.short_expiry else 0.0
        self.clocks = {nid: Clock(rng) for nid in self.ids}
        self.disks = {nid: SimFileSystem(random.Random(rng.getrandbits(64))) for nid in self.ids}
        self.nodes: dict[str, SimNode | None] = {}
        self.incarnations = {nid: 0 for nid in self.ids}
        self.cut: set[frozenset] = set()
        self.net = SimNetwork(self)  # every node's PeerLinks and the connections they hold
        self.tokens = 0
        self.owners: dict[int, Callable[[Any, BaseException | None], None]] = {}
        self.digests: dict[int, tuple[str, str]] = {}  # applied index -> (digest, node)
        self.trace: list[str] = []
        self.history = hashlib.sha256()  # of every action and note: one seed, one history
        self.steps = 0  # actions run (events: deliveries, drains, timers, lane items, faults)
        self.leaders: dict[int, str] = {}  # term -> the node that led it
        self.leader_noted: dict[str, int] = {}
        self.stamps: dict[str, int] = {nid: 0 for nid in self.ids}  # journal time last applied
        self.stamp_index: dict[str, int] = {nid: 0 for nid in self.ids}
        for nid in self.ids:
            self.boot(nid)
        self.clients = [SimClient(self, k) for k in range(cfg.clients)]

    # -- the scheduler ------------------------------------------------------------------------
    def at(self, when: float, fn: Callable, *args: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (when, self.rng.random(), self.seq, fn, args))

    def run(self) -> None:
        cfg = self.cfg
        end_chaos = cfg.chaos
        deadline = cfg.chaos + cfg.heal
        self.at(0.0, self._fault_tick)
        for c in self.clients:
            self.at(self.rng.uniform(0.3, 1.0), c.start)
        if self.short_expiry:
            self.at(0.2, self._set_expiry)
        steps = 0
        while self.heap:
            when, _r, _s, fn, args = heapq.heappop(self.heap)
            if when > deadline:
                break
            steps += 1
            self.steps += 1
            if steps > self.MAX_STEPS:
                raise Violation(f"step budget of {self.MAX_STEPS} actions exhausted at t={when:.3f}")
            self.t = when
            self.history.update(f"{when:.9f} {fn.__name__}\n".encode())
            if self.t >= end_chaos and not getattr(self, "_healed", False):
                self._heal()
            fn(*args)
            if all(c.finished for c in self.clients) and self.t >= end_chaos:
                break
        self._final_checks()

    def note(self, text: str) -> None:
        self.history.update(f"{self.t:.6f} {text}\n".encode())
        self.trace.append(f"{self.t:9.4f} {text}")
        if len(self.trace) > 400:
            del self.trace[:200]

    # -- nodes --------------------------------------------------------------------------------
    def boot(self, nid: str) -> None:
        self.incarnations[nid] += 1
        node = SimNode(self, nid, self.disks[nid], self.incarnations[nid])
        self.nodes[nid] = node
        self.note(f"{nid} boots (incarnation {node.incarnation}, applied {node.sm.applied_index})")
        self._arm_timer(node)

    def crash(self, nid: str, why: str) -> None:
        node = self.nodes.get(nid)
        if node is None:
            return
        self.nodes[nid] = None
        self.disks[nid] = disk = self.disks[nid].crash()
        self.net.crashed(nid)
        disk.fail_fsync = False  # the fault was one fsync's
        self.note(f"{nid} crashes ({why})")
        self.at(self.t + self.rng.uniform(0.05, 1.0), self.boot, nid)

    def _crash_if(self, nid: str, incarnation: int) -> None:
        if self.alive(nid, incarnation) is not None and self.t < self.cfg.chaos:
            self.crash(nid, "power cut with a write pending")

    def alive(self, nid: str, incarnation: int) -> SimNode | None:
        node = self.nodes.get(nid)
        return node if node is not None and node.incarnation == incarnation else None

    def post(self, node: SimNode, ev: Any) -> None:
        node.inbox.append(ev)
        if node.drain_at is None:
            node.drain_at = self.t + self.rng.uniform(0.0, 0.0005)
            self.at(node.drain_at, self._drain, node.id, node.incarnation, False)

    def _drain(self, nid: str, incarnation: int, timer: bool, gen: int = -1) -> None:
        node = self.alive(nid, incarnation)
        if node is None or (timer and gen != node.timer_gen):
            return
        if not timer:
            node.drain_at = None
        events, node.inbox = node.inbox, []
        clock = self.clocks[nid]
        # the raft thread ticks; another thread's drain may find ticks due too
        tick = timer or self.rng.random() < 0.5
        try:
            effects = node.machine.handle(events, clock.now(self.t), clock.wall_us(self.t), tick)
        except RaftError as exc:
            raise Violation(f"{nid}: the machine failed: {exc}") from exc
        self._route(node, effects)
        self._arm_timer(node)
        m = node.machine
        if m.role == Role.LEADER:  # election safety: one leader per term, ever
            term = node.core.term
            first = self.leaders.setdefault(term, nid)
            if first == nid and self.leader_noted.get(nid) != term:
                self.leader_noted[nid] = term
                self.note(f"{nid} leads term {term} (last index {node.core.log.last_index()}, "
                          f"commit {node.core.log.committed})")
            if first != nid:
                raise Violation(f"two leaders in term {term}: {first} and {nid}")

    def _arm_timer(self, node: SimNode) -> None:
        node.timer_gen += 1
        # a microsecond late, so that the node's clock has surely reached the deadline
        # (rounding could otherwise wake it a hair early, forever at the same instant)
        when = max(self.t, self.clocks[node.id].to_global(node.machine.next_deadline())) + 1e-6
        self.at(when, self._drain, node.id, node.incarnation, True, node.timer_gen)

    def _route(self, node: SimNode, effects: list) -> None:
        for eff in effects:
            t = type(eff)
            if t is Send:
                self.send(node.id, eff.dst, eff.payload)
            elif t is DiskWork:
                if self.rng.random() < self.p_crash_unsynced:  # a power cut with this write pending
                    self.at(self.t + self.rng.uniform(0.0, 0.0003), self._crash_if, node.id, node.incarnation)
                node.disk_q.append(eff)
                if eff.inline and not node.disk_busy and len(node.disk_q) == 1 and self.rng.random() < 0.7:
                    self._disk_batch(node, inline=True)  # the receiving thread writes it
                else:
                    self._kick_disk(node)
            elif t is ApplyWork:
                node.apply_q.append(eff.item)
                self._kick_apply(node)
            elif t is Complete:
                self.complete(eff.token, eff.value, eff.exc)

    # -- the network ---------------------------------------------------------------------------
    def send(self, src: str, dst: str, payload: bytes) -> None:
        """``src``'s transport sends: its PeerLink to ``dst`` queues, batches and (re)connects."""
        self.net.send(src, dst, payload)

    # -- the lanes -----------------------------------------------------------------------------
    def _kick_disk(self, node: SimNode) -> None:
        if not node.disk_busy and node.disk_q:
            node.disk_busy = True
            latency = self.rng.uniform(0.0002, 0.004) + node.slow_disk * self.rng.random()
            self.at(self.t + latency, self._disk_step, node.id, node.incarnation)

    def _disk_step(self, nid: str, incarnation: int) -> None:
        node = self.alive(nid, incarnation)
        if node is None:
            return
        node.disk_busy = False
        self._disk_batch(node, inline=False)
        self._kick_disk(node)

    def _disk_batch(self, node: SimNode, inline: bool) -> None:
        if not node.disk_q:
            return
        k = 1 if inline else self.rng.randint(1, len(node.disk_q))
        batch = [node.disk_q.popleft() for _ in range(k)]
        if node.fail_fsync:
            node.fs.fail_fsync = True
        try:
            written = node.disk.run(batch)
        except (OSError, PrevalenceError) as exc:  # fail-stop: the process exits, its service manager restarts it
            self.crash(node.id, f"disk failure: {exc}")
            return
        if not written:  # the disk is full: the same batch again later
            node.disk_q.extendleft(reversed(batch))
            if not node.disk_busy:
                node.disk_busy = True
                self.at(self.t + self.rng.uniform(0.1, 1.0), self._disk_step, node.id, node.incarnation)

    def _kick_apply(self, node: SimNode) -> None:
        if not node.apply_busy and node.apply_q:
            node.apply_busy = True
            self.at(self.t + self.rng.uniform(0.0, 0.003), self._apply_step, node.id, node.incarnation)

    def _apply_step(self, nid: str, incarnation: int) -> None:
        node = self.alive(nid, incarnation)
        if node is None:
            return
        node.apply_busy = False
        kind, arg = node.apply_q.popleft()
        if kind == "apply":
            if (news := node.applier.apply(*arg)) is not None:  # an entry it cannot read, or past it again
                self.post(node, news)
            self._check_replica(node)
        elif kind == "read":
            node.applier.serve_read(*arg)
        elif kind == "snapshot":
            self.post(node, node.applier.write_snapshot(*arg))
        elif kind == "forget":
            node.sm.forget_skipped(arg)
        self._kick_apply(node)

    def _check_replica(self, node: SimNode) -> None:
        sm = node.sm
        index = sm.applied_index
        if sm.timestamp_us < self.stamps[node.id] and sm.applied_index > self.stamp_index[node.id]:
            raise Violation(f"{node.id}: journal time went back at index {index}: "
                            f"{sm.timestamp_us} after {self.stamps[node.id]}")
        self.stamps[node.id], self.stamp_index[node.id] = sm.timestamp_us, index
        digest = hashlib.sha256(repr((sorted(sm.root.data.items()), sm.sessions.to_plain(),
                                      sm.timestamp_us)).encode()).hexdigest()[:16]
        seen = self.digests.get(index)
        if seen is None:
            self.digests[index] = (digest, node.id)
        elif seen[0] != digest:
            raise Violation(f"replicas diverge at index {index}: {node.id} has state {digest}, "
                            f"{seen[1]} had {seen[0]}")

    # -- callers -------------------------------------------------------------------------------
    def token(self, owner: Callable[[Any, BaseException | None], None]) -> int:
        self.tokens += 1
        self.owners[self.tokens] = owner
        return self.tokens

    def complete(self, token: int, value: Any, exc: BaseException | None) -> None:
        owner = self.owners.pop(token, None)
        if owner is not None:
            owner(value, exc)

    # -- faults --------------------------------------------------------------------------------
    def _fault_tick(self) -> None:
        if self.t >= self.cfg.chaos:
            return
        rng, dt = self.rng, 0.05
        up = [n for n in self.ids if self.nodes.get(n) is not None]
        if up and rng.random() < self.crash_rate * dt:
            self.crash(rng.choice(up), "power cut")
        if rng.random() < self.partition_rate * dt:
            if self.cut and rng.random() < 0.5:
                self.cut.clear()
                self.note("partition healed")
            else:
                a = rng.choice(self.ids)
                cut = {frozenset((a, b)) for b in self.ids if b != a}
                self.net.cut(cut - self.cut)
                self.cut = cut
                self.note(f"{a} isolated")
        up = [n for n in self.ids if self.nodes.get(n) is not None]
        if up and rng.random() < self.fsync_fail_rate * dt:
            victim = self.nodes[rng.choice(up)]
            victim.fail_fsync = True
            self.note(f"{victim.id}: its next fsync fails")
        if up and rng.random() < self.slow_rate * dt:
            victim = self.nodes[rng.choice(up)]
            victim.slow_disk = rng.choice([0.0, 0.05, 0.5])
        up = [n for n in self.ids if self.nodes.get(n) is not None]
        if up and rng.random() < self.full_rate * dt:
            disk = self.disks[rng.choice(up)]
            if disk.capacity is None:
                disk.fill()
                self.note("a disk fills up")
            else:
                disk.capacity = None
                self.note("a disk has space again")
        if rng.random() < self.leap_rate * dt:
            leap = int(rng.uniform(40e6, 150e6))
            for clock in self.clocks.values():
                clock.jump_us += leap
            self.note(f"every wall clock steps forward {leap / 1e6:.0f} s")
        if rng.random() < self.jump_rate * dt:
            nid = rng.choice(self.ids)
            self.clocks[nid].jump_us += int(rng.uniform(-5e6, 5e6))
            self.note(f"{nid}: wall clock jumps to {self.clocks[nid].jump_us / 1e6:+.1f} s")
        self.at(self.t + dt, self._fault_tick)

    def _set_expiry(self) -> None:
        """An operator sets the session expiry to 60 s; retried until a leader takes it."""
        def answered(value: Any, exc: BaseException | None) -> None:
            if exc is not None or value != 60:
                self.at(self.t + 0.1, self._set_expiry)

        node = self.nodes.get(self.rng.choice(self.ids))
        if node is None:
            self.at(self.t + 0.1, self._set_expiry)
            return
        self.post(node, Propose(CODEC.to_plain(SetSessionExpiry(60)), None, self.token(answered)))

    def _heal(self) -> None:
        self._healed = True
        self.cut.clear()
        for disk in self.disks.values():
            disk.capacity = None
        for node in self.nodes.values():
            if node is not None:
                node.slow_disk = 0.0
                node.fail_fsync = False
        self.note("healed")

    # -- the end -------------------------------------------------------------------------------
    def _final_checks(self) -> None:
        unfinished = [c.id for c in self.clients if not c.finished]
        if unfinished:
            raise Violation(f"liveness: clients {unfinished} did not finish within {self.cfg.heal:g} s of healing")
        # let every node apply what is committed, then compare
        for _ in range(200000):
            if not self.heap:
                break
            when, _r, _s, fn, args = heapq.heappop(self.heap)
            self.t = when
            if fn in (self._fault_tick,) or fn.__name__ == "start":
                continue
            fn(*args)
            if self._converged():
                break
        if not self._converged():
            raise Violation("replicas did not converge after healing: " + ", ".join(
                f"{n}={node.sm.applied_index if node else 'down'}" for n, node in self.nodes.items()))
        sent = {item for c in self.clients for item in c.sent}
        for nid, node in self.nodes.items():
            data = node.sm.root.data
            for key, items in data.items():
                if len(items) != len(set(items)):
                    dup = sorted({i for i in items if items.count(i) > 1})
                    raise Violation(f"{nid}: a command applied twice: {key} holds {dup[:3]}")
                strangers = set(items) - sent
                if strangers:
                    raise Violation(f"{nid}: {key} holds items no client sent: {sorted(strangers)[:3]}")
            present = {(k, i) for k, items in data.items() for i in items}
            for c in self.clients:
                for key, item in c.acked:
                    if (key, item) not in present:
                        raise Violation(f"{nid}: acknowledged command {item} on {key} is missing")
        # a push whose outcome its client never learned (an expired session) either is
        # in the final state or never took effect: only the former can be linearized,
        # and dropping the others keeps the search from trying every place for them
        history = [o for c in self.clients for o in c.history
                   if not (o.ret is None and o.op == "push" and tuple(o.arg) not in present)]
        try:
            verdict = check_history(ListsModel(), history, timeout=None, max_steps=self.LIN_STEPS)
        except LinearizabilityTimeout:
            raise Violation(f"linearizability unknown: the search took over {self.LIN_STEPS:,} steps") from None
        if not verdict.ok:
            raise Violation(f"the clients' history is not linearizable: {verdict.explanation[:2000]}")

    def _converged(self) -> bool:
        """A leader has committed everything in its log (its own term's entry included),
        and every node has applied exactly that."""
        nodes = list(self.nodes.values())
        if any(n is None for n in nodes):
            return False
        leaders = [n for n in nodes if n.machine.role == Role.LEADER]
        if len(leaders) != 1:
            return False
        log = leaders[0].core.log
        if log.committed < log.last_index() or log.term(log.committed) != leaders[0].core.term:
            return False
        return all(n.sm.applied_index == log.committed and not n.apply_q for n in nodes)


def run_seed(seed: int, cfg: RtConfig | None = None) -> tuple[bool, str]:
    """One seed: (ok, what went wrong with the tail of its trace)."""
    return check(RuntimeSim(seed, cfg))


def check(sim: RuntimeSim) -> tuple[bool, str]:
    """Run ``sim``: (ok, what went wrong with the tail of its trace)."""
    try:
        sim.run()
    except Violation as exc:
        return False, f"seed {sim.seed}: {exc}\n" + "\n".join(sim.trace[-40:])
    except Exception:  # noqa: BLE001 - the runtime itself failed: that fails the seed too
        import traceback
        return False, f"seed {sim.seed}: the runtime raised\n{traceback.format_exc()}" + "\n".join(sim.trace[-20:])
    return True, ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--nodes", type=int, default=3)
    args = ap.parse_args(argv)
    logging.disable(logging.CRITICAL)  # the nodes' own reports of the faults injected
    cfg = RtConfig(nodes=args.nodes)
    t0, cpu0 = _time.monotonic(), _time.process_time()
    steps = 0
    for seed in range(args.start, args.start + args.seeds):
        sim = RuntimeSim(seed, cfg)
        ok, why = check(sim)
        steps += sim.steps
        if not ok:
            print(why)
            print(f"reproduce: python -m replication.sim_runtime --seeds 1 --start {seed} --nodes {args.nodes}")
            return 1
    cpu = _time.process_time() - cpu0
    print(f"{args.seeds} seeds, 0 violations ({_time.monotonic() - t0:.1f} s; {steps:,} simulated events, "
          f"{steps / cpu:,.0f} per CPU second)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The simulator's fault schedule and operator actions, drawn per seed (swarm testing).

Kept apart from sim.py (which runs the event loop and the end-of-run checks). Each
seed draws a :class:`FaultPlan`: which fault kinds are on and how often each comes,
how fast faults follow one another, how long a crashed node stays down, how messages
are delayed. One fixed mix explores one region of schedules; drawing the mix per seed
(swarm testing, Groce et al. 2012) reaches schedules that need one kind of fault to be
frequent and the others rare, such as a leader crashing right after its election
several times in a row (the Figure 8 interleaving) or a voter restarting while
vote requests of its term are still in flight.

Beside the random faults, triggers crash a node on a protocol event, each with a
chance drawn per seed: ``crash_new_leader`` a node that just won an election,
``crash_after_commit`` a leader whose commit index just moved, ``crash_after_vote`` a
node that just sent a vote; at once or soon after. ``isolate_new_leader`` and
``isolate_after_commit`` cut such a leader off from some or all of its peers before
the messages of that moment leave (a new leader's no-op reaching a minority only,
the essence of the Figure 8 interleaving). And the fault ``crash_in_vote``
crashes a node in the middle of its next write of a term or vote. A crash may lose
the messages its node sent just before (``outbox``: still in its buffers).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from replication.config import RaftConfig
from replication.errors import RaftError
from replication.membership import ConfigChange
from replication.ready import Role
from replication.sim_workload import TICK

if TYPE_CHECKING:  # pragma: no cover
    import random

    from replication.sim_check import CheckedHost
    from replication.sim_host import SimHost

FAULTS = ("partition", "isolate_leader", "one_way", "clog", "lossy", "crash", "crash_leader", "pause", "crash_in_vote")
TRIGGERS = ("crash_new_leader", "crash_after_commit", "crash_after_vote", "isolate_new_leader", "isolate_after_commit")


def lease_skew(cfg: RaftConfig) -> int:
    """The largest per-node tick period offset (in 1/100 ticks) lease reads tolerate.

    A follower that answers a heartbeat refuses votes for at least election_tick - 1
    of its periods after receiving it; the leader reads on that answer for at most
    election_tick - lease_margin of its periods after sending it. With periods of
    TICK +- k: (et - margin) * (TICK + k) <= (et - 1) * (TICK - k).
    """
    et, margin = cfg.election_tick, cfg.lease_margin
    return max(0, TICK * (margin - 1) // (2 * et - margin - 1))


@dataclass
class FaultPlan:
    """One seed's fault mix. ``weights[kind]`` 0 means that kind is off."""

    weights: dict[str, int] = field(default_factory=dict)
    triggers: dict[str, float] = field(default_factory=dict)  # kind -> chance it fires on its event
    gap: tuple[int, int] = (3, 25)  # ticks between two faults
    down: tuple[int, int] = (100, 3000)  # time units a crashed node stays down
    torn_p: float = 0.5  # a crash tears the write in flight (or the next one)
    torn_window: int = 3  # ticks a crash aimed at the next write waits for it
    delay: tuple[int, int] = (1, 20)  # normal message delay, time units
    outbox: int = 0  # a crash loses the messages its node sent less than this long before

    @classmethod
    def draw(cls, rng: "random.Random", pauses: bool) -> "FaultPlan":
        """A random subset of the fault kinds at random rates; heal is always on."""
        weights = {k: (rng.choice((1, 2, 4)) if rng.random() < 0.7 else 0) for k in FAULTS}
        if not pauses:
            weights["pause"] = 0
        if not any(weights.values()):
            weights[rng.choice(FAULTS[:7])] = 2
        weights["heal"] = rng.choice((2, 5, 8))
        # after a commit, lower: a leader cut off after most commits makes no progress
        triggers = {k: rng.choice((0.05, 0.2) if "commit" in k else (0.1, 0.3, 0.6))
                    for k in TRIGGERS if rng.random() < 0.5}
        return cls(
            weights=weights,
            triggers=triggers,
            gap=rng.choice(((3, 25), (3, 25), (1, 8), (5, 40))),
            down=rng.choice(((100, 3000), (100, 3000), (5, 300))),
            torn_p=rng.choice((0.2, 0.5, 0.8)),
            torn_window=rng.choice((3, 3, 10, 30)),
            delay=rng.choice(((1, 20), (1, 20), (5, 80))),
            outbox=rng.choice((0, 0, 30, 100)),
        )

    def describe(self) -> str:
        on = ",".join([f"{k}:{w}" for k, w in self.weights.items() if w] + [f"{k}@{p}" for k, p in self.triggers.items()])
        return (f"faults={on} gap={self.gap} down={self.down} torn={self.torn_p} delay={self.delay} "
                f"outbox={self.outbox}")


class FaultsMixin:
    """The fault and operator half of :class:`replication.sim.Simulation`."""

    # ---------------------------------------------------------------- queries
    def _leader(self) -> "SimHost | None":
        best = None
        for i in self.ids:
            h = self.hosts[i]
            if h.node is not None and h.node.role == Role.LEADER and (best is None or h.node.term > best.node.term):
                best = h
        return best

    def disk_latency(self) -> int:
        """Time one Ready's write takes: often instant, else up to 1.5 ticks."""
        return 0 if self.rng.random() < 0.5 else self.rng.randint(1, 150)

    def restart_delay(self) -> int:
        return self.rng.randint(*self.plan.down)

    # ---------------------------------------------------------------- the schedule
    def _fault(self) -> None:
        if self.healed:
            return
        rng, net, now, plan = self.rng, self.net, self.now, self.plan
        self.schedule(now + rng.randint(*plan.gap) * TICK, "fault", None)
        ids = self.ids
        kinds = list(plan.weights)
        action = rng.choices(kinds, weights=[plan.weights[k] for k in kinds])[0]
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
                self.crash_node(victim.id, torn=rng.random() < plan.torn_p)
            return
        elif action == "crash_in_vote":
            self.crash_node(rng.choice(ids), torn=True, aim="vote")
            return
        elif action == "pause":
            self.pause_node(rng.choice(ids), rng.randint(3, 40))
            return
        self.count(action)
        self.trace(f"fault {action}: {net.describe()}")

    def _trigger(self, kind: str, node: str, within: int) -> bool:
        """With the seed's chance for ``kind``: crash ``node`` at once or within ``within``
        (``crash_*``), or cut it off (``isolate_*``) before this Ready's messages leave."""
        p = self.plan.triggers.get(kind)
        if not p or self.healed or self.rng.random() >= p:
            return False
        if kind.startswith("crash"):
            self.schedule(self.now + self.rng.choice((0, self.rng.randint(0, within))), "kill", node)
            return True
        others = [i for i in self.ids if i != node]
        cut = self.rng.sample(others, self.rng.randint(1, len(others)))
        for peer in cut:
            self.net.cut_one_way(node, peer)
            self.net.cut_one_way(peer, node)
        self.trace(f"{kind}: {node} cut off from {','.join(sorted(cut))}")
        return True

    def on_leader(self, host: "CheckedHost") -> None:
        """A node won an election: its no-op may reach only some peers, or none."""
        if not self._trigger("crash_new_leader", host.id, 3 * TICK):
            self._trigger("isolate_new_leader", host.id, 0)

    def on_commit(self, host: "CheckedHost") -> None:
        """A leader's commit index moved: the followers may not learn it."""
        if not self._trigger("crash_after_commit", host.id, TICK):
            self._trigger("isolate_after_commit", host.id, 0)

    def on_vote_granted(self, voter: str) -> None:
        """A granted vote leaves its voter (``crash_after_vote``)."""
        self._trigger("crash_after_vote", voter, TICK)

    # ---------------------------------------------------------------- operator actions
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

    # ---------------------------------------------------------------- fault primitives
    def crash_node(self, node_id: str, torn: bool, aim: str | None = None) -> None:
        """Crash now (tearing a write in flight), or during the node's next write
        (``aim="vote"``: its next write of a term or vote, the narrow window in which a
        vote already sent could be forgotten)."""
        victim = self.hosts[node_id]
        if victim.node is None:
            return
        self.count("crash")
        self.trace(f"fault crash {node_id} torn={torn}")
        if torn:
            if aim is None and self.rng.random() < 0.3:
                aim = "vote"
            victim.torn_next_write = aim or True
            window = self.plan.torn_window if aim == "vote" else 3
            self.schedule(self.now + window * TICK, "crash", node_id)
        else:
            victim.crash()
            self.schedule(self.now, "crash", node_id)

    def pause_node(self, node_id: str, ticks: int) -> None:
        if self.raft_cfg.lease_read:  # a paused leader's clock stops: leases assume no pauses
            self.trace(f"no pause of {node_id}: lease reads")
            return
        self.hosts[node_id].paused_until = self.now + ticks * TICK
        self.trace(f"fault pause {node_id} for {ticks} ticks")

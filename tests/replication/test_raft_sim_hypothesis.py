"""hypothesis drives the simulator: seeds as input, and fault schedules as a
rule-based state machine so that a failing schedule shrinks to a short one."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from replication.sim import SimConfig, Simulation, run_seed
from replication.sim_workload import TICK


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1), st.sampled_from([3, 5]))
def test_any_seed_is_safe_and_live(seed, nodes):
    run_seed(seed, SimConfig(nodes=nodes, steps=120))


class FaultSchedule(RuleBasedStateMachine):
    """Each rule is one fault or operator action; between them the cluster runs.
    Invariants are checked inside the simulator at every step; teardown heals
    everything and checks liveness, durability and linearizability."""

    sim: Simulation | None = None

    @initialize(seed=st.integers(min_value=0, max_value=2**32 - 1), nodes=st.sampled_from([3, 5]))
    def start(self, seed, nodes):
        self.sim = Simulation(seed, SimConfig(nodes=nodes, faults=False))
        self.sim.run_for(15)

    def _node(self, i: int) -> str:
        return self.sim.ids[i % len(self.sim.ids)]

    @rule(ticks=st.integers(min_value=1, max_value=40))
    def run(self, ticks):
        self.sim.run_for(ticks)

    @rule(mask=st.integers(min_value=1, max_value=30))
    def partition(self, mask):
        group = [n for i, n in enumerate(self.sim.ids) if mask >> i & 1]
        if len(group) < len(self.sim.ids):
            self.sim.net.partition(group)
            self.sim.trace(f"rule partition {group}")

    @rule()
    def isolate_leader(self):
        leader = self.sim._leader()
        if leader is not None:
            self.sim.net.isolate(leader.id)
            self.sim.trace(f"rule isolate leader {leader.id}")

    @rule(a=st.integers(0, 4), b=st.integers(0, 4))
    def cut_one_way(self, a, b):
        if self._node(a) != self._node(b):
            self.sim.net.cut_one_way(self._node(a), self._node(b))

    @rule(a=st.integers(0, 4), b=st.integers(0, 4), ticks=st.integers(1, 40))
    def clog(self, a, b, ticks):
        if self._node(a) != self._node(b):
            self.sim.net.clog(self._node(a), self._node(b), self.sim.now + ticks * TICK)

    @rule(loss=st.sampled_from([0.0, 0.1, 0.3]), dup=st.sampled_from([0.0, 0.1, 0.3]), reorder=st.sampled_from([0.0, 0.2]))
    def lossy(self, loss, dup, reorder):
        net = self.sim.net
        net.loss, net.dup, net.long_delay_p = loss, dup, reorder

    @rule()
    def heal_network(self):
        self.sim.net.heal()

    @rule(i=st.integers(0, 4), torn=st.booleans())
    def crash(self, i, torn):
        self.sim.crash_node(self._node(i), torn)

    @rule(torn=st.booleans())
    def crash_leader(self, torn):
        leader = self.sim._leader()
        if leader is not None:
            self.sim.crash_node(leader.id, torn)

    @rule(i=st.integers(0, 4), ticks=st.integers(1, 30))
    def pause(self, i, ticks):
        self.sim.pause_node(self._node(i), ticks)

    @rule(action=st.sampled_from(["membership", "transfer", "snapshot"]))
    def operator(self, action):
        self.sim.admin(action)

    @invariant()
    def time_moves(self):
        assert self.sim is None or self.sim.now >= 0

    def teardown(self):
        if self.sim is not None:
            self.sim.finish()


FaultSchedule.TestCase.settings = settings(
    max_examples=30, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_fault_schedules = FaultSchedule.TestCase

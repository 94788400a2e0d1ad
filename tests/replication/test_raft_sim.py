"""The deterministic simulator: CI seeds, determinism, and that violations are caught."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import replication.core as core
from replication.sim import SimConfig, Simulation, run_seed
from replication.sim_check import Violation

ROOT = Path(__file__).resolve().parents[2]


CI_SEEDS = 250  # 200 of 3 nodes, 50 of 5: about 17 s; the soak (docs/raft.md) runs thousands


def _ci_config(seed: int) -> SimConfig:
    return SimConfig(nodes=3, steps=400) if seed < CI_SEEDS * 4 // 5 else SimConfig(nodes=5, steps=300)


def test_ci_seeds():
    """The CI soak: CI_SEEDS seeds, four fifths of 3 nodes, the rest of 5, all faults on."""
    for seed in range(CI_SEEDS):
        try:
            run_seed(seed, _ci_config(seed))
        except Violation as v:
            from replication.sim import report
            pytest.fail(report(v, seed))


def test_same_seed_same_trace():
    a = run_seed(11, SimConfig(steps=200))
    b = run_seed(11, SimConfig(steps=200))
    assert a.trace_hash == b.trace_hash and a.stats == b.stats
    assert run_seed(12, SimConfig(steps=200)).trace_hash != a.trace_hash


def _hashes_in_subprocess(hash_seed: str) -> str:
    code = (
        "from replication.sim import run_seed, SimConfig\n"
        "print(' '.join(run_seed(s, SimConfig(nodes=n, steps=150)).trace_hash for s in range(4) for n in (3, 5)))"
    )
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_trace_does_not_depend_on_string_hash_order():
    assert _hashes_in_subprocess("0") == _hashes_in_subprocess("4242")


def test_cli_prints_summary_and_exits_zero():
    out = subprocess.run(
        [sys.executable, "-m", "replication.sim", "--seeds", "3", "--start", "7", "--steps", "100"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout == "3 seeds, 0 violations\n"


def test_cli_reports_first_violation_with_seed_invariant_and_trace():
    # a core that grants votes to any log: leader completeness must break quickly
    code = (
        "import sys, replication.raft_log as rl\n"
        "rl.RaftLog.is_up_to_date = lambda self, i, t: True\n"
        "from replication.sim import main\n"
        "sys.exit(main(['--seeds', '50', '--start', '0']))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1
    assert "VIOLATION seed=" in out.stdout and "invariant=" in out.stdout
    assert "trace lines" in out.stdout and "reproduce: python -m replication.sim" in out.stdout
    assert "seeds, 0 violations" not in out.stdout


def _first_violation(seeds, cfg=None) -> Violation | None:
    for seed in seeds:
        try:
            run_seed(seed, cfg)
        except Violation as v:
            return v
    return None


# The mutation tests below break one rule of the core and require the simulator to
# notice within a bounded number of seeds (it stops at the first violation).


def test_sim_catches_leader_counting_its_unpersisted_entries(monkeypatch):
    import replication.leader as leader

    orig_append, orig_propose = leader.LeaderMixin._append_leader, core.RaftNode.propose

    def self_ack(node, index):
        pr = node.prs.get(node.id)
        if pr is not None and pr.maybe_update(index):
            node._maybe_commit()

    def append_leader(self, ents):
        orig_append(self, ents)
        self_ack(self, ents[-1].index)

    def propose(self, data):
        index = orig_propose(self, data)
        self_ack(self, index)
        return index

    monkeypatch.setattr(leader.LeaderMixin, "_append_leader", append_leader)
    monkeypatch.setattr(core.RaftNode, "propose", propose)
    v = _first_violation(range(1000))
    assert v is not None and v.invariant in ("leader completeness", "state machine safety", "durability",
                                             "linearizability", "unsafe commit")


def test_sim_catches_async_writes_counted_when_queued_not_done(monkeypatch):
    # async storage writes: treating a write as durable when it is handed to the disk
    # (not when persisted() reports it) lets a leader count entries a crash then loses
    orig_advance = core.RaftNode.advance

    def advance(self, rd):
        orig_advance(self, rd)
        if self.cfg.async_storage_writes:
            self._stable(rd)

    monkeypatch.setattr(core.RaftNode, "advance", advance)
    v = _first_violation(range(1000))
    # usually first seen as the core reading "stable" entries that the disk lacks
    assert v is not None and v.invariant in ("core error", "leader completeness", "state machine safety",
                                             "durability", "linearizability", "unsafe commit")


@pytest.mark.parametrize("losers", [3, 2, 1])
def test_durability_check_compares_acknowledged_writes_with_the_replicas_disks(monkeypatch, losers):
    """Disks that lose the last acknowledged write (as disks lying about fsync would):
    the end-of-run check must report it once a majority of the voters lost it, and
    only then. (No faults, hence no snapshots: the write is a log entry everywhere.)"""
    final_checks = Simulation._final_checks

    def lose_then_check(sim):
        index = sim.acked[-1][0]
        for i in sim.ids[:losers]:
            sim.hosts[i].disk.truncate(index)
        final_checks(sim)

    monkeypatch.setattr(Simulation, "_final_checks", lose_then_check)
    cfg = SimConfig(faults=False, steps=100)
    if losers == 1:
        run_seed(3, cfg)  # two of three still hold it
        return
    with pytest.raises(Violation) as exc:
        run_seed(3, cfg)
    assert exc.value.invariant == "durability"


def test_sim_catches_a_host_that_acknowledges_writes_once_on_its_own_disk(monkeypatch):
    # the leader answers the client when the entry is on its own disk, not committed:
    # a leader deposed before replicating loses acknowledged writes
    import replication.sim_host as sim_host

    write = sim_host.SimHost._write

    def ack_on_local_write(host, ops):
        write(host, ops)
        for kind, e in ops:
            if kind == "append" and e.kind == 1 and e.index in host.pending:
                client, seq = host.pending.pop(e.index)
                host.sim.write_done(client, seq, None, e, host.id)

    monkeypatch.setattr(sim_host.SimHost, "_write", ack_on_local_write)
    seen = []
    for seed in range(100):
        try:
            run_seed(seed)
        except Violation as v:
            seen.append(v.invariant)
            if v.invariant == "durability":
                break
    assert "durability" in seen, seen


def test_a_linearizability_check_that_runs_out_of_budget_fails_the_seed(monkeypatch):
    """"Unknown" is not a pass: the seed fails with its own invariant name."""
    import replication.sim as sim
    from replication.linearizability import LinearizabilityTimeout

    def give_up(*args, **kwargs):
        raise LinearizabilityTimeout("search budget exhausted")

    monkeypatch.setattr(sim, "check_history", give_up)
    with pytest.raises(Violation) as exc:
        run_seed(3, SimConfig(faults=False, steps=100))
    assert exc.value.invariant == "linearizability unknown"
    assert "budget" in exc.value.detail


def test_an_unknown_verdict_is_reported_as_such_with_the_seed():
    from replication.sim import report

    with pytest.raises(Violation) as exc:  # a real search, cut short: the same on any machine
        run_seed(3, SimConfig(faults=False, steps=100, lin_steps=10))
    text = report(exc.value, 3)
    assert text.startswith("UNKNOWN seed=3 invariant=linearizability unknown")
    assert "budget of 10 steps" in text and "reproduce: python -m replication.sim" in text


def test_ci_seeds_vary_the_election_options_and_often_read_from_leases():
    sims = [Simulation(seed, _ci_config(seed)) for seed in range(CI_SEEDS)]
    options = [(s.raft_cfg.pre_vote, s.raft_cfg.check_quorum, s.raft_cfg.lease_read) for s in sims]
    # every valid combination (lease reads need check_quorum), each in a fair share
    for combo in [(p, q, r) for p in (True, False) for q in (True, False) for r in (True, False) if q or not r]:
        assert options.count(combo) >= CI_SEEDS // 20, (combo, options.count(combo))
    assert sum(r for _, _, r in options) >= CI_SEEDS * 3 // 10  # lease reads in at least 30% of the seeds
    first = sims[0].trace_tail().splitlines()[0]
    p, q, r = options[0]
    assert f"pre_vote={p} check_quorum={q} lease_read={r}" in first


def test_lease_seeds_serve_reads_from_the_lease(monkeypatch):
    import replication.leader as leader

    lease_valid, served = leader.LeaderMixin._lease_valid, []

    def counted(node):
        ok = lease_valid(node)
        served.append(ok)
        return ok

    monkeypatch.setattr(leader.LeaderMixin, "_lease_valid", counted)
    # Each seed draws its own fault mix (sim_faults.FaultPlan): a hostile one leaves a
    # leader little time to serve, so the lease seeds are judged together.
    seeds = [seed for seed in range(40) if Simulation(seed).raft_cfg.lease_read]
    counts = []
    for seed in seeds:
        served.clear()
        run_seed(seed, SimConfig(steps=100))
        counts.append(served.count(True))
    assert len(seeds) >= 8 and sum(counts) >= 60 and sum(c >= 10 for c in counts) >= 3, list(zip(seeds, counts))


def test_sim_uses_both_write_modes():
    modes = {Simulation(seed).raft_cfg.async_storage_writes for seed in range(20)}
    assert modes == {True, False}


def test_sim_catches_stale_reads(monkeypatch):
    import replication.leader as leader

    monkeypatch.setattr(leader.LeaderMixin, "_lease_valid", lambda self: True)  # reads skip the heartbeat round
    v = _first_violation(range(1000))
    assert v is not None and v.invariant == "linearizability"


def test_sim_catches_lost_liveness(monkeypatch):
    monkeypatch.setattr(core.RaftNode, "promotable", lambda self: False)  # nobody ever campaigns
    v = _first_violation(range(2), SimConfig(steps=50, heal_ticks=100))
    assert v is not None and v.invariant == "liveness"

"""The simulation of the runtime that ships (replication.sim_runtime) in CI: seeds with
every fault, and the guarantee that makes a failing seed worth having: it replays."""
from __future__ import annotations

import logging

import pytest

from replication.sim_runtime import RtConfig, RuntimeSim, run_seed

CI_SEEDS = 100  # about 20 s; the soak (docs/raft.md) runs thousands


@pytest.fixture(autouse=True)
def quiet():
    logging.disable(logging.CRITICAL)  # the nodes report every fault injected
    yield
    logging.disable(logging.NOTSET)


def test_seeds_of_the_shipped_runtime_under_faults_find_no_violation():
    failures = []
    for seed in range(CI_SEEDS):
        ok, why = run_seed(seed)
        if not ok:
            failures.append(why)
            break
    assert not failures, failures[0] + f"\nreproduce: python -m replication.sim_runtime --seeds 1 --start {seed}"


def test_five_nodes():
    for seed in range(20):
        ok, why = run_seed(seed, RtConfig(nodes=5))
        assert ok, why


def test_a_seed_replays_exactly():
    runs = []
    for _ in range(2):
        sim = RuntimeSim(7)
        sim.run()
        runs.append((sim.history.hexdigest(), sorted(sim.digests.items())))
    assert runs[0] == runs[1]
    assert RuntimeSim(8).run() is None


def test_the_simulation_catches_an_ack_sent_before_its_write(monkeypatch):
    """A sanity check that the harness can fail: acks leave before the fsync."""
    import replication.persist as persist

    def acks_first(storage, batch, send, report):
        for work in batch:
            for m in work.rd.persisted_messages:
                send(m.dst, persist.encode(m))
        persist.write_batch(storage, batch)
        report([work.seq for work in batch])

    monkeypatch.setattr(persist, "run_disk_batch", acks_first)
    found = next((seed for seed in range(300) if not run_seed(seed)[0]), None)
    assert found is not None, "300 seeds of a runtime acking before fsync passed"

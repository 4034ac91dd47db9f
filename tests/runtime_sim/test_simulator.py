"""The simulator drives the real machines; a fake trainer makes sums checkable."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.ids import JobId, NodeId
from tessera.protocol import Coordinator, RoundParams, make_strategy
from tessera.runtime.sim import DeviceModel, RoundStats, Simulation
from tessera.testing import TableTrainer

P = 4


def run(*, n=50, rounds=3, dropout=0.0, fraction=1.0, timeout=1e6, chunk=7, sps=50.0, seed=1):
    samples = np.random.default_rng(5).integers(1, 40, size=n).astype(np.int64)
    nodes = [NodeId(f"node-{i:06d}") for i in range(n)]
    params = RoundParams(
        job_id=JobId("j"), rounds=rounds, fraction=fraction, round_timeout=timeout, seed=seed
    )
    coord = Coordinator(params, nodes, np.zeros(P, np.float32), make_strategy("fedavg"))
    trainer = TableTrainer(samples, dim=P)
    devices = DeviceModel.sample(
        n, dropout=dropout, speed_sigma=0.5, samples_per_second=sps, seed=seed
    )
    stats: list[RoundStats] = []
    sim = Simulation(
        coord,
        nodes,
        trainer,
        devices,
        samples,
        local_epochs=1,
        seed=seed,
        chunk=chunk,
        on_round=stats.append,
    )
    weights = sim.run()
    return weights, stats, trainer, devices, samples


def test_rounds_aggregate_every_node_exactly() -> None:
    weights, stats, trainer, _, samples = run()
    mean = trainer.mean(np.ones(len(samples), bool))
    np.testing.assert_allclose(weights, 3 * mean, rtol=1e-5)
    assert [s.closed.participants for s in stats] == [50, 50, 50]
    assert max(trainer.calls) <= 7  # memory stays bounded by the chunk


def test_dropouts_leave_exactly_the_survivors() -> None:
    weights, stats, trainer, devices, _ = run(dropout=0.3, timeout=1e4)
    total = np.zeros(P)
    for r, s in enumerate(stats):
        alive = ~devices.dropped(r)
        assert s.closed.participants == alive.sum()
        assert s.dropped == (~alive).sum() > 0
        total += trainer.mean(alive)
    np.testing.assert_allclose(weights, total, rtol=1e-5)


def test_slow_devices_miss_the_deadline() -> None:
    # ~20 samples at 50/s with speed spread: many take longer than 0.6 s
    _, stats, *_ = run(rounds=2, timeout=0.6, sps=50.0)
    s = stats[0]
    # round 0's stragglers arrive during round 1 and are refused there
    assert any("round 0 is not open" in r for r in stats[1].rejected)
    assert 0 < s.closed.participants < 50
    assert s.late == 50 - s.closed.participants


def test_same_seed_same_run_and_bytes_are_counted() -> None:
    a, sa, *_ = run(dropout=0.2, fraction=0.5, timeout=1e4)
    b, sb, *_ = run(dropout=0.2, fraction=0.5, timeout=1e4)
    np.testing.assert_array_equal(a, b)
    assert [s.closed.participants for s in sa] == [s.closed.participants for s in sb]
    assert all(s.bytes_down > 25 * P * 4 and s.bytes_up > 0 for s in sa)


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_result_does_not_depend_on_chunking(chunk: int) -> None:
    a, *_ = run(chunk=chunk, dropout=0.1)
    b, *_ = run(chunk=50, dropout=0.1)
    np.testing.assert_allclose(a, b, rtol=1e-6)

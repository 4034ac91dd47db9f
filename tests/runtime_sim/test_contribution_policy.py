"""Secure rounds act on the policy's verdicts with no update seen: an excluded
contributor holds no seat, a weight factor travels to the contributor, and the
total is the factor-weighted mean of the rest's updates."""

from __future__ import annotations

import numpy as np

from tessera.ids import JobId, NodeId
from tessera.protocol import RoundParams, make_strategy
from tessera.protocol.events import ContributorsRated
from tessera.protocol.secure_coordinator import SecureParams
from tessera.protocol.topology import TreeParams
from tessera.runtime.sim import DeviceModel, RoundStats, Simulation
from tessera.runtime.sim.secure import build_secure
from tessera.testing import TableTrainer

N, P = 24, 4
SECURE = SecureParams(
    tree=TreeParams(k=2, group_size=4, fan_in=3, min_group=2, backups=1),
    clip=100.0,
    max_weight=1.0,
)


def test_secure_rounds_leave_out_the_excluded_and_weigh_the_rest() -> None:
    samples = np.ones(N, np.int64)
    nodes = [NodeId(f"node-{i:06d}") for i in range(N)]
    trainer = TableTrainer(samples, dim=P, seed=5)
    coordinator, machines = build_secure(
        nodes,
        params=RoundParams(job_id=JobId("policy"), rounds=2, round_timeout=1e4),
        secure=SECURE,
        initial_weights=np.zeros(P, np.float32),
        strategy=make_strategy("fedavg"),
        seed=0,
    )
    out, factors = [3, 11], {nodes[i]: 0.25 * (1 + i % 4) for i in range(N)}
    verdict = ContributorsRated(
        excluded={nodes[i]: "harm" for i in out},
        weights={n: f for n, f in factors.items() if f < 1},
    )
    coordinator.handle(verdict, 0.0)  # before the start: it holds from round 0
    stats: list[RoundStats] = []
    Simulation(
        coordinator,
        nodes,
        trainer,
        DeviceModel.sample(N, dropout=0.0, speed_sigma=0.0, samples_per_second=50, seed=0),
        samples,
        local_epochs=1,
        seed=0,
        on_round=stats.append,
        machines=machines,
    ).run()
    first = stats[0].closed
    kept = [i for i in range(N) if i not in out]
    assert sorted(first.included) == [nodes[i] for i in kept]
    assert first.excluded == tuple((nodes[i], "harm") for i in out)
    assert stats[1].closed.excluded == ()  # named once, in the first round without them
    f = np.array([factors[nodes[i]] for i in kept])
    expected = (f[:, None] * trainer.table[kept]).sum(axis=0) / f.sum()
    np.testing.assert_allclose(first.weights, expected, atol=1e-4)

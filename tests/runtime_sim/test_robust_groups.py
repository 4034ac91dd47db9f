"""A robust combination of group sums: hostile contributors outvoted, with no update seen."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tessera.errors import ConfigError
from tessera.ids import JobId, NodeId
from tessera.protocol import RoundParams, make_strategy
from tessera.protocol.secure_coordinator import SecureParams
from tessera.protocol.topology import TreeParams
from tessera.runtime.sim import DeviceModel, RoundStats, Simulation
from tessera.runtime.sim.secure import build_secure
from tessera.testing import TableTrainer

N, P = 48, 5
SECURE = SecureParams(
    tree=TreeParams(k=2, group_size=4, fan_in=3, min_group=2, backups=1),
    clip=10.0,
    max_weight=1.0,
    group_sums=True,
)


def one_round(secure: SecureParams, hostile: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The new model after one round, and the honest contributors' mean update."""
    samples = np.ones(N, np.int64)
    nodes = [NodeId(f"node-{i:06d}") for i in range(N)]
    trainer = TableTrainer(samples, dim=P, seed=3)
    trainer.table[hostile] = -50.0  # scaled updates, clipped to norm 10 by their nodes
    coordinator, machines = build_secure(
        nodes,
        params=RoundParams(job_id=JobId("robust"), rounds=1, round_timeout=1e4),
        secure=secure,
        initial_weights=np.zeros(P, np.float32),
        strategy=make_strategy("fedavg"),
        seed=0,
    )
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
    honest = np.delete(trainer.table, hostile, axis=0).mean(axis=0)
    return stats[0].closed.weights, honest


@pytest.mark.parametrize("combine", ["median", "trimmed_mean"])
def test_a_robust_combination_outvotes_a_few_hostile_contributors(combine: str) -> None:
    hostile = [0, 7, 19]  # in at most 3 of the 12 leaf groups
    plain, honest = one_round(SECURE, hostile)
    robust, _ = one_round(replace(SECURE, combine=combine, trim=0.3), hostile)
    assert np.linalg.norm(robust - honest) < 0.5 * np.linalg.norm(plain - honest)


def test_on_clean_data_a_robust_combination_stays_near_the_mean() -> None:
    plain, honest = one_round(SECURE, [])
    robust, _ = one_round(replace(SECURE, combine="median"), [])
    np.testing.assert_allclose(plain, honest, atol=1e-3)
    assert np.linalg.norm(robust - honest) < 0.5 * np.linalg.norm(honest) + 0.2


def test_a_robust_combination_needs_group_sums() -> None:
    with pytest.raises(ConfigError, match="needs group sums"):
        replace(SECURE, group_sums=False, combine="median")
    with pytest.raises(ConfigError, match="unknown combination"):
        replace(SECURE, combine="mode")

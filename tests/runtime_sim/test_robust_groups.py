"""A robust combination of group sums: hostile contributors outvoted, with no update seen."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tessera.errors import ConfigError
from tessera.protocol.secure_coordinator import SecureParams
from tessera.protocol.topology import TreeParams
from tessera.testing import TableTrainer, table_rounds

N, P = 48, 5
SECURE = SecureParams(
    tree=TreeParams(k=2, group_size=4, fan_in=3, min_group=2, backups=1),
    clip=10.0,
    max_weight=1.0,
    group_sums=True,
)


def one_round(secure: SecureParams, hostile: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The new model after one round, and the honest contributors' mean update."""
    trainer = TableTrainer(np.ones(N, np.int64), dim=P, seed=3)
    trainer.table[hostile] = -50.0  # scaled updates, clipped to norm 10 by their nodes
    (stats,) = table_rounds(trainer, secure, job_id="robust")  # the trees placing them
    honest = np.delete(trainer.table, hostile, axis=0).mean(axis=0)
    return stats.closed.weights, honest


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

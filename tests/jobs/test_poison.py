"""Simulated poison: who is corrupted, and how, is what the job file says, drawn once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tessera.config import JobConfig, PoisonSection, load_config
from tessera.jobs.prepared import PreparedJob, prepare_job
from tessera.runtime.sim.poison import ScaledUpdates
from tessera.training import BatchedTrainer

EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "tessera" / "examples"


def _config(**poison: object) -> JobConfig:
    cfg = load_config(EXAMPLES / "digits.toml")
    sim = cfg.simulation.model_copy(update={"poison": PoisonSection(**poison)})  # type: ignore[arg-type]
    return cfg.model_copy(update={"simulation": sim})


@pytest.fixture(scope="module")
def clean() -> PreparedJob:
    return prepare_job(_config())


def _rows(job: PreparedJob, node: int) -> slice:
    return slice(int(job.offsets[node]), int(job.offsets[node + 1]))


def test_flipped_labels_are_mirrored_on_the_chosen_nodes_only(clean: PreparedJob) -> None:
    job = prepare_job(_config(fraction=0.2, scaled_fraction=0.05))
    assert len(job.corrupted) == 20 and len(job.scaled) == 5
    assert not set(job.corrupted) & set(job.scaled)
    assert job.corrupted == prepare_job(_config(fraction=0.2, scaled_fraction=0.05)).corrupted
    for node in range(job.n_nodes):
        rows = _rows(job, node)
        if node in job.corrupted:
            np.testing.assert_array_equal(job.y[rows], 9 - clean.y[rows])
        else:
            np.testing.assert_array_equal(job.y[rows], clean.y[rows])
    np.testing.assert_array_equal(job.x, clean.x)  # labels only


def test_noisy_features_replace_the_chosen_nodes_inputs(clean: PreparedJob) -> None:
    job = prepare_job(_config(fraction=0.2, kind="noise_features"))
    np.testing.assert_array_equal(job.y, clean.y)
    for node in range(job.n_nodes):
        same = np.array_equal(job.x[_rows(job, node)], clean.x[_rows(job, node)])
        assert same == (node not in job.corrupted or job.offsets[node] == job.offsets[node + 1])


def test_a_scaled_node_sends_its_update_times_the_scale(clean: PreparedJob) -> None:
    trainer = BatchedTrainer(clean.spec, clean.recipe, clean.x, clean.y, clean.offsets)
    scaled = ScaledUpdates(trainer, [1, 3], -10.0)
    nodes = np.array([0, 1, 2, 3])
    honest = trainer.train(clean.initial_weights, nodes, 5)
    hostile = scaled.train(clean.initial_weights, nodes, 5)
    np.testing.assert_array_equal(hostile.deltas[[0, 2]], honest.deltas[[0, 2]])
    np.testing.assert_allclose(hostile.deltas[[1, 3]], -10 * honest.deltas[[1, 3]], rtol=1e-6)

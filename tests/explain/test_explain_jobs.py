"""The job adapters on the image example and on a column that is not a feature."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.errors import DataError
from tessera.explain import job as explain
from tessera.jobs.prepared import PreparedJob, prepare_job
from tessera.testing import chem97_job, example_config


@pytest.fixture(scope="module")
def chem97() -> PreparedJob:
    return chem97_job(nodes=2, rounds=1)


def test_the_digits_model_has_a_saliency_map_and_a_feature_per_pixel() -> None:
    job = prepare_job(example_config("digits.toml"))
    weights = job.initial_weights
    sal = explain.saliency(job, weights, rows=100)
    assert sal.shape == (8, 8) and np.isfinite(sal).all() and sal.max() > 0
    assert len(explain.features_of(job)) == 64


def test_a_tabular_model_has_no_saliency_map(chem97: PreparedJob) -> None:
    with pytest.raises(DataError, match="image"):
        explain.saliency(chem97, chem97.initial_weights)


def test_groups_may_be_any_column_of_the_held_out_rows(chem97: PreparedJob) -> None:
    job = chem97
    encoded, lea = explain.held_out_groups(job, "lea")
    np.testing.assert_array_equal(encoded.x, job.test.x)
    np.testing.assert_array_equal(encoded.y, job.test.y)
    assert len(lea) == len(job.test) and len(set(lea)) > 1
    table = explain.fairness(job, job.initial_weights, "lea", min_count=20)
    assert sum(r.count for r in table.rows) == len(job.test) and table.gap >= 0
    with pytest.raises(DataError, match="nowhere"):
        explain.held_out_groups(job, "nowhere")

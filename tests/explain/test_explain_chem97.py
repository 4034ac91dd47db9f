"""Importance, attributions and fairness by gender on the Chem97 example, trained centrally."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tessera.explain import job as explain
from tessera.jobs.prepared import PreparedJob, prepare_job
from tessera.testing import example_config
from tessera.training import build_module, layout, module_weights
from tessera.weights import Vector


@pytest.fixture(scope="module")
def trained() -> tuple[PreparedJob, Vector]:
    job = prepare_job(example_config())
    module = build_module(job.spec, job.initial_weights)
    x, y = torch.as_tensor(job.x), torch.as_tensor(job.y)
    opt = torch.optim.Adam(module.parameters(), lr=0.01)
    order = np.random.default_rng(0).permutation(len(x))
    for lo in range(0, len(x), 256):  # one epoch
        at = torch.as_tensor(order[lo : lo + 256])
        opt.zero_grad()
        torch.nn.functional.cross_entropy(module(x[at]), y[at]).backward()
        opt.step()
    return job, layout(job.spec).flatten(module_weights(module))


def test_gcsescore_is_what_the_chem97_model_relies_on(trained: tuple[PreparedJob, Vector]) -> None:
    job, weights = trained
    assert [f.name for f in explain.features_of(job)] == ["gcsescore", "gender", "age"]
    table = explain.importance(job, weights, repeats=3, rows=2000)
    assert table.metric == "accuracy" and table.baseline > 0.3  # 6 grades
    assert all(math.isfinite(r.mean) and math.isfinite(r.std) for r in table.rows)
    assert table.ranking[0] == "gcsescore"
    assert table["gcsescore"].mean > 0.1 > abs(table["age"].mean)
    attr = explain.attributions(job, weights, rows=500)
    assert attr.ranking[0] == "gcsescore"
    assert all(math.isfinite(r.mean_abs) for r in attr.rows)


def test_chem97_metrics_by_gender(trained: tuple[PreparedJob, Vector]) -> None:
    job, weights = trained
    table = explain.fairness(job, weights, "gender")
    assert {r.group for r in table.rows} == {"F", "M"}
    assert sum(r.count for r in table.rows) == len(job.test)
    for r in table.rows:
        assert 0 < r.metric < 1 and 0 <= r.mean_prediction <= 10 and 0 <= r.mean_label <= 10
    assert 0 <= table.gap < 0.2 and math.isfinite(table.prediction_gap)
    assert {table.best, table.worst} == {"F", "M"}

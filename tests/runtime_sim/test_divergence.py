"""Divergence is visible (issue 12): a non-finite loss or model stops the job with a reason.

Before, the coordinator applied a NaN update and went on: every later round
trained from a lost model, and the run ended "finished" with NaN weights.
"""

from __future__ import annotations

import numpy as np

from tessera.config import parse_config
from tessera.jobs.prepared import prepare_job
from tessera.runtime.sim.job import simulate


def _job(lr: float) -> dict[str, object]:
    return {
        "job": {"name": "digits", "task": "classification", "seed": 1},
        "data": {"source": "sklearn", "dataset": "digits", "target": "target"},
        "partition": {"scheme": "iid", "nodes": 8},
        "model": {"kind": "linear"},
        "recipe": {"lr": lr, "optimizer": "sgd", "batch_size": 16},
        "federation": {"rounds": 6},
        "secure": {"enabled": False},
        "baseline": {"enabled": False},
    }


def test_a_diverging_job_stops_with_the_last_finite_model_and_says_why() -> None:
    job = prepare_job(parse_config(_job(lr=1e30)))
    result = simulate(job)
    assert result.error is not None
    assert "training diverged in round" in result.error and "recipe.lr" in result.error
    assert len(result.rounds) < 6  # it stopped: no round trained from a lost model
    assert np.isfinite(result.weights).all()


def test_a_sane_job_has_no_error() -> None:
    result = simulate(prepare_job(parse_config(_job(lr=0.05))))
    assert result.error is None and len(result.rounds) == 6

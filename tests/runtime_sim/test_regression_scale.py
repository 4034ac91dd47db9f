"""A regression target on its raw scale trains (issue 12): sklearn's diabetes, mean 152.

Before the target was standardized, this job ended at R^2 -0.48 (worse than
predicting the mean); the same job, same defaults, now learns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tessera.config import parse_config
from tessera.jobs.prepared import prepare_job
from tessera.reports import build_metrics
from tessera.runtime.sim.job import centralized, simulate

JOB = {
    "job": {"name": "diabetes", "task": "regression", "seed": 1},
    "data": {
        "source": "sklearn",
        "dataset": "diabetes",
        "target": "target",
        "holdout": {"fraction": 0.2},
    },
    "partition": {"scheme": "iid", "nodes": 10},
    "model": {"kind": "linear"},
    "recipe": {"lr": 0.05, "batch_size": 16, "clip_norm": 5.0},
    "federation": {"rounds": 20},
    "secure": {"enabled": False},
    "baseline": {"enabled": False},
}


def test_a_raw_scale_regression_target_trains_with_the_defaults() -> None:
    job = prepare_job(parse_config(JOB))
    assert job.test.y.std() < 2  # the held-out target is on the standardized scale too
    result = simulate(job)
    assert result.rounds[-1].value > 0.4  # R^2: same on either scale


def _diabetes_csv(path: Path, scale: float) -> dict[str, Any]:
    from sklearn.datasets import load_diabetes

    df = load_diabetes(as_frame=True).frame
    df["target"] = df["target"] * scale
    df.to_csv(path, index=False)
    data = {**JOB["data"], "source": "csv", "dataset": str(path)}
    baseline = {"enabled": True, "epochs": 3}
    return {**JOB, "data": data, "federation": {"rounds": 5}, "baseline": baseline}


def test_rmse_and_mae_are_reported_on_the_targets_own_scale(tmp_path: Path) -> None:
    """The same job on the target and on 100 x the target: R^2 equal, RMSE and MAE 100x."""
    runs, targets = {}, {}
    for scale in (1.0, 100.0):
        job = prepare_job(parse_config(_diabetes_csv(tmp_path / f"d{scale:g}.csv", scale)))
        result, baseline = simulate(job), centralized(job)
        runs[scale] = build_metrics(job, result.rounds, baseline, status="finished")
        assert job.preprocessor is not None
        targets[scale] = job.preprocessor.target_from_model(job.test.y)
    one, hundred = runs[1.0], runs[100.0]
    assert hundred["final"]["value"] == pytest.approx(one["final"]["value"], abs=1e-4)
    for entry in ("final", "centralized"):
        for error in ("rmse", "mae"):
            assert one[entry][error] > 10  # diabetes progression, std 77: not the model's scale
            assert hundred[entry][error] == pytest.approx(100 * one[entry][error], rel=1e-3)
    last = hundred["rounds"][-1]
    assert (last["rmse"], last["mae"]) == (hundred["final"]["rmse"], hundred["final"]["mae"])
    # On the held-out targets' own scale: RMSE^2 = (1 - R^2) * their variance.
    for scale, m in runs.items():
        variance = float(np.var(targets[scale]))
        assert m["final"]["rmse"] ** 2 == pytest.approx((1 - m["final"]["value"]) * variance)


def test_a_classifier_reports_no_regression_errors() -> None:
    raw = {
        **JOB,
        "job": {"name": "digits", "task": "classification", "seed": 1},
        "data": {"source": "sklearn", "dataset": "digits", "target": "target"},
        "federation": {"rounds": 1},
    }
    job = prepare_job(parse_config(raw))
    m = build_metrics(job, simulate(job).rounds, None, status="finished")
    assert m["final"]["rmse"] is None and m["final"]["mae"] is None
    assert m["rounds"][0]["rmse"] is None

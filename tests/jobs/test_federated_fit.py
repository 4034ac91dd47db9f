"""Preprocessing fitted from federated statistics: the nodes' counts, never pooled rows.

``prepare_job(cfg, totals_of=...)`` learns every number of the preprocessing
(scales, imputation values, categories, classes, a derived target's median)
from the total of each node's own statistics: in the clear for plaintext
jobs, by the secure aggregation of training rounds otherwise. The pooled fit
is the reference: the same categories and classes, the same rows, scales
within the statistics round's precision, a median within the sketch's 1%.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tessera.config import JobConfig, parse_config
from tessera.data.federated import RELATIVE_ACCURACY, plain_totals
from tessera.data.statistics import StatisticsPlan, Totals
from tessera.jobs.prepared import PreparedJob, prepare_job
from tessera.runtime.sim.statistics import totals_for


@pytest.fixture(scope="module")
def csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 schools; a score in the hundreds, a feature often missing, a category."""
    rng = np.random.default_rng(5)
    n = 900
    frame = pd.DataFrame(
        {
            "school": np.repeat(np.arange(30), n // 30),
            "score": rng.normal(500, 80, n).round(),
            "hours": rng.uniform(0, 10, n),
            "lang": rng.choice(["en", "fr", "de"], n, p=[0.6, 0.3, 0.1]),
        }
    )
    frame.loc[rng.random(n) < 0.35, "hours"] = np.nan
    path = tmp_path_factory.mktemp("federated") / "table.csv"
    frame.to_csv(path, index=False)
    return path


def config(path: Path, **overrides: Any) -> JobConfig:
    raw: dict[str, Any] = {
        "job": {"name": "fed", "task": "classification", "seed": 4},
        "data": {
            "source": "csv",
            "dataset": str(path),
            "target": "high",
            "features": ["hours", "lang", "score"],
            "categorical": ["lang"],
            "holdout": {"by": "school", "fraction": 0.2},
            "derive": [{"name": "high", "expr": "score > median(score)"}],
            "missing": {"columns": {"hours": "impute"}},
        },
        "partition": {"scheme": "natural", "column": "school"},
        "model": {"kind": "linear"},
        "recipe": {"clip_norm": 5.0},
        "secure": {"group_size": 4, "k": 3},
        "federation": {"rounds": 1},
    }
    raw.update(overrides)
    return parse_config(raw)


def columns(job: PreparedJob) -> dict[str, Any]:
    assert job.preprocessor is not None
    return {c.name: c for c in job.preprocessor.columns}


def assert_like_pooled(fed: PreparedJob, pooled: PreparedJob, *, tolerance: float) -> None:
    assert fed.preprocessor is not None and pooled.preprocessor is not None
    assert fed.classes == pooled.classes
    assert fed.feature_names == pooled.feature_names
    np.testing.assert_array_equal(fed.node_samples, pooled.node_samples)  # the same rows
    got, want = columns(fed), columns(pooled)
    for name in ("hours", "score"):
        assert got[name].mean == pytest.approx(want[name].mean, rel=tolerance)
        assert got[name].std == pytest.approx(want[name].std, rel=tolerance)
    assert got["hours"].fill == pytest.approx(want["hours"].fill, rel=tolerance)  # imputed
    assert got["lang"].categories == want["lang"].categories
    (fed_median,) = [v for _, v in fed.preprocessor.derive[0].statistics]
    (pooled_median,) = [v for _, v in pooled.preprocessor.derive[0].statistics]
    assert fed_median == pytest.approx(pooled_median, rel=RELATIVE_ACCURACY)


def test_clear_totals_fit_what_pooled_rows_fit(csv: Path) -> None:
    cfg = config(csv)
    fed = prepare_job(cfg, totals_of=plain_totals)
    assert_like_pooled(fed, prepare_job(cfg), tolerance=1e-9)
    assert fed.statistics is not None
    assert (fed.statistics.rounds, fed.statistics.secure) == (2, False)  # median, then the rest
    assert fed.statistics.nodes == fed.n_nodes


def test_secure_totals_fit_within_the_rounds_precision(csv: Path) -> None:
    cfg = config(csv)
    fed = prepare_job(cfg, totals_of=totals_for(cfg, secure=True))
    assert_like_pooled(fed, prepare_job(cfg), tolerance=1e-6)
    assert fed.statistics is not None and fed.statistics.secure


def test_each_node_counts_only_the_rows_it_holds(csv: Path) -> None:
    """The totals function gets one vector per node (what each node counted of its own
    rows), never the pooled rows: the rows each vector counts are that node's."""
    seen: list[np.ndarray] = []

    def spy(plan: StatisticsPlan, vectors: np.ndarray) -> Totals:
        seen.append(vectors)
        return plain_totals(plan, vectors)

    data = {"source": "csv", "dataset": str(csv), "target": "lang", "features": ["hours"]}
    cfg = config(csv, data={**data, "missing": {"default": "impute"}})
    job = prepare_job(cfg, totals_of=spy)
    assert len(seen) == 1  # no derived statistics: one round
    (vectors,) = seen
    assert vectors.shape[0] == job.n_nodes
    counted = vectors[:, 0] + vectors[:, 1]  # the first column's present and missing values
    np.testing.assert_array_equal(counted, job.node_samples)


def test_tessera_run_fits_from_secure_statistics(csv: Path, tmp_path: Path) -> None:
    from tessera.cli.main import _run

    job_file = tmp_path / "job.toml"
    job_file.write_text(
        f"""
[job]
name = "fed"
task = "classification"
[data]
source = "csv"
dataset = "{csv}"
target = "high"
features = ["hours", "lang"]
categorical = ["lang"]
missing = {{ default = "impute" }}
[[data.derive]]
name = "high"
expr = "score > median(score)"
[partition]
scheme = "natural"
column = "school"
[model]
kind = "linear"
[recipe]
clip_norm = 5.0
[secure]
group_size = 4
[federation]
rounds = 2
"""
    )
    _run(job_file, tmp_path / "out", None, True, False)
    import json

    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    stats = m["statistics"]
    assert (stats["rounds"], stats["nodes"], stats["secure"]) == (2, m["nodes"], True)
    # What the nodes' totals say, per column: aggregates only, the pooled rows' figures.
    rows = pd.read_csv(csv)
    hours = stats["columns"]["hours"]
    assert hours["count"] + hours["missing"] == stats["columns"]["lang"]["missing"] + sum(
        stats["columns"]["lang"]["counts"].values()
    )
    assert hours["min"] >= 0 and hours["max"] <= 10 * 1.05  # the report sketch: 5%
    assert hours["count"] < rows["hours"].notna().sum()  # the holdout's rows are not counted
    assert set(stats["columns"]["lang"]["counts"]) == {"de", "en", "fr"}
    assert stats["columns"]["score"]["median"] == pytest.approx(
        rows["score"].median(), rel=0.05
    )  # the first round's: the derived target's median

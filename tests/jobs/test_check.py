"""``check_job``: the warnings a first run on a new table needs, before any training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tessera.config import JobConfig, parse_config
from tessera.ids import Task
from tessera.jobs.check import check_job


def _job(path: Path, **data: object) -> JobConfig:
    return parse_config(
        {
            "job": {"name": "t", "task": "regression"},
            "data": {
                "source": "csv",
                "dataset": str(path),
                "target": "score",
                "features": ["hours", "flat"],
                "holdout": {"fraction": 0.0},
                **data,
            },
            "partition": {"scheme": "natural", "column": "school"},
            "model": {"kind": "linear"},
            "recipe": {"clip_norm": 5.0},
            "federation": {"rounds": 1},
            "baseline": {"enabled": False},
        }
    )


def test_a_raw_scale_target_missing_fields_and_a_constant_column_are_named(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    n = 200
    frame = pd.DataFrame(
        {
            "school": np.repeat(np.arange(20), n // 20),
            "hours": rng.uniform(0, 10, n),
            "flat": 1.0,
            "score": rng.normal(500, 100, n),  # a raw scale: the model would learn nothing
        }
    )
    frame.loc[::4, "hours"] = np.nan  # a quarter of the rows miss a field
    frame.loc[frame["school"] == 0, "school"] = 99  # one school, then a tiny one
    frame.loc[frame.index[:3], "school"] = 98
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    report = check_job(_job(path))
    assert report.task is Task.REGRESSION
    assert report.rows == n and report.usable_rows == n - 50
    text = " | ".join(report.warnings)
    assert "50 of 200 rows (25%) miss a field the job uses (hours)" in text
    assert "raw scale" in text and "standardise" in text
    assert "constant column(s) flat" in text
    assert "fewer than 5 records" in text
    assert sum(report.node_sizes) == report.usable_rows
    assert sum(n for _, _, n in report.size_histogram()) == len(report.node_sizes)
    roles = {c.name: c.role for c in report.columns}
    assert roles == {
        "school": "partition",
        "hours": "feature",
        "flat": "feature",
        "score": "target",
    }


def test_a_tidy_table_has_no_warnings(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 200
    frame = pd.DataFrame(
        {
            "school": np.repeat(np.arange(10), n // 10),
            "hours": rng.uniform(0, 1, n),
            "flat": rng.uniform(0, 1, n),
            "score": rng.normal(0, 1, n),
        }
    )
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    report = check_job(_job(path))
    assert report.warnings == ()
    assert set(report.target_summary) == {"mean", "std", "min", "max"}

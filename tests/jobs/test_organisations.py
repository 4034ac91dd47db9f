"""``secure.organisation_column``: each node's organisation, for natural and per-record jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tessera.config import parse_config
from tessera.errors import ConfigError
from tessera.jobs.prepared import prepare_job
from tessera.runtime.sim.job import simulate

N = 60


def _table(tmp_path: Path) -> Path:
    """Record i: feature ``x`` = i, organisation ``org-{i % 4}``, school ``s{i // 6}``.

    Every seventh record has a missing feature ``z`` (dropped), and record 5's
    organisation is missing.
    """
    i = np.arange(N)
    df = pd.DataFrame(
        {
            "x": i.astype(float),
            "z": np.where(i % 7 == 3, np.nan, 1.0 * (i % 5)),
            "org": [f"org-{k % 4}" for k in i],
            "school": [f"s{k // 6:02d}" for k in i],
            "y": (i % 2).astype(int),
        }
    )
    df.loc[5, "org"] = None
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    return path


def _config(path: Path, partition: dict[str, Any], **secure: Any) -> Any:
    return parse_config(
        {
            "job": {"name": "orgs", "task": "classification", "seed": 1},
            "data": {
                "source": "csv",
                "dataset": str(path),
                "target": "y",
                "features": ["x", "z"],
                "standardize": False,
                "holdout": {"fraction": 0},
            },
            "partition": partition,
            "model": {"kind": "linear"},
            "recipe": {"clip_norm": 1.0},
            "federation": {"rounds": 2, "min_participants": 1},
            "baseline": {"enabled": False},
            "secure": secure,
        }
    )


def test_per_record_nodes_take_their_records_organisation(tmp_path: Path) -> None:
    cfg = _config(_table(tmp_path), {"scheme": "per_record"}, organisation_column="org")
    job = prepare_job(cfg)
    kept = [i for i in range(N) if i % 7 != 3]
    assert job.n_nodes == len(kept)  # the records with a missing feature are no nodes
    assert job.organisations is not None and len(job.organisations) == job.n_nodes
    for node, org in enumerate(job.organisations):
        record = int(job.x[node, 0])  # feature x is the record's number
        assert org == (None if record == 5 else f"org-{record % 4}")
    assert job.first_nodes(10).organisations == job.organisations[:10]


def test_a_secure_per_record_run_seats_organisations(tmp_path: Path) -> None:
    cfg = _config(
        _table(tmp_path), {"scheme": "per_record"}, organisation_column="org", group_size=6
    )
    job = prepare_job(cfg)
    result = simulate(job, secure=True)
    assert result.error is None and len(result.rounds) == 2
    assert all(r.participants > 0 for r in result.rounds)


def test_natural_partitions_keep_their_checks(tmp_path: Path) -> None:
    path = _table(tmp_path)
    natural = {"scheme": "natural", "column": "school"}
    with pytest.raises(ConfigError, match="some school spans several org") as err:
        prepare_job(_config(path, natural, organisation_column="org"))
    assert err.value.field == "secure.organisation_column"
    job = prepare_job(_config(path, natural, organisation_column="school"))
    assert job.organisations == job.node_names  # each school its own organisation


@pytest.mark.parametrize(
    ("partition", "column", "message"),
    [
        ({"scheme": "iid", "nodes": 5}, "org", "needs a natural or a per_record partition"),
        ({"scheme": "per_record"}, "nope", "nope"),
    ],
)
def test_refused_organisation_columns_name_the_field(
    tmp_path: Path, partition: dict[str, Any], column: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        prepare_job(_config(_table(tmp_path), partition, organisation_column=column))
    assert err.value.field == "secure.organisation_column"

"""The simulator's contribution indicator on a case whose answer is known: schools whose
labels are flipped score below honest ones, from group sums alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tessera.config import parse_config
from tessera.jobs.prepared import prepare_job
from tessera.runtime.sim.contributions import GroupValuer
from tessera.runtime.sim.job import simulate


@pytest.fixture(scope="module")
def csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    n = 60 * 30
    x = rng.normal(size=(n, 2))
    frame = pd.DataFrame(
        {
            "school": np.repeat(np.arange(60), 30),
            "a": x[:, 0],
            "b": x[:, 1],
            "passed": (x[:, 0] + x[:, 1] > 0).astype(int),
        }
    )
    path = tmp_path_factory.mktemp("valuation") / "table.csv"
    frame.to_csv(path, index=False)
    return path


def test_flipped_schools_score_below_honest_ones(csv: Path) -> None:
    cfg = parse_config(
        {
            "job": {"name": "value", "task": "classification", "seed": 4},
            "data": {"source": "csv", "dataset": str(csv), "target": "passed",
                     "features": ["a", "b"], "holdout": {"by": "school", "fraction": 0.15}},
            "partition": {"scheme": "natural", "column": "school"},
            "model": {"kind": "linear"},
            "recipe": {"clip_norm": 5.0, "lr": 0.1},
            "federation": {"rounds": 15},
            "secure": {"group_size": 4, "k": 2},
            "contributions": {"method": "leave_one_out", "min_evidence": 5, "threshold": 1.5},
            "simulation": {"poison": {"fraction": 0.2, "kind": "label_flip"}},
            "baseline": {"enabled": False},
        }
    )  # fmt: skip
    job = prepare_job(cfg)
    valuer = GroupValuer(job, method="leave_one_out")
    simulate(job, on_groups=valuer)
    entry = valuer.entry()
    assert entry["rounds_valued"] == 15 and entry["excluded"] == []
    scores = valuer.ledger.scores()
    bad = {job.node_ids[i] for i in job.corrupted}
    assert len(bad) == round(0.2 * job.n_nodes)
    honest = [s for n, s in scores.items() if n not in bad]
    assert np.mean([scores[n] for n in bad]) < np.mean(honest)
    flagged = set(entry["flagged"])  # type: ignore[arg-type]
    assert flagged and len(flagged & bad) / len(flagged) >= 0.5  # mostly the flipped ones
    assert entry["recall"] == len(flagged & bad) / len(bad)

"""The simulator's contribution indicator on a case whose answer is known: schools whose
labels are flipped score below honest ones, from group sums alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tessera.config import JobConfig, parse_config
from tessera.jobs.prepared import prepare_job
from tessera.jobs.valuation import GroupValuer
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


def _config(csv: Path, policy: str = "report") -> JobConfig:
    return parse_config(
        {
            "job": {"name": "value", "task": "classification", "seed": 4},
            "data": {"source": "csv", "dataset": str(csv), "target": "passed",
                     "features": ["a", "b"], "holdout": {"by": "school", "fraction": 0.15}},
            "partition": {"scheme": "natural", "column": "school"},
            "model": {"kind": "linear"},
            "recipe": {"clip_norm": 5.0, "lr": 0.1},
            "federation": {"rounds": 15},
            "secure": {"group_size": 4, "k": 2},
            "contributions": {"method": "leave_one_out", "min_evidence": 5, "threshold": 1.5,
                              "policy": policy},
            "simulation": {"poison": {"fraction": 0.2, "kind": "label_flip"}},
            "baseline": {"enabled": False},
        }
    )  # fmt: skip


def test_flipped_schools_score_below_honest_ones(csv: Path) -> None:
    job = prepare_job(_config(csv))
    valuer = GroupValuer(job, method="leave_one_out")
    simulate(job, on_groups=valuer)
    entry = valuer.entry()
    assert entry["rounds_valued"] == 15 and entry["excluded"] == {}
    scores = valuer.ledger.scores()
    bad = {job.node_ids[i] for i in job.corrupted}
    assert len(bad) == round(0.2 * job.n_nodes)
    honest = [s for n, s in scores.items() if n not in bad]
    assert np.mean([scores[n] for n in bad]) < np.mean(honest)
    flagged = set(entry["flagged"])  # type: ignore[arg-type]
    assert flagged and len(flagged & bad) / len(flagged) >= 0.5  # mostly the flipped ones
    assert entry["recall"] == len(flagged & bad) / len(bad)


def test_the_exclusion_policy_leaves_flagged_schools_out_of_later_rounds(csv: Path) -> None:
    job = prepare_job(_config(csv, "exclude"))
    valuer = GroupValuer(job, method="leave_one_out", policy="exclude")
    result = simulate(job, on_groups=valuer)
    entry = valuer.entry()
    excluded = entry["excluded"]
    assert isinstance(excluded, dict) and excluded
    bad = {job.node_ids[i] for i in job.corrupted}
    assert entry["judged"] == "excluded" and entry["precision"] >= 0.5  # type: ignore[operator]
    for node, verdict in excluded.items():
        # The minimum evidence is five valued groups, one a round: rounds 0 to 4.
        assert verdict["after_round"] >= 4
        # The record of the first round without it names it, with the reason: the
        # first round opened after the verdict (the next one was open already).
        first = verdict["after_round"] + 2
        named = [r for r in result.rounds if any(e.startswith(f"{node} (") for e in r.excluded)]
        if first >= len(result.rounds):  # the job ended first
            assert named == []
            continue
        assert [r.round for r in named] == [first]
        assert "robust deviations below the median" in named[0].excluded[0]
        assert all(node not in r.included for r in result.rounds[first:])
        assert any(node in r.included for r in result.rounds[:first])
    assert len(set(excluded) & bad) >= len(excluded) / 2


def test_reputation_weighs_the_low_scorers_down_before_excluding_them(csv: Path) -> None:
    job = prepare_job(_config(csv, "reputation"))
    valuer = GroupValuer(job, method="leave_one_out", policy="reputation")
    simulate(job, on_groups=valuer)
    ratings = valuer.ratings
    assert ratings and all(0.05 <= f <= 1 for f in ratings.values())
    assert any(f < 1 for f in ratings.values()) and valuer.excluded
    bad = {job.node_ids[i] for i in job.corrupted}
    # What each contributor weighs at the end: 0 once excluded, else its factor.
    weight = {n: 0.0 if n in valuer.excluded else ratings.get(n, 1.0) for n in job.node_ids}
    honest = [f for n, f in weight.items() if n not in bad]
    flipped = [f for n, f in weight.items() if n in bad]
    assert np.mean(flipped) < np.mean(honest) - 0.2

"""Data-quality statistics travel inside secure aggregation and come out exactly as
the included contributors' weighted means: the label distribution, the loss of the
global model on their records before training, how many updates were clipped.
Groups holding label-flipped schools show a higher loss before training, from
group sums alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tessera.config import parse_config
from tessera.jobs.prepared import prepare_job
from tessera.jobs.secure import secure_params
from tessera.protocol.effects import GroupSum
from tessera.runtime.host import train_seed
from tessera.runtime.sim.job import simulate
from tessera.training import BatchedTrainer


@pytest.fixture(scope="module")
def csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(1)
    n = 40 * 25
    x = rng.normal(size=(n, 2))
    frame = pd.DataFrame(
        {
            "school": np.repeat(np.arange(40), 25),
            "a": x[:, 0],
            "b": x[:, 1],
            "passed": (x[:, 0] - x[:, 1] > 0.3).astype(int),
        }
    )
    path = tmp_path_factory.mktemp("quality") / "table.csv"
    frame.to_csv(path, index=False)
    return path


def test_quality_statistics_are_the_included_contributors_weighted_means(csv: Path) -> None:
    cfg = parse_config(
        {
            "job": {"name": "quality", "task": "classification", "seed": 2},
            "data": {"source": "csv", "dataset": str(csv), "target": "passed",
                     "features": ["a", "b"], "holdout": {"by": "school", "fraction": 0.1}},
            "partition": {"scheme": "natural", "column": "school"},
            "model": {"kind": "linear"},
            "recipe": {"clip_norm": 1.0, "lr": 0.5},
            "federation": {"rounds": 6, "fraction": 1.0},
            "secure": {"group_size": 4, "k": 2},
            "contributions": {"method": "leave_one_out"},
            "simulation": {"poison": {"fraction": 0.25, "kind": "label_flip",
                                      "scaled_fraction": 0.05}},
            "baseline": {"enabled": False},
        }
    )  # fmt: skip
    job = prepare_job(cfg)
    secure = secure_params(job)
    assert secure.quality == 3 + 2
    starts: dict[int, np.ndarray] = {}
    sums: dict[int, tuple[GroupSum, ...]] = {}

    def watch(round: int, groups: tuple[GroupSum, ...], start: np.ndarray) -> None:
        starts[round], sums[round] = start.copy(), groups

    result = simulate(job, on_groups=watch)
    index = {node: i for i, node in enumerate(job.node_ids)}
    trainer = BatchedTrainer(job.spec, job.recipe, job.x, job.y, job.offsets)
    scaled, flipped = set(job.scaled), set(job.corrupted)
    for record in result.rounds:
        nodes = np.array(sorted(index[n] for n in record.included))
        measured = trainer.train(
            starts[record.round], nodes, train_seed(cfg.job.seed, record.round), quality=True
        )
        assert measured.loss_before is not None and measured.norm is not None
        w = np.minimum(job.node_samples[nodes], secure.max_weight) / secure.max_weight
        labels = np.stack([np.bincount(job.y[job.offsets[i] : job.offsets[i + 1]], minlength=2)
                           for i in nodes])  # fmt: skip
        share = labels / labels.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(record.labels, (w[:, None] * share).sum(0) / w.sum(), atol=1e-4)
        before = np.minimum(measured.loss_before, secure.loss_cap)
        np.testing.assert_allclose(record.loss_before, (w * before).sum() / w.sum(), rtol=1e-4)
        norm = measured.norm * np.where(np.isin(nodes, list(scaled)), 10.0, 1.0)
        assert record.clipped == int((norm > secure.clip).sum())
        ratio = np.minimum(norm / secure.clip, 1.0)
        np.testing.assert_allclose(record.norm_ratio, (w * ratio).sum() / w.sum(), atol=1e-4)
    assert sum(r.clipped for r in result.rounds) > 0  # the scaled updates were clipped
    # From group sums alone: groups with a flipped school lose more before training.
    p = job.layout.size
    dirty, clean = [], []
    for round in range(2, len(result.rounds)):
        for g in sums[round]:
            loss = g.quality_words(p)[0] / g.weight
            bad = any(index[m] in flipped for m in g.members)
            (dirty if bad else clean).append(loss)
    assert dirty and clean and np.mean(dirty) > np.mean(clean)

"""Permutation importance per source feature, on held-out rows.

For each source feature, shuffle its rows (all its encoded columns with one
permutation, so a one-hot stays one-hot) and measure how much the job's
metric drops: accuracy for a classifier, R² for a regression. Repeated with
independent permutations from one seeded generator; the table holds each
feature's mean and standard deviation over the repeats, largest drop first.

What it says: how much the model *relies* on a feature on these rows. What it
does not: whether the feature causes the target; two correlated features share
(and can hide) each other's importance, since shuffling one leaves the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tessera.explain.features import Feature
from tessera.ids import Task
from tessera.training.evaluate import r2_score

#: Raw model outputs ``(n, n_outputs)`` for encoded inputs ``(n, ...)``: logits or values.
Predict = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]
#: A score of outputs against labels: higher is better.
Metric = Callable[[np.ndarray, npt.NDArray[np.float32]], float]


def accuracy(y: np.ndarray, out: npt.NDArray[np.float32]) -> float:
    """Share of rows whose largest output is the label."""
    return float((np.asarray(out).argmax(1) == np.asarray(y)).mean())


def r2(y: np.ndarray, out: npt.NDArray[np.float32]) -> float:
    return r2_score(y, out)


def metric_of(task: Task) -> tuple[str, Metric]:
    """The job's headline metric: accuracy (classification) or R² (regression)."""
    return ("accuracy", accuracy) if Task(task) is Task.CLASSIFICATION else ("R^2", r2)


@dataclass(frozen=True)
class Importance:
    """One feature's drop in the metric when shuffled, over the repeats."""

    feature: str
    mean: float
    std: float
    drops: tuple[float, ...]


@dataclass(frozen=True)
class ImportanceTable:
    """Features by importance, largest first; ``baseline`` is the unshuffled score."""

    metric: str
    baseline: float
    rows: tuple[Importance, ...]

    @property
    def ranking(self) -> tuple[str, ...]:
        return tuple(r.feature for r in self.rows)

    def __getitem__(self, feature: str) -> Importance:
        for row in self.rows:
            if row.feature == feature:
                return row
        raise KeyError(feature)


def permutation_importance(
    predict: Predict,
    x: np.ndarray,
    y: np.ndarray,
    features: Sequence[Feature],
    *,
    task: Task,
    repeats: int = 5,
    seed: int = 0,
    metric: tuple[str, Metric] | None = None,
) -> ImportanceTable:
    """Drop of ``metric`` (default: the task's) when each feature's rows are shuffled.

    ``x``: encoded rows ``(n, d)``; a feature's columns index its last axis
    flattened, so an image's pixels (``(n, C, H, W)``) work as well.
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    x_arr = np.ascontiguousarray(x, dtype=np.float32)
    if len(x_arr) < 2:
        raise ValueError("permutation importance needs at least 2 rows")
    name, score = metric or metric_of(task)
    flat = x_arr.reshape(len(x_arr), -1)
    base = score(y, predict(x_arr))
    rng = np.random.default_rng(seed)
    rows = []
    for feature in features:
        cols = list(feature.columns)
        drops = []
        for _ in range(repeats):
            shuffled = flat.copy()
            shuffled[:, cols] = flat[rng.permutation(len(flat))][:, cols]
            drops.append(base - score(y, predict(shuffled.reshape(x_arr.shape))))
        rows.append(
            Importance(feature.name, float(np.mean(drops)), float(np.std(drops)), tuple(drops))
        )
    rows.sort(key=lambda r: -r.mean)
    return ImportanceTable(name, float(base), tuple(rows))

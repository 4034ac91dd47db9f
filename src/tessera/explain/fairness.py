"""The model's metrics per group of held-out rows (e.g. by gender), and the gaps.

Per value of a group column: how many rows, the metric (a classifier's
accuracy, a regression's RMSE on the target's scale), the mean prediction and
the mean label. For a binary classifier whose classes are 0 and 1 (or with
``class_values`` left out), the mean prediction is the positive rate, and its
gap between groups the demographic-parity difference; for ordered classes
given as numbers (Chem97's grades 0..10) it is the mean predicted grade.

What it says: whether the model serves the groups of this test set equally
well and predicts alike for them. What it does not: why (a gap may come from
the data, its labels or how few rows a group has: read ``count``), nor any
fairness for groups or intersections not asked about.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from tessera.ids import Task
from tessera.training.evaluate import ToTarget

MISSING = "(missing)"


@dataclass(frozen=True)
class GroupMetrics:
    group: str
    count: int
    metric: float  # accuracy (classification) or RMSE (regression)
    mean_prediction: float
    mean_label: float


@dataclass(frozen=True)
class FairnessTable:
    """Per group, in order of the groups' values; the gaps over groups with at least
    ``min_count`` rows: ``gap`` between the best and worst metric (>= 0), and
    ``prediction_gap`` between the largest and smallest mean prediction."""

    column: str
    metric: str
    rows: tuple[GroupMetrics, ...]
    best: str
    worst: str
    gap: float
    prediction_gap: float

    def __getitem__(self, group: str) -> GroupMetrics:
        for row in self.rows:
            if row.group == group:
                return row
        raise KeyError(group)


def _label(value: Hashable) -> str:
    missing: Any = value  # a scalar: pd.isna answers one bool
    return MISSING if pd.isna(missing) else str(value)


def group_metrics(
    groups: Sequence[Hashable] | np.ndarray,
    y: np.ndarray,
    out: npt.NDArray[np.float32],
    *,
    task: Task,
    column: str = "group",
    class_values: Sequence[float] | None = None,
    to_target: ToTarget | None = None,
    min_count: int = 1,
) -> FairnessTable:
    """Metrics of model outputs ``out`` ``(n, n_outputs)`` against labels ``y`` per group.

    ``class_values``: a number per class (default its index) for the mean
    prediction and label; ``to_target``: a regression's map from the model's
    scale to the target's (``Preprocessor.target_from_model``).
    """
    keys = np.array([_label(g) for g in groups], dtype=object)
    out_arr = np.asarray(out, dtype=np.float64).reshape(len(keys), -1)
    classify = Task(task) is Task.CLASSIFICATION
    if classify:
        values = np.asarray(
            range(out_arr.shape[1]) if class_values is None else class_values, np.float64
        )
        labels = np.asarray(y, dtype=np.int64)
        hit = (out_arr.argmax(1) == labels).astype(np.float64)
        pred, truth = values[out_arr.argmax(1)], values[labels]
    else:
        pred, truth = out_arr[:, 0], np.asarray(y, np.float64).reshape(len(keys))
        if to_target is not None:
            pred, truth = to_target(pred), to_target(truth)
        hit = (pred - truth) ** 2
    rows = []
    for key in sorted(set(keys.tolist())):
        at = keys == key
        score = float(hit[at].mean()) if classify else float(np.sqrt(hit[at].mean()))
        rows.append(
            GroupMetrics(key, int(at.sum()), score, float(pred[at].mean()), float(truth[at].mean()))
        )
    counted = [r for r in rows if r.count >= min_count] or rows
    if not counted:
        raise ValueError("no rows to measure")
    ranked = sorted(counted, key=lambda r: -r.metric if classify else r.metric)
    means = [r.mean_prediction for r in counted]
    return FairnessTable(
        column=column,
        metric="accuracy" if classify else "RMSE",
        rows=tuple(rows),
        best=ranked[0].group,
        worst=ranked[-1].group,
        gap=abs(ranked[0].metric - ranked[-1].metric),
        prediction_gap=max(means) - min(means),
    )

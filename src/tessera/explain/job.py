"""Explanations and fairness of a job's model on the AI provider's held-out set.

The adapters between a ``PreparedJob`` (its spec, encoding and test rows) and
the methods of this package, which work on arrays and a torch module. The
group column of ``fairness`` comes from the raw held-out rows
(``split_table``), so it may be any column of the table, a feature (Chem97's
``gender``) or not (its ``lea``). ``write_explanations`` puts them all in
DIR/explanations.json at the end of a job, as the job's ``[report]`` asks.
"""

from __future__ import annotations

import json
import math
import numbers
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from tessera.config import ReportSection
from tessera.data import Prepared, require_columns
from tessera.errors import DataError
from tessera.explain.attribution import AttributionTable, feature_attributions, saliency_map
from tessera.explain.fairness import FairnessTable, group_metrics
from tessera.explain.features import Feature, each_column, source_features
from tessera.explain.importance import ImportanceTable, Predict, permutation_importance
from tessera.ids import Task
from tessera.jobs.prepared import PreparedJob, split_table
from tessera.training import build_module
from tessera.training.evaluate import predict
from tessera.weights import Vector

_ROW = "__tessera_explain_row__"


def features_of(job: PreparedJob) -> tuple[Feature, ...]:
    """The job's source features and their encoded columns."""
    if job.preprocessor is not None:
        return source_features(job.preprocessor)
    return each_column(len(job.feature_names), job.feature_names)


def predictor(job: PreparedJob, weights: Vector) -> Predict:
    """Raw outputs of the job's model with ``weights`` for encoded rows."""
    return lambda x: predict(job.spec, weights, x)


def _sample(n: int, rows: int | None, seed: int) -> npt.NDArray[np.int64]:
    if rows is None or rows >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, rows, replace=False))


def importance(
    job: PreparedJob, weights: Vector, *, repeats: int = 5, seed: int = 0, rows: int | None = None
) -> ImportanceTable:
    """Permutation importance per source feature on the test set (``rows`` of it drawn
    with ``seed``; None: all)."""
    at = _sample(len(job.test), rows, seed)
    return permutation_importance(
        predictor(job, weights),
        job.test.x[at],
        job.test.y[at],
        features_of(job),
        task=job.task,
        repeats=repeats,
        seed=seed,
    )


def attributions(
    job: PreparedJob, weights: Vector, *, steps: int = 32, rows: int | None = 1000, seed: int = 0
) -> AttributionTable:
    """Integrated gradients per source feature over the test set (``rows`` of it)."""
    at = _sample(len(job.test), rows, seed)
    module = build_module(job.spec, weights)
    return feature_attributions(module, job.test.x[at], features_of(job), steps=steps)


def saliency(
    job: PreparedJob, weights: Vector, *, rows: int | None = 1000, seed: int = 0
) -> npt.NDArray[np.float64]:
    """The image model's saliency map ``(H, W)`` over the test set (``rows`` of it)."""
    if len(job.spec.input_shape) < 2:
        raise DataError(f"a saliency map needs image inputs, not {job.spec.input_shape}")
    at = _sample(len(job.test), rows, seed)
    return saliency_map(build_module(job.spec, weights), job.test.x[at])


def held_out_groups(job: PreparedJob, column: str) -> tuple[Prepared, npt.NDArray[np.object_]]:
    """The test rows encoded as the job encodes them, and each one's raw ``column``
    value: the held-out rows are drawn again from the job file (``split_table``) and
    tagged with their position, so the rows the encoding drops are those it dropped
    for ``job.test`` (and a missing group value is a group of its own)."""
    if job.preprocessor is None:
        raise DataError("the job holds no fitted encoding to encode its test rows with")
    test_df = split_table(job.config)[1]
    require_columns(test_df, [column])
    tagged = test_df.assign(**{_ROW: np.arange(len(test_df))})
    encoded = job.preprocessor.transform(tagged, group_column=_ROW)
    assert encoded.groups is not None
    if len(encoded) != len(job.test):
        raise DataError(f"the test set drawn again has {len(encoded)} rows, not {len(job.test)}")
    values = test_df[column].to_numpy(dtype=object)[encoded.groups.astype(np.int64)]
    return encoded, values


def _class_values(classes: tuple[object, ...]) -> list[float] | None:
    numeric = all(isinstance(c, numbers.Real) and not isinstance(c, bool) for c in classes)
    return [float(c) for c in classes] if numeric and classes else None  # type: ignore[arg-type]


def fairness(
    job: PreparedJob, weights: Vector, column: str, *, min_count: int = 1
) -> FairnessTable:
    """Metrics per value of ``column`` on the test set (``fairness.group_metrics``); a
    classifier's mean prediction is in its classes' values when they are numbers."""
    encoded, groups = held_out_groups(job, column)
    out = predict(job.spec, weights, encoded.x)
    pre = job.preprocessor
    classify = job.task is Task.CLASSIFICATION
    return group_metrics(
        pd.Series(groups).to_numpy(dtype=object),
        encoded.y,
        out,
        task=job.task,
        column=column,
        class_values=_class_values(job.classes) if classify else None,
        to_target=None if classify or pre is None else pre.target_from_model,
        min_count=min_count,
    )


# --- DIR/explanations.json ------------------------------------------------------------

FORMAT = "tessera-explanations/v1"


def _sorted_importance(table: ImportanceTable) -> dict[str, Any]:
    return {
        "metric": table.metric,
        "baseline": _finite(table.baseline),
        "features": [
            {"feature": r.feature, "mean": _finite(r.mean), "std": _finite(r.std)}
            for r in table.rows
        ],
    }


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def fairness_entry(table: FairnessTable, min_count: int) -> dict[str, Any]:
    """One column's metrics per group as explanations.json holds them: a group of fewer
    than ``min_count`` rows keeps its count, its metrics are left out (``suppressed``)."""
    return {
        "column": table.column,
        "metric": table.metric,
        "min_count": min_count,
        "groups": [
            {
                "group": r.group,
                "count": r.count,
                "suppressed": r.count < min_count,
                **{
                    k: None if r.count < min_count else _finite(v)
                    for k, v in (
                        ("metric", r.metric),
                        ("mean_prediction", r.mean_prediction),
                        ("mean_label", r.mean_label),
                    )
                },
            }
            for r in table.rows
        ],
        "best": table.best,
        "worst": table.worst,
        "gap": _finite(table.gap),
        "prediction_gap": _finite(table.prediction_gap),
    }


def explanations(
    job: PreparedJob,
    weights: Vector,
    settings: ReportSection | None = None,
    *,
    model_digest: str | None = None,
) -> dict[str, Any]:
    """explanations.json's content: the trained model (``weights``) explained on the job's
    held-out set, as ``settings`` (default the job's ``[report]``) asks.

    ``importance`` (permutation, per source feature), ``attributions`` (integrated
    gradients, per source feature), ``saliency`` (an image model's ``(H, W)`` map, as
    rows of numbers), ``fairness`` (one entry per group column); a part that could not
    be computed is null and ``skipped`` says why. ``rows``: the held-out rows drawn (with
    the job's seed) for the first three; fairness uses every held-out row. ``model``:
    ``model_digest``, the SHA-256 of the model file explained (the report checks it is
    the job's final model).
    """
    s = settings if settings is not None else job.config.reporting
    seed = job.config.job.seed
    n = len(job.test)
    rows = min(n, s.explain_rows)
    out: dict[str, Any] = {
        "format": FORMAT,
        "job": job.config.job.name,
        "model": model_digest,
        "task": str(job.task),
        "test_rows": n,
        "rows": rows,
        "seed": seed,
        "repeats": s.repeats,
        "steps": s.steps,
        "importance": None,
        "attributions": None,
        "saliency": None,
        "fairness": [],
        "skipped": {},
    }
    skipped: dict[str, str] = out["skipped"]
    started = time.perf_counter()
    if n < 2:
        why = f"the held-out set has {n} rows: nothing to explain on"
        skipped.update(importance=why, attributions=why, saliency=why)
        if s.groups:
            skipped["fairness"] = why
        out["seconds"] = 0.0
        return out
    image = len(job.spec.input_shape) >= 2
    try:
        table = importance(job, weights, repeats=s.repeats, seed=seed, rows=rows)
        out["importance"] = _sorted_importance(table)
    except (DataError, ValueError) as exc:
        skipped["importance"] = str(exc)
    try:
        attr = attributions(job, weights, steps=s.steps, rows=rows, seed=seed)
        out["attributions"] = {
            "method": "integrated gradients",
            "output": "the predicted class's logit"
            if job.task is Task.CLASSIFICATION
            else "the model's output",
            "gap": _finite(attr.gap),
            "features": [
                {"feature": r.feature, "mean_abs": _finite(r.mean_abs), "mean": _finite(r.mean)}
                for r in attr.rows
            ],
        }
    except (DataError, ValueError) as exc:
        skipped["attributions"] = str(exc)
    if image:
        sal = saliency(job, weights, rows=rows, seed=seed)
        out["saliency"] = {
            "shape": list(sal.shape),
            "values": [[float(v) for v in row] for row in sal],
        }
    else:
        skipped["saliency"] = "not an image model"
    for column in s.groups:
        try:
            fair = fairness(job, weights, column, min_count=s.min_count)
            out["fairness"].append(fairness_entry(fair, s.min_count))
        except (DataError, ValueError) as exc:
            skipped[f"fairness:{column}"] = str(exc)
    out["seconds"] = time.perf_counter() - started
    return out


def write_explanations(
    out: Path,
    job: PreparedJob,
    weights: Vector,
    settings: ReportSection | None = None,
    *,
    model_digest: str | None = None,
) -> Path:
    """Write DIR/explanations.json (atomically); returns its path."""
    content = explanations(job, weights, settings, model_digest=model_digest)
    path = out / "explanations.json"
    tmp = path.with_name("explanations.tmp.json")
    tmp.write_text(json.dumps(content, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path

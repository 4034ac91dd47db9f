"""Predictions and the job's headline metric: accuracy or R², with a regression's RMSE and MAE.

A regression model learns a standardised target (``Preprocessor.target_scale``),
so its raw outputs and the test labels are on that scale. R² is the same on
either scale; RMSE and MAE are not, and are reported on the target's own scale
(scores in points, not in standard deviations): ``scores`` takes the
preprocessor's ``target_from_model`` to map both back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tessera.errors import DataError
from tessera.ids import Task
from tessera.training.spec import ModelSpec, build_module
from tessera.weights import Vector

DEFAULT_EVAL_BATCH = 8192

#: Model outputs (or standardised labels) to the target's own scale: ``target_from_model``.
ToTarget = Callable[[npt.ArrayLike], npt.NDArray[np.float64]]


@dataclass(frozen=True)
class Scores:
    """One model on one test set: the headline ``value`` (accuracy or R²) and, for a
    regression, its RMSE and MAE on the target's own scale (NaN for a classifier)."""

    value: float
    rmse: float = math.nan
    mae: float = math.nan


def metric_name(task: Task) -> str:
    """``"accuracy"`` for classification, ``"R^2"`` for regression."""
    return "accuracy" if Task(task) is Task.CLASSIFICATION else "R^2"


def predict(
    spec: ModelSpec, weights: Vector, x: np.ndarray, *, batch_size: int = DEFAULT_EVAL_BATCH
) -> npt.NDArray[np.float32]:
    """Raw model outputs ``(n, n_outputs)`` (logits for classifiers), in batches."""
    x_arr = np.ascontiguousarray(x, dtype=np.float32)
    if x_arr.ndim < 1 or tuple(x_arr.shape[1:]) != spec.input_shape:
        raise DataError(f"x has shape {x_arr.shape}, expected (n, *{spec.input_shape})")
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    module = build_module(spec, np.asarray(weights, dtype=np.float32)).eval()
    import torch  # lazily: importing this module must not load torch

    x_t = torch.from_numpy(x_arr)
    out = np.empty((len(x_arr), spec.n_outputs), np.float32)
    with torch.inference_mode():
        for lo in range(0, len(x_arr), batch_size):
            out[lo : lo + batch_size] = module(x_t[lo : lo + batch_size]).numpy()
    return out


def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    """1 - SSE/SST per output column, averaged (scikit-learn's convention:
    a constant target scores 1 if predicted exactly, else 0)."""
    y64 = np.asarray(y, np.float64).reshape(len(pred), -1)
    p64 = np.asarray(pred, np.float64).reshape(y64.shape)
    sse = ((y64 - p64) ** 2).sum(0)
    sst = ((y64 - y64.mean(0)) ** 2).sum(0)
    safe = np.where(sst > 0, sst, 1.0)
    scores = np.where(sst > 0, 1.0 - sse / safe, np.where(sse == 0, 1.0, 0.0))
    return float(scores.mean())


def regression_errors(
    y: np.ndarray, pred: np.ndarray, to_target: ToTarget | None = None
) -> tuple[float, float]:
    """RMSE and MAE of ``pred`` against ``y``, both first mapped by ``to_target``."""
    y64 = np.asarray(y, np.float64).reshape(len(pred), -1)
    p64 = np.asarray(pred, np.float64).reshape(y64.shape)
    if to_target is not None:
        y64, p64 = to_target(y64), to_target(p64)
    err = p64 - y64
    return float(np.sqrt((err**2).mean())), float(np.abs(err).mean())


def evaluate(
    spec: ModelSpec,
    weights: Vector,
    x: np.ndarray,
    y: np.ndarray,
    task: Task,
    *,
    batch_size: int = DEFAULT_EVAL_BATCH,
) -> float:
    """Accuracy in [0, 1] (classification) or R² (regression) of ``weights`` on (x, y)."""
    return scores(spec, weights, x, y, task, batch_size=batch_size).value


def scores(
    spec: ModelSpec,
    weights: Vector,
    x: np.ndarray,
    y: np.ndarray,
    task: Task,
    *,
    to_target: ToTarget | None = None,
    batch_size: int = DEFAULT_EVAL_BATCH,
) -> Scores:
    """``evaluate``'s metric, and a regression's RMSE and MAE on the target's scale.

    ``to_target`` maps the model's scale to the target's (``target_from_model``);
    None: the labels are the target itself.
    """
    y_arr = np.asarray(y)
    if len(y_arr) != len(x):
        raise DataError(f"x has {len(x)} records but y has {len(y_arr)}")
    if len(y_arr) == 0:
        raise DataError("cannot evaluate on zero records")
    pred = predict(spec, weights, x, batch_size=batch_size)
    if Task(task) is Task.CLASSIFICATION:
        if y_arr.ndim != 1:
            raise DataError(f"class labels must be 1-D, got shape {y_arr.shape}")
        return Scores(float((pred.argmax(1) == y_arr).mean()))
    if y_arr.size != pred.size:
        raise DataError(f"y has shape {y_arr.shape}, expected ({len(pred)}, {spec.n_outputs})")
    rmse, mae = regression_errors(y_arr, pred, to_target)
    return Scores(r2_score(y_arr, pred), rmse=rmse, mae=mae)

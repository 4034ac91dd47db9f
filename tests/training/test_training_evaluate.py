from __future__ import annotations

import numpy as np
import pytest

from tessera.errors import DataError
from tessera.ids import Task
from tessera.training import ModelSpec, evaluate, layout, metric_name, predict, r2_score


def test_metric_names() -> None:
    assert metric_name(Task.CLASSIFICATION) == "accuracy"
    assert metric_name(Task.REGRESSION) == "R^2"


def test_accuracy_hand_computed() -> None:
    # logits = x @ W.T with W = identity: the class is the argmax of x
    spec = ModelSpec("linear", (3,), 3)
    w = layout(spec).flatten(
        {"head.weight": np.eye(3, dtype=np.float32), "head.bias": np.zeros(3, np.float32)}
    )
    x = np.array([[1, 0, 0], [0, 2, 1], [0, 0, 3], [5, 1, 0], [0, 1, 0]], np.float32)
    y = np.array([0, 1, 2, 1, 2])  # last two are wrong
    assert evaluate(spec, w, x, y, Task.CLASSIFICATION) == pytest.approx(3 / 5)
    assert evaluate(spec, w, x, y, Task.CLASSIFICATION, batch_size=2) == pytest.approx(3 / 5)


def test_r2_hand_computed() -> None:
    # prediction = 2 * x0 + 1
    spec = ModelSpec("linear", (1,), 1)
    w = np.array([2.0, 1.0], np.float32)
    x = np.array([[0.0], [1.0], [2.0], [3.0]], np.float32)
    y = np.array([1.0, 3.0, 5.0, 9.0], np.float32)  # predictions 1, 3, 5, 7
    sse = 4.0
    sst = float(((y - y.mean()) ** 2).sum())  # mean 4.5 -> 12.25 + 2.25 + 0.25 + 20.25 = 35
    assert sst == 35.0
    assert evaluate(spec, w, x, y, Task.REGRESSION) == pytest.approx(1 - sse / sst)
    assert evaluate(spec, w, x, y.reshape(-1, 1), Task.REGRESSION, batch_size=3) == pytest.approx(
        1 - sse / sst
    )
    assert np.allclose(predict(spec, w, x)[:, 0], [1, 3, 5, 7])


def test_r2_edge_cases() -> None:
    assert r2_score(np.array([2.0, 2.0]), np.array([2.0, 2.0])) == 1.0
    assert r2_score(np.array([2.0, 2.0]), np.array([2.0, 3.0])) == 0.0
    y = np.array([1.0, 2.0, 3.0])
    assert r2_score(y, np.full(3, 2.0)) == pytest.approx(0.0)
    assert r2_score(y, y) == pytest.approx(1.0)


def test_evaluate_refuses_mismatched_inputs() -> None:
    spec = ModelSpec("linear", (3,), 2)
    w = np.zeros(layout(spec).size, np.float32)
    with pytest.raises(DataError):
        evaluate(spec, w, np.zeros((4, 2), np.float32), np.zeros(4, np.int64), Task.CLASSIFICATION)
    with pytest.raises(DataError):
        evaluate(spec, w, np.zeros((4, 3), np.float32), np.zeros(3, np.int64), Task.CLASSIFICATION)
    with pytest.raises(DataError):
        evaluate(spec, w[:-1], np.zeros((4, 3), np.float32), np.zeros(4), Task.CLASSIFICATION)


def test_regression_scores_are_on_the_targets_own_scale() -> None:
    """Same hand-computed model: errors 0, 0, 0, 2 on the model's scale."""
    from tessera.training.evaluate import Scores, scores

    spec = ModelSpec("linear", (1,), 1)
    w = np.array([2.0, 1.0], np.float32)
    x = np.array([[0.0], [1.0], [2.0], [3.0]], np.float32)
    y = np.array([1.0, 3.0, 5.0, 9.0], np.float32)
    plain = scores(spec, w, x, y, Task.REGRESSION)
    assert plain.rmse == pytest.approx(1.0) and plain.mae == pytest.approx(0.5)  # sqrt(4/4), 2/4

    def to_target(v: object) -> np.ndarray:  # target = 100 * model + 30, like target_from_model
        return np.asarray(v, np.float64) * 100.0 + 30.0

    scaled = scores(spec, w, x, y, Task.REGRESSION, to_target=to_target)
    assert scaled.value == pytest.approx(plain.value)  # R^2: the same on either scale
    assert scaled.rmse == pytest.approx(100.0) and scaled.mae == pytest.approx(50.0)
    clf = scores(spec, w, x, np.zeros(4, np.int64), Task.CLASSIFICATION)
    assert clf == Scores(clf.value) and np.isnan(clf.rmse) and np.isnan(clf.mae)

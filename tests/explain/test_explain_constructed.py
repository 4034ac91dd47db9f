"""Explanations of constructed models whose important feature is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from tessera.data import Preprocessor
from tessera.explain import (
    Feature,
    each_column,
    feature_attributions,
    group_metrics,
    integrated_gradients,
    permutation_importance,
    saliency_map,
    source_features,
)
from tessera.ids import Task


def _linear(weights: list[float], bias: float = 0.0) -> nn.Linear:
    layer = nn.Linear(len(weights), 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([weights]))
        layer.bias.fill_(bias)
    return layer


def _predict(module: nn.Module):  # type: ignore[no-untyped-def]
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.as_tensor(x, dtype=torch.float32)).numpy()

    return run


@pytest.fixture
def rows() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(400, 4)).astype(np.float32)


def test_permutation_importance_finds_the_only_feature_a_regression_uses(
    rows: np.ndarray,
) -> None:
    model = _linear([2.0, 0.0, 0.0, 0.0])
    y = 2.0 * rows[:, :1]  # y depends on feature 0 only
    table = permutation_importance(
        _predict(model), rows, y, each_column(4), task=Task.REGRESSION, repeats=5, seed=3
    )
    assert table.metric == "R^2" and table.baseline == pytest.approx(1.0)
    assert table.ranking[0] == "x0"
    assert table["x0"].mean > 1.5  # shuffling it leaves R² near -1
    for name in ("x1", "x2", "x3"):
        assert table[name].mean == 0.0 and table[name].std == 0.0
    assert len(table["x0"].drops) == 5


def test_permutation_importance_is_seeded_and_measures_accuracy(rows: np.ndarray) -> None:
    logits = nn.Linear(4, 2)
    with torch.no_grad():
        logits.weight.copy_(torch.tensor([[0.0, -3.0, 0, 0], [0.0, 3.0, 0, 0]]))
        logits.bias.zero_()
    y = (rows[:, 1] > 0).astype(np.int64)
    run = lambda seed: permutation_importance(  # noqa: E731
        _predict(logits), rows, y, each_column(4), task=Task.CLASSIFICATION, seed=seed
    )
    table = run(0)
    assert table.metric == "accuracy" and table.baseline == 1.0
    assert table.ranking[0] == "x1" and 0.35 < table["x1"].mean < 0.65  # chance: 0.5
    assert all(table[n].mean == 0.0 for n in ("x0", "x2", "x3"))
    assert run(0) == table and run(1) != table


def test_a_categoricals_one_hot_columns_are_one_feature() -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "age": rng.normal(size=300),
            "colour": rng.choice(["red", "green", "blue"], 300),
            "noise": rng.normal(size=300),
        }
    )
    df["y"] = np.where(df["colour"] == "red", 3.0, 0.0)
    pre = Preprocessor.fit(df, target="y", categorical=["colour"], task="regression")
    features = source_features(pre)
    assert [f.name for f in features] == ["age", "colour", "noise"]
    assert features[1].columns == (1, 2, 3)  # colour=blue, colour=green, colour=red
    assert [pre.feature_names[i] for i in features[1].columns][2] == "colour=red"
    data = pre.transform(df)
    w = [0.0] * 5
    w[pre.feature_names.index("colour=red")] = float(data.y.std() / data.x[:, 3].std())
    model = _linear(w, bias=float(data.y.mean() - w[3] * data.x[:, 3].mean()))
    table = permutation_importance(
        _predict(model), data.x, data.y, features, task=Task.REGRESSION, seed=0
    )
    assert table.ranking[0] == "colour" and table["colour"].mean > 1.0
    assert table["age"].mean == table["noise"].mean == 0.0
    attr = feature_attributions(model, data.x, features)
    assert attr.ranking[0] == "colour" and attr["age"].mean_abs == 0.0


def test_indicator_columns_join_their_feature() -> None:
    df = pd.DataFrame({"a": [1.0, np.nan, 3.0, 4.0], "b": [1, 2, 3, 4.0]})
    df["y"] = [0.0, 1.0, 2.0, 3.0]
    pre = Preprocessor.fit(df, target="y", task="regression", missing_columns={"a": "indicator"})
    assert source_features(pre) == (Feature("a", (0, 1)), Feature("b", (2,)))


def test_integrated_gradients_of_a_linear_model_are_exact(rows: np.ndarray) -> None:
    model = _linear([2.0, 0.0, -1.0, 0.0], bias=0.5)
    attr, delta = integrated_gradients(model, rows, steps=4)
    expected = rows.astype(np.float64) * np.array([2.0, 0.0, -1.0, 0.0])
    np.testing.assert_allclose(attr, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(attr.sum(1), delta, rtol=1e-5, atol=1e-5)  # completeness


def test_integrated_gradients_rank_the_feature_a_trained_mlp_uses(rows: np.ndarray) -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    x, y = torch.as_tensor(rows), torch.as_tensor(np.sin(rows[:, :1] * 1.5))
    opt = torch.optim.Adam(mlp.parameters(), lr=0.03)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.mse_loss(mlp(x), y).backward()
        opt.step()
    table = feature_attributions(mlp, rows, each_column(4), steps=32)
    assert table.ranking[0] == "x0"
    assert table["x0"].mean_abs > 5 * max(table[n].mean_abs for n in ("x1", "x2", "x3"))
    assert table.gap < 0.01  # the attributions add up to f(x) - f(0)
    imp = permutation_importance(
        _predict(mlp), rows, y.numpy(), each_column(4), task=Task.REGRESSION, seed=0
    )
    assert imp.ranking[0] == "x0"
    assert imp["x0"].mean > 10 * max(abs(imp[n].mean) for n in ("x1", "x2", "x3"))


def test_integrated_gradients_explain_the_predicted_class() -> None:
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 4.0]]))
        model.bias.zero_()
    x = np.array([[5.0, 1.0, 0.0], [0.0, 1.0, 2.0]], np.float32)
    attr, _ = integrated_gradients(model, x)
    np.testing.assert_allclose(attr, [[5.0, 0.0, 0.0], [0.0, 0.0, 8.0]], atol=1e-6)
    chosen, _ = integrated_gradients(model, x, target=np.array([1, 1]))
    np.testing.assert_allclose(chosen, [[0.0, 0.0, 0.0], [0.0, 0.0, 8.0]], atol=1e-6)


def test_saliency_lights_the_one_pixel_an_image_model_looks_at() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten())
    head = nn.Linear(2 * 64, 3)
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[:, 0, 1, 1] = torch.tensor([1.0, -1.0])  # each pixel to itself
        model[0].bias.zero_()
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 0.0, 100.0]))  # class 2 is always predicted
        at = 2 * 8 + 5  # pixel (2, 5), both channels
        head.weight[:, at] = torch.tensor([1.0, 2.0, 3.0])
        head.weight[:, 64 + at] = torch.tensor([-1.0, -2.0, -3.0])
    net = nn.Sequential(model, head)
    x = np.random.default_rng(0).normal(size=(50, 1, 8, 8)).astype(np.float32)
    sal = saliency_map(net, x)
    assert sal.shape == (8, 8)
    assert np.unravel_index(sal.argmax(), sal.shape) == (2, 5)
    assert sal[2, 5] == pytest.approx(3.0)  # d(3 p)/dp at (2, 5), 0 elsewhere
    assert np.count_nonzero(sal) == 1
    with pytest.raises(ValueError, match="images"):
        saliency_map(head, x.reshape(50, -1))


def test_fairness_gives_exact_accuracies_per_group_and_the_gap() -> None:
    groups = np.array(["F", "F", "F", "F", "M", "M", "M", None], dtype=object)
    y = np.array([1, 0, 1, 1, 0, 0, 1, 1])
    pred = np.array([1, 0, 0, 1, 0, 1, 0, 1])  # F: 3/4 right, M: 1/3, missing: 1/1
    out = np.eye(2, dtype=np.float32)[pred]
    table = group_metrics(groups, y, out, task=Task.CLASSIFICATION, column="gender")
    assert [r.group for r in table.rows] == ["(missing)", "F", "M"]
    assert table["F"].count == 4 and table["F"].metric == 0.75
    assert table["M"].metric == pytest.approx(1 / 3)
    assert table["F"].mean_prediction == 0.5 and table["M"].mean_prediction == pytest.approx(1 / 3)
    assert table["F"].mean_label == 0.75
    assert (table.best, table.worst) == ("(missing)", "M")
    assert table.gap == pytest.approx(2 / 3)
    small = group_metrics(groups, y, out, task=Task.CLASSIFICATION, min_count=2)
    assert (small.best, small.worst, small.gap) == ("F", "M", pytest.approx(0.75 - 1 / 3))
    assert small.prediction_gap == pytest.approx(0.5 - 1 / 3)


def test_fairness_of_a_regression_is_rmse_on_the_target_scale() -> None:
    groups = np.array(["a", "a", "b", "b"])
    y = np.array([0.0, 0.0, 1.0, 1.0])
    out = np.array([[1.0], [-1.0], [1.0], [1.0]], np.float32)
    table = group_metrics(
        groups, y, out, task=Task.REGRESSION, to_target=lambda v: 10 * np.asarray(v, float)
    )
    assert table.metric == "RMSE"
    assert table["a"].metric == pytest.approx(10.0) and table["b"].metric == 0.0
    assert (table.best, table.worst, table.gap) == ("b", "a", pytest.approx(10.0))
    assert table["b"].mean_prediction == 10.0

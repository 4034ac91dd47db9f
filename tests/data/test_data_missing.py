"""The missing-value policy: drop, impute, indicator; counted; fitted on training rows only."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.data import (
    PolicyError,
    Preprocessor,
    natural,
    split_holdout,
    summarize,
    usable_rows,
)
from tessera.data.prepare import _JSON_KEYS
from tessera.errors import DataError

NAN = np.nan


def table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "school": ["s1", "s1", "s1", "s2", "s2", "s3", "s3", "s3"],
            "x": [1.0, NAN, 3.0, 5.0, NAN, 7.0, np.inf, 9.0],
            "c": ["a", "b", None, "b", "b", None, "a", "a"],
            "y": [0, 1, 0, 1, NAN, 0, 1, 1],
        }
    )


def fit(df: pd.DataFrame, **kwargs: Any) -> Preprocessor:
    args: dict[str, Any] = {
        "target": "y",
        "features": ["x", "c"],
        "categorical": ["c"],
        "task": "classification",
        "standardize": False,
    }
    return Preprocessor.fit(df, **{**args, **kwargs})


def test_drop_counts_rows_per_column_and_per_group() -> None:
    pre = fit(table())
    out = pre.transform(table(), group_column="school")
    # x missing on rows 1, 4 (also no y), 6 (inf); c on rows 2, 5; y on row 4
    assert out.n_dropped == 5 and len(out) == 3
    assert out.dropped_by == {"y": 1, "x": 3, "c": 2, "school": 0}
    assert sorted(out.dropped_groups.tolist()) == ["s1", "s1", "s2", "s3", "s3"]
    assert out.imputed == {} and out.n_imputed == 0
    assert pre.n_dropped == 5


def test_impute_fills_the_training_mean_and_mode_and_counts() -> None:
    pre = fit(table(), missing="impute")
    out = pre.transform(table(), group_column="school")
    assert out.n_dropped == 1  # the row without a target only: never imputed
    assert out.dropped_by == {"y": 1, "school": 0}
    assert out.imputed == {"x": 2, "c": 2}
    x = {c.name: c for c in pre.columns}["x"]
    c = {c.name: c for c in pre.columns}["c"]
    assert x.fill == pytest.approx(np.mean([1.0, 3.0, 5.0, 7.0, 9.0]))  # rows with a target
    assert c.fill == "a"  # a 3, b 2 among the rows with a target
    assert out.x[:, 0].tolist() == [1.0, 5.0, 3.0, 5.0, 7.0, 5.0, 9.0]
    assert out.imputed_per_row.tolist() == [0, 1, 1, 0, 1, 1, 0]
    row_of_missing_c = 1  # table row 2
    assert out.x[row_of_missing_c + 1, 1:].tolist() == [1.0, 0.0]  # c=a, c=b


def test_imputation_values_come_from_the_rows_fitted_on_never_from_transformed_ones() -> None:
    df = table()
    train, test = df.iloc[:5], df.iloc[5:].copy()
    test["x"] = [1000.0, NAN, 2000.0]
    pre = fit(train, missing_columns={"x": "impute"})
    mean = np.mean([1.0, 3.0, 5.0])  # train rows with a target and x
    assert pre.columns[0].fill == pytest.approx(mean)
    out = pre.transform(test)
    assert out.imputed == {"x": 1}
    assert out.x[:, 0].tolist() == pytest.approx([mean, 2000.0])  # row 5 lacks c: dropped


def test_indicator_adds_a_0_1_feature_after_the_column() -> None:
    pre = fit(table(), missing_columns={"x": "indicator", "c": "indicator"})
    assert pre.feature_names == ("x", "x_missing", "c=a", "c=b", "c_missing")
    out = pre.transform(table())
    assert out.x[:, 1].tolist() == [0, 1, 0, 0, 0, 1, 0]
    assert out.x[:, 4].tolist() == [0, 0, 1, 0, 1, 0, 0]
    assert out.imputed == {"x": 2, "c": 2}


def test_the_target_is_never_imputed() -> None:
    with pytest.raises(PolicyError, match=r"missing\.columns\.y: the target is never imputed"):
        fit(table(), missing_columns={"y": "impute"})
    assert fit(table(), missing_columns={"y": "drop"}).n_dropped == 5
    with pytest.raises(PolicyError, match=r"missing\.columns\.z: 'z' is not the target or a"):
        fit(table(), missing_columns={"z": "drop"})
    with pytest.raises(PolicyError, match=r"missing\.default: must be one of drop, impute"):
        fit(table(), missing="mean")


def test_a_column_without_values_cannot_be_imputed() -> None:
    df = table().assign(x=NAN)
    with pytest.raises(DataError, match=r"feature\(s\) x have no values"):
        fit(df, missing="impute")


def test_summaries_are_the_one_source_of_fitted_numbers() -> None:
    df = pd.DataFrame({"v": [1.0, 2.0, 4.0, NAN, np.inf], "k": ["b", "a", "b", "a", None]})
    s = summarize(df, numeric=["v"], categorical=["k"])
    assert (s["v"].count, s["v"].missing) == (3, 2)
    assert s["v"].mean == pytest.approx(7 / 3)
    assert s["v"].std == pytest.approx(np.std([1.0, 2.0, 4.0]))
    assert s["v"].median == 2.0
    assert s["k"].categories == ("a", "b")
    assert s["k"].mode == "a"  # a tie: the first in sorted order


def test_usable_rows_apply_the_policy_and_derived_columns() -> None:
    df = table()
    keep = usable_rows(df, target="y", features=["x", "c"], task="classification")
    assert keep.tolist() == [True, False, False, True, False, False, False, True]
    keep = usable_rows(df, target="y", features=["x", "c"], task="classification", missing="impute")
    assert keep.tolist() == [True] * 4 + [False] + [True] * 3
    keep = usable_rows(
        df,
        target="pass",
        features=["x"],
        task="classification",
        derive=[("pass", "x > 4")],
        missing="impute",
    )
    assert keep.tolist() == [True, False, True, True, False, True, False, True]


@settings(max_examples=80, deadline=None)
@given(
    flags=st.lists(st.booleans(), min_size=2, max_size=60).filter(lambda f: sum(f) >= 2),
    fraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**16),
)
def test_the_holdout_is_a_fraction_of_usable_rows(
    flags: list[bool], fraction: float, seed: int
) -> None:
    df = pd.DataFrame({"v": range(len(flags))})
    usable = np.array(flags)
    train, test = split_holdout(df, by=None, fraction=fraction, seed=seed, usable=usable)
    n = int(usable.sum())
    assert len(test) == min(max(round(fraction * n), 1), n - 1)
    assert usable[test.index].all()  # only usable rows are held out
    assert usable[train.index].sum() >= 1  # the nodes keep usable rows, and all the others
    assert len(train) + len(test) == len(df)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 8), min_size=2, max_size=12),
    seed=st.integers(0, 2**16),
    fraction=st.floats(0.05, 0.95),
    data=st.data(),
)
def test_whole_groups_are_held_out_by_their_usable_rows(
    sizes: list[int], seed: int, fraction: float, data: st.DataObject
) -> None:
    groups = np.repeat(np.arange(len(sizes)), sizes)
    df = pd.DataFrame({"g": groups})
    usable = np.array(data.draw(st.lists(st.booleans(), min_size=len(df), max_size=len(df))))
    if usable.sum() < 2:
        with pytest.raises(DataError, match=r"it has [01] usable record"):
            split_holdout(df, by="g", fraction=fraction, seed=seed, usable=usable)
        return
    if len(set(groups[usable])) < 2:
        with pytest.raises(DataError, match="one group with usable records"):
            split_holdout(df, by="g", fraction=fraction, seed=seed, usable=usable)
        return
    train, test = split_holdout(df, by="g", fraction=fraction, seed=seed, usable=usable)
    assert set(train["g"]).isdisjoint(test["g"])
    assert usable[test.index].sum() >= 1
    assert usable[train.index].sum() >= 1


def test_all_usable_draws_as_before() -> None:
    df = pd.DataFrame({"g": np.repeat(np.arange(10), 3), "v": range(30)})
    for by in (None, "g"):
        old = split_holdout(df, by=by, fraction=0.3, seed=5)
        new = split_holdout(df, by=by, fraction=0.3, seed=5, usable=np.ones(30, dtype=bool))
        assert old[1].index.tolist() == new[1].index.tolist()


def test_a_node_transforms_its_raw_records_as_the_simulator_does() -> None:
    """What a node gets: its user's rows as JSON (missing as null), and the preprocessor's
    JSON from the signed job. It must encode them as the simulator encodes the whole part."""
    rng = np.random.default_rng(3)
    n = 120
    df = pd.DataFrame(
        {
            "school": rng.integers(0, 12, n),
            "score": rng.normal(5, 2, n),
            "a": rng.normal(0, 1, n),
            "b": rng.uniform(0, 2, n),
            "lang": rng.choice(["en", "fr", "de"], n),
        }
    )
    for column, share in (("score", 0.1), ("a", 0.3), ("b", 0.2), ("lang", 0.2)):
        df.loc[rng.random(n) < share, column] = None
    pre = Preprocessor.fit(
        df,
        target="high",
        features=["a", "ratio", "lang", "band"],
        categorical=["lang", "band"],
        task="classification",
        derive=[
            ("high", "score > median(score)"),
            ("ratio", "a / b"),
            ("band", "bin(b, 0.5, 1.5)"),
        ],
        missing="impute",
        missing_columns={"a": "indicator", "ratio": "drop"},
    )
    spec = json.loads(json.dumps(pre.to_json()))  # what the signed job carries
    whole = pre.transform(df, group_column="school")
    part = natural(whole.groups)
    x, y = whole.x[part.order], whole.y[part.order]
    assert pre.inputs == ("score", "a", "b", "lang")  # what a node asks its provider for
    for i, name in enumerate(part.names):
        raw = df[df["school"] == int(name)][list(pre.inputs)]
        rows = json.loads(raw.to_json(orient="values"))  # NaN -> null, as the provider sends
        frame = pd.DataFrame(rows, columns=list(pre.inputs))
        node = Preprocessor.from_json(spec).transform(frame)
        lo, hi = part.offsets[i], part.offsets[i + 1]
        np.testing.assert_allclose(node.x, x[lo:hi], rtol=1e-6)
        assert node.y.tolist() == y[lo:hi].tolist()


def test_json_round_trip_of_policies_and_derivations() -> None:
    pre = fit(
        table().assign(z=lambda t: t["x"] * 2),
        features=["x", "c", "w"],
        derive=[("w", "z - mean(x)")],
        missing="indicator",
        missing_columns={"c": "impute"},
    )
    doc = pre.to_json()
    assert doc["derive"] == [
        {"name": "w", "expr": "z - mean(x)", "statistics": {"mean(x)": pytest.approx(5.0)}}
    ]
    assert [(c["name"], c.get("missing"), c.get("fill")) for c in doc["columns"]] == [
        ("x", "indicator", pytest.approx(5.0)),
        ("c", "impute", "a"),
        ("w", "indicator", pytest.approx(5.0)),
    ]
    back = Preprocessor.from_json(json.loads(json.dumps(doc)))
    assert back == pre
    df = table().assign(z=lambda t: t["x"] * 2)
    np.testing.assert_array_equal(back.transform(df).x, pre.transform(df).x)


def test_an_encoding_written_before_derive_and_missing_still_loads() -> None:
    old = {
        "format": "tessera-preprocessor/v1",
        "target": "y",
        "task": "classification",
        "columns": [
            {"name": "x", "kind": "numeric", "mean": 0.5, "std": 2.0},
            {"name": "c", "kind": "categorical", "categories": ["a", "b"]},
        ],
        "classes": [0, 1],
        "image_shape": None,
        "n_dropped": 3,
    }
    assert set(old) == set(_JSON_KEYS)
    pre = Preprocessor.from_json(old)
    assert pre.derive == () and pre.missing_policy == {"x": "drop", "c": "drop"}
    assert pre.inputs == ("y", "x", "c")
    out = pre.transform(table())
    assert out.n_dropped == 5 and out.imputed == {}
    assert pre.to_json() == {**old, "target_scale": None}  # written back as it was


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"missing": "mean", "fill": 1.0}, "missing must be 'impute' or 'indicator'"),
        ({"missing": "drop"}, "missing must be 'impute' or 'indicator'"),
        ({"missing": "impute"}, "missing fill"),
        ({"missing": "impute", "fill": "x"}, "fill must be a number"),
        ({"missing": "impute", "fill": float("nan")}, "fill must be finite"),
    ],
)
def test_malformed_policies_are_refused(change: dict[str, Any], message: str) -> None:
    doc = fit(table()).to_json()
    doc["columns"][0].update(change)
    with pytest.raises(DataError, match=message):
        Preprocessor.from_json(doc)


def test_malformed_derivations_are_refused() -> None:
    doc = fit(table(), features=["x", "w"], categorical=[], derive=[("w", "x > median(x)")])
    good = doc.to_json()
    for derive, message in [
        ("no", "preprocessor.derive must be a list"),
        ([{"name": "w", "expr": "x > median(x)"}], "missing statistics"),
        ([{"name": "w", "expr": "x > median(x)", "statistics": {}}], "exactly the statistics"),
        (
            [{"name": "w", "expr": "__import__('os')", "statistics": {}}],
            r"preprocessor\.derive\[0\]\.expr: unknown function",
        ),
        (
            [{"name": "w", "expr": "x > median(x)", "statistics": {"median(x)": "5"}}],
            "must be a number",
        ),
    ]:
        with pytest.raises(DataError, match=message):
            Preprocessor.from_json({**good, "derive": derive})

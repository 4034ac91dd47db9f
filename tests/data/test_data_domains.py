"""Where a categorical column's values come from without rows: a derived column's
expression, the job's declared categories, the provider's catalogue; and a fit that
uses declared categories, pooled or from federated totals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.config import parse_config
from tessera.data.derive import parse_derivations
from tessera.data.domains import declared_categories, every_feature, schema_domain
from tessera.data.federated import FederatedSummaries, plain_totals
from tessera.data.prepare import Preprocessor, summarize
from tessera.errors import DataError
from tessera.jobs.prepared import prepare_job

# --- a derived column's values, from its expression alone ------------------------------

_COLUMNS = ("a", "b")
_cell = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.integers(-5, 5).map(float),
    st.none(),
)
_number = st.one_of(
    st.integers(-3, 3), st.floats(-5, 5, allow_nan=False).map(lambda v: round(v, 2))
)
_operand = st.one_of(st.sampled_from(_COLUMNS), _number.map(str))
_arithmetic = st.builds(
    lambda x, op, y: f"({x} {op} {y})", _operand, st.sampled_from("+-*/"), _operand
)
_term = st.one_of(_operand, _arithmetic)
_comparison = st.builds(
    lambda x, op, y: (f"{x} {op} {y}", (0, 1)),
    _term,
    st.sampled_from([">", ">=", "<", "<=", "==", "!="]),
    _term,
)
_bin = st.builds(
    lambda x, edges: (f"bin({x}, {', '.join(map(str, edges))})", tuple(range(len(edges) + 1))),
    _term,
    st.lists(st.integers(-6, 6), min_size=1, max_size=5, unique=True).map(sorted),
)


@settings(max_examples=150, deadline=None)
@given(
    expr=st.one_of(_comparison, _bin, _arithmetic.map(lambda e: (e, None))),
    rows=st.lists(st.tuples(_cell, _cell), max_size=12),
)
def test_every_value_a_derivation_evaluates_to_is_in_its_domain(
    expr: tuple[str, tuple[int, ...] | None], rows: list[tuple[Any, Any]]
) -> None:
    text, expected = expr
    (derivation,) = parse_derivations([("d", text)])
    assert derivation.domain == expected
    table = pd.DataFrame(rows, columns=list(_COLUMNS), dtype="float64")
    values = derivation.evaluate(table, {}).dropna().tolist()
    if expected is not None:
        assert set(values) <= set(expected)


def test_a_comparison_is_0_or_1_a_bin_0_to_k_anything_else_unknown() -> None:
    domains = {
        d.name: d.domain
        for d in parse_derivations(
            [
                ("passed", "score > 6"),
                ("female", "gender == 'F'"),
                ("band", "bin(age, 18, 25, 40)"),
                ("ratio", "a / b"),
                ("high", "score > median(score)"),
                ("shifted", "score - median(score)"),
            ]
        )
    }
    assert domains == {
        "passed": (0, 1),
        "female": (0, 1),
        "band": (0, 1, 2, 3),
        "ratio": None,
        "high": (0, 1),
        "shifted": None,
    }


# --- the domain an encoding from the schema uses -----------------------------------------

DERIVED = {d.name: d for d in parse_derivations([("band", "bin(age, 18)"), ("r", "a / b")])}


def domain(column: str, **kwargs: Any) -> tuple[Any, ...]:
    args: dict[str, Any] = {"declared": {}, "derived": DERIVED, "listed": {}}
    return schema_domain(column, **{**args, **kwargs})


def test_declared_categories_come_first_then_a_derived_domain_then_the_catalogue() -> None:
    assert domain("band") == (0, 1)
    assert domain("band", declared={"band": [1, 0]}) == (1, 0)
    assert domain("g", listed={"g": ["F", "M"]}) == ("F", "M")
    assert domain("g", listed={"g": ["F", "M"]}, declared={"g": ["M"]}) == ("M",)


@pytest.mark.parametrize(
    ("column", "listed", "target", "message"),
    [
        (
            "postcode",
            {},
            False,
            "the schema lists no values of 'postcode', a categorical feature: the data "
            "provider's catalogue lists none of a field with more than 100 distinct values; "
            "declare its categories in the job file's [data.categories] (postcode = [...])",
        ),
        (
            "postcode",
            {"postcode": []},
            False,
            "the schema lists no values of 'postcode', a categorical feature: the data "
            "provider's catalogue lists none when no value is held by enough records; "
            "declare its categories in the job file's [data.categories] (postcode = [...])",
        ),
        (
            "r",
            {},
            False,
            "the schema lists no values of 'r', a categorical feature: a derived column's "
            "values are known only for a comparison or a bin(); declare its categories in "
            "the job file's [data.categories] (r = [...])",
        ),
        (
            "r",
            {},
            True,
            "the schema lists no values of 'r', a classification target: a derived column's "
            "values are known only for a comparison or a bin(); derive classes from it (a "
            "comparison or a bin()) in a column of their own",
        ),
    ],
)
def test_a_column_without_a_domain_says_why_and_what_to_do(
    column: str, listed: dict[str, Any], target: bool, message: str
) -> None:
    with pytest.raises(DataError) as err:
        domain(column, listed=listed, target=target)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("categories", "message"),
    [
        ({"score": ["a"]}, "categories.score: the target's classes are not declared"),
        ({"age": [1]}, "categories.age: 'age' is not a categorical feature; list it there"),
        ({"g": []}, "categories.g: must list 1 to 10,000 values"),
        ({"g": "FM"}, "categories.g: must list 1 to 10,000 values"),
        ({"g": [None]}, "categories.g: None is not a string, a whole or finite number"),
        ({"g": [float("inf")]}, "categories.g: inf is not a string"),
        ({"g": [2, 2.0, "x", "x"]}, "categories.g: 2, x listed twice"),
    ],
)
def test_declared_categories_are_checked(categories: dict[str, Any], message: str) -> None:
    with pytest.raises(DataError) as err:
        declared_categories(categories, categorical=["g"], target="score")
    assert str(err.value).startswith(message)


def test_declared_categories_keep_their_order_and_true_is_not_1() -> None:
    assert declared_categories({"g": ["M", "F", 1, True]}, categorical=["g"], target="y") == {
        "g": ("M", "F", 1, True)
    }


def test_no_features_means_every_column_then_every_derived_one_but_target_and_people() -> None:
    derive = parse_derivations([("passed", "score > 6"), ("band", "bin(age, 18)")])
    got = every_feature(
        ["school", "score", "age", "gender"], target="passed", derive=derive, identifying={"school"}
    )
    assert got == ["score", "age", "gender", "band"]


# --- a fit with declared categories ------------------------------------------------------

ROWS = pd.DataFrame(
    {
        "y": [0, 1, 0, 1, 0, 1, 1, 0],
        "x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
        "g": ["a", "b", "b", "c", "c", "c", None, "z"],
    }
)


def fit(**kwargs: Any) -> Preprocessor:
    args: dict[str, Any] = {
        "target": "y",
        "features": ["x", "g"],
        "categorical": ["g"],
        "task": "classification",
        "missing": "impute",
    }
    return Preprocessor.fit(ROWS, **{**args, **kwargs})


def test_a_fit_takes_the_declared_categories_in_their_order() -> None:
    pre = fit(categories={"g": ["c", "a", "never"]})
    assert pre.feature_names == ("x", "g=c", "g=a", "g=never")
    one_hot = pre.transform(ROWS).x[:, 1:]
    a, b, c, imputed, z = one_hot[[0, 1, 3, 6, 7]].tolist()
    assert (a, b, c) == ([0, 1, 0], [0, 0, 0], [1, 0, 0])  # b: outside, all zeros
    assert (imputed, z) == ([1, 0, 0], [0, 0, 0])  # the mode among the declared fills row 6
    assert pre.columns[1].fill == "c"
    assert fit().feature_names == ("x", "g=a", "g=b", "g=c", "g=z")  # undeclared: as before


def test_summaries_over_a_declared_domain_count_by_text_and_leave_others_out() -> None:
    frame = pd.DataFrame({"k": [2, 2, 3, 5, None, 5, 5]})
    got = summarize(frame, categorical=["k"], domains={"k": [5.0, 2, 9]})["k"]
    assert (got.categories, got.mode, got.count, got.missing) == ((5.0, 2), 5.0, 6, 1)


def test_federated_summaries_count_a_declared_domain_as_pooled_rows_do() -> None:
    nodes = pd.Series(np.arange(len(ROWS)) % 3, index=ROWS.index)
    federated = FederatedSummaries(nodes, 3, plain_totals)
    declared = {"g": ["c", "a", "never"]}
    assert federated(ROWS, categorical=["g"], domains=declared) == summarize(
        ROWS, categorical=["g"], domains=declared
    )
    column = federated.columns["g"]
    assert (column["counts"], column["other"], column["missing"]) == (
        {"c": 3, "a": 1, "never": 0},
        3,  # b, b, z
        1,
    )


def test_prepare_job_fits_declared_categories_from_federated_totals(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    rng = np.random.default_rng(0)
    n = 120
    pd.DataFrame(
        {
            "school": np.repeat(np.arange(12), n // 12),
            "y": rng.integers(0, 2, n),
            "x": rng.normal(size=n),
            "g": rng.choice(["a", "b", "c", "d"], n),
        }
    ).to_csv(path, index=False)
    cfg = parse_config(
        {
            "job": {"name": "declared", "task": "classification"},
            "data": {
                "source": "csv",
                "dataset": str(path),
                "target": "y",
                "features": ["x", "g"],
                "categorical": ["g"],
                "categories": {"g": ["d", "a", "e"]},
                "missing": {"default": "impute"},
            },
            "partition": {"scheme": "natural", "column": "school"},
            "model": {"kind": "linear"},
            "recipe": {"clip_norm": 5.0},
            "federation": {"rounds": 1},
        }
    )
    pooled = prepare_job(cfg)
    fed = prepare_job(cfg, totals_of=plain_totals)
    assert fed.feature_names == pooled.feature_names == ("x", "g=d", "g=a", "g=e")
    assert fed.preprocessor is not None and pooled.preprocessor is not None
    assert fed.preprocessor.columns[1].fill == pooled.preprocessor.columns[1].fill
    assert fed.statistics is not None
    assert set(fed.statistics.columns["g"]["counts"]) == {"d", "a", "e"}
    plan = fed.preprocessor.statistics_plan()  # a deployment counts the declared domain too
    assert dict(plan.categorical)["g"] == ("d", "a", "e")


def test_a_category_matches_whatever_type_its_value_is_read_as() -> None:
    """A declared "1" on a column of numbers, or a node's JSON 2 for a table's 2.0: the
    encoding matches values as the statistics rounds count them (one text per value)."""
    frame = pd.DataFrame({"level": [1, 2, 2, 3, None], "y": [0, 1, 0, 1, 0]})
    pre = Preprocessor.fit(
        frame,
        target="y",
        features=["level"],
        categorical=["level"],
        categories={"level": ["1", "2"]},
        task="classification",
        missing="impute",
    )
    x = pre.transform(frame).x
    np.testing.assert_array_equal(x[:4], [[1, 0], [0, 1], [0, 1], [0, 0]])  # 3: none
    plan = pre.statistics_plan()
    counts = plan.totals(pre.counted_vector(frame, 0)).categorical["level"]
    assert counts.counts == {"1": 1, "2": 2} and counts.other == 1

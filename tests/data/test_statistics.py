"""Column statistics that add up: a node's vector, the plan, and reading totals back."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.data.statistics import HUGE, StatisticsPlan
from tessera.errors import DataError

TABLE = pd.DataFrame(
    {
        "score": [2.0, 4.0, np.nan, 8.0, 10.0, -3.5],
        "age": [17, 18, 18, 19, 21, 18],
        "gender": ["F", "M", "M", None, "F", "X"],
    }
)


def plan() -> StatisticsPlan:
    return StatisticsPlan(("score", "age"), (("gender", ("F", "M")),))


def test_totals_of_one_table_are_its_statistics() -> None:
    totals = plan().totals(plan().vector(TABLE))
    score = totals.numeric["score"]
    present = TABLE["score"].dropna()
    assert (score.count, score.missing) == (5, 1)
    assert score.mean == pytest.approx(present.mean())
    assert score.std == pytest.approx(present.std(ddof=0))
    gender = totals.categorical["gender"]
    assert gender.counts == {"F": 2, "M": 2}
    assert (gender.other, gender.missing) == (1, 1)  # "X" is not in the domain
    assert gender.mode == "F"  # a tie goes to the first value of the domain


def test_the_sum_of_vectors_is_the_vector_of_the_union() -> None:
    p = plan()
    halves = TABLE.iloc[:3], TABLE.iloc[3:]
    np.testing.assert_allclose(p.vector(halves[0]) + p.vector(halves[1]), p.vector(TABLE))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).filter(
            lambda v: v == 0 or abs(v) > 1e-5
        ),
        min_size=1,
        max_size=60,
    ),
    st.sampled_from([0.0, 0.25, 0.5, 0.9, 1.0]),
)
def test_quantiles_are_within_the_relative_accuracy(values: list[float], q: float) -> None:
    p = StatisticsPlan(("v",), relative_accuracy=0.02)
    totals = p.totals(p.vector(pd.DataFrame({"v": values})))
    got = totals.numeric["v"].quantile(q)
    # DDSketch's rank: the value of rank floor(q * (n - 1)) in sorted order
    ordered = sorted(values)
    want = ordered[math.floor(q * (len(values) - 1))]
    assert abs(got - want) <= 0.02 * abs(want) + 1e-9
    assert totals.numeric["v"].min == pytest.approx(min(values), rel=0.021, abs=1e-9)
    assert totals.numeric["v"].max == pytest.approx(max(values), rel=0.021, abs=1e-9)


def test_a_plan_travels_as_json() -> None:
    p = StatisticsPlan.of(TABLE, numeric=["score"], categorical=["gender"])
    assert p.categorical == (("gender", ("F", "M", "X")),)
    assert StatisticsPlan.from_json(p.to_json()) == p
    dropping = StatisticsPlan(("score",), dropped=("score",))
    assert StatisticsPlan.from_json(dropping.to_json()) == dropping
    with pytest.raises(DataError, match="not a statistics plan"):
        StatisticsPlan.from_json({"format": "other"})
    with pytest.raises(DataError, match="malformed"):
        StatisticsPlan.from_json({**p.to_json(), "numeric": 3})


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: StatisticsPlan(("a", "a")), "names a column twice"),
        (lambda: StatisticsPlan(("a",), relative_accuracy=0.7), "relative_accuracy"),
        (lambda: StatisticsPlan((), (("g", ("x", "x")),)), "lists a value twice"),
        (lambda: StatisticsPlan(("a",), dropped=("b",)), "drops rows by columns it counts"),
    ],
)
def test_a_malformed_plan_is_refused(make, message: str) -> None:
    with pytest.raises(DataError, match=message):
        make()


def test_values_a_node_cannot_count_are_refused_with_the_column() -> None:
    with pytest.raises(DataError, match=r"'score'.*over"):
        plan().vector(TABLE.assign(score=[1.0, 2.0, 3.0, 4.0, 5.0, HUGE * 2]))
    with pytest.raises(DataError, match=r"'gender'.*not numeric"):
        StatisticsPlan(("gender",)).vector(TABLE)
    with pytest.raises(DataError, match="not in"):
        StatisticsPlan(("absent",)).vector(TABLE)
    with pytest.raises(DataError, match="shape"):
        plan().totals(np.zeros(3))


def test_an_empty_column_has_no_mean_nor_quantiles() -> None:
    totals = plan().totals(plan().vector(TABLE.iloc[:0]))
    assert math.isnan(totals.numeric["score"].mean)
    assert math.isnan(totals.numeric["score"].std)
    assert math.isnan(totals.numeric["score"].median)
    assert totals.categorical["gender"].mode is None


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 4),  # the node
            st.one_of(st.floats(-1e5, 1e5, allow_nan=False), st.just(np.nan)),
            st.sampled_from(["F", "M", "X", None]),
        ),
        max_size=40,
    )
)
def test_all_nodes_at_once_equal_each_node_alone(rows: list[tuple[int, float, object]]) -> None:
    """``vectors`` (the simulator's one pass) is ``vector`` of each node's rows."""
    p = StatisticsPlan(("score",), (("gender", ("F", "M")),))
    table = pd.DataFrame(rows, columns=["node", "score", "gender"])
    nodes = table["node"].to_numpy(dtype=np.int64)
    together = p.vectors(table, nodes, 5)
    for i in range(5):
        np.testing.assert_allclose(together[i], p.vector(table[nodes == i]), rtol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 4),  # the node
            st.one_of(st.floats(-1e5, 1e5, allow_nan=False), st.just(np.nan), st.just(np.inf)),
            st.sampled_from(["F", "M", "X", None]),
        ),
        max_size=40,
    )
)
def test_a_plan_that_drops_rows_counts_them_and_the_rest_as_without_them(
    rows: list[tuple[int, float, object]],
) -> None:
    """With ``dropped``, the totals count the rows, the drops per column, and the other
    statistics of the kept rows exactly as a plan without drops counts those rows; and
    the nodes' vectors still add up to the union's."""
    table = pd.DataFrame(rows, columns=["node", "score", "gender"])
    nodes = table["node"].to_numpy(dtype=np.int64)
    dropping = StatisticsPlan(("score",), (("gender", ("F", "M")),), dropped=("score", "gender"))
    plain = StatisticsPlan(("score",), (("gender", ("F", "M")),))
    together = dropping.vectors(table, nodes, 5)
    np.testing.assert_allclose(together.sum(axis=0), dropping.vector(table), atol=1e-6)
    totals = dropping.totals(dropping.vector(table))
    no_score = ~np.isfinite(table["score"].to_numpy(dtype=np.float64))
    no_gender = table["gender"].isna().to_numpy()
    kept = table[~(no_score | no_gender)]
    assert totals.rows is not None
    assert totals.rows.rows == len(table)
    assert totals.rows.dropped == len(table) - len(kept)
    assert totals.rows.dropped_by == {"score": int(no_score.sum()), "gender": int(no_gender.sum())}
    assert totals.numeric == plain.totals(plain.vector(kept)).numeric
    assert totals.categorical == plain.totals(plain.vector(kept)).categorical
    assert plain.totals(plain.vector(table)).rows is None


def test_every_row_needs_a_node() -> None:
    with pytest.raises(DataError, match="every row needs a node"):
        plan().vectors(TABLE, np.zeros(len(TABLE) - 1, np.int64), 1)
    with pytest.raises(DataError, match="every row needs a node"):
        plan().vectors(TABLE, np.full(len(TABLE), 3, np.int64), 2)


def test_a_category_read_as_a_number_or_a_float_counts_alike() -> None:
    """A table reads a class column with gaps as floats (2.0), a node's JSON records as
    integers (2): both are the plan's "2", never "other"."""
    plan = StatisticsPlan((), (("grade", ("0", "2")),))
    for column in ([0, 2, 2], [0.0, 2.0, 2.0], np.array([0, 2, 2], np.int64)):
        totals = plan.totals(plan.vector(pd.DataFrame({"grade": column})))
        assert totals.categorical["grade"].counts == {"0": 1, "2": 2}
        assert totals.categorical["grade"].other == 0

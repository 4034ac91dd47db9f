"""Group valuation on constructed cases whose answer is known."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.contributions import GroupUpdate, leave_one_out, shapley

TARGET = np.array([1.0, -2.0, 0.5])


def utility(mean: np.ndarray | None) -> float:
    """The model starts at 0; a coalition's mean update moves it; closer to TARGET is better."""
    moved = np.zeros(3) if mean is None else mean
    return -float(np.sum((moved - TARGET) ** 2))


def group(name: str, update: np.ndarray, weight: float = 4.0) -> GroupUpdate:
    return GroupUpdate(name, (f"{name}-a", f"{name}-b"), np.asarray(update) * weight, weight)


def exact_shapley(groups: list[GroupUpdate]) -> dict[str, float]:
    n = len(groups)

    def u(s: tuple[int, ...]) -> float:
        if not s:
            return utility(None)
        total = sum(groups[i].total for i in s)
        return utility(total / sum(groups[i].weight for i in s))

    value = dict.fromkeys(range(n), 0.0)
    for order in itertools.permutations(range(n)):
        for k, i in enumerate(order):
            value[i] += u(tuple(order[: k + 1])) - u(tuple(order[:k]))
    return {groups[i].group: v / math.factorial(n) for i, v in value.items()}


def test_a_group_pulling_away_scores_below_zero_and_the_helpful_ones_above() -> None:
    groups = [group("g0", TARGET), group("g1", TARGET * 0.9), group("bad", -3 * TARGET)]
    for values in (
        leave_one_out(groups, utility),
        shapley(groups, utility, permutations=20, rng=np.random.default_rng(0)),
    ):
        assert values["bad"] < 0 < min(values["g0"], values["g1"])


def test_leave_one_out_is_the_score_without_each_group() -> None:
    groups = [group("a", TARGET), group("b", np.zeros(3))]
    values = leave_one_out(groups, utility)
    both = utility(TARGET / 2)
    assert values == {"a": both - utility(np.zeros(3)), "b": both - utility(TARGET)}


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.floats(-3, 3), min_size=3, max_size=3),
            st.floats(0.5, 10),
        ),
        min_size=1,
        max_size=5,
    ),
    st.integers(1, 12),
)
def test_the_estimate_shares_out_exactly_what_everyone_together_brought(
    drawn: list[tuple[list[float], float]], permutations: int
) -> None:
    """Efficiency: without truncation every walk credits U(all) - U(none) in all."""
    groups = [group(f"g{i}", np.array(u), w) for i, (u, w) in enumerate(drawn)]
    values = shapley(groups, utility, permutations=permutations, rng=np.random.default_rng(1))
    everyone = utility(sum(g.total for g in groups) / sum(g.weight for g in groups))
    assert sum(values.values()) == pytest.approx(everyone - utility(None), abs=1e-9)


def test_the_estimate_tends_to_the_exact_shapley_value() -> None:
    groups = [group("a", TARGET), group("b", TARGET * 0.2, 9.0), group("c", -TARGET, 2.0)]
    exact = exact_shapley(groups)
    estimate = shapley(groups, utility, permutations=600, rng=np.random.default_rng(2))
    for name, value in exact.items():
        assert estimate[name] == pytest.approx(value, abs=0.05 * max(map(abs, exact.values())))


def test_truncation_spends_fewer_utility_calls() -> None:
    calls = {"n": 0}

    def counted(mean: np.ndarray | None) -> float:
        calls["n"] += 1
        return utility(mean)

    groups = [group(f"g{i}", TARGET * (1 + 0.001 * i)) for i in range(12)]
    shapley(groups, counted, permutations=8, rng=np.random.default_rng(3))
    full = calls["n"]
    calls["n"] = 0
    shapley(groups, counted, permutations=8, truncation=0.05, rng=np.random.default_rng(3))
    assert calls["n"] < full / 2


def test_a_group_sum_without_weight_is_refused() -> None:
    with pytest.raises(ValueError, match="positive weight"):
        GroupUpdate("g", ("a",), np.zeros(3), 0.0)

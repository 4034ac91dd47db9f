"""Partitions: every record on exactly one node, no empty node, same seed same split."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.data import Partition, dirichlet, iid, natural, per_record, quantity_skew
from tessera.errors import DataError

FAST = settings(max_examples=60, deadline=None)


def assert_valid(p: Partition, n: int) -> None:
    assert p.n_records == n
    assert p.offsets[0] == 0 and p.offsets[-1] == n and len(p.offsets) == p.n_nodes + 1
    assert (p.sizes >= 1).all()
    held = np.concatenate([p.records(i) for i in range(p.n_nodes)])
    np.testing.assert_array_equal(np.sort(held), np.arange(n))  # each record exactly once
    owners = p.owners()
    for i in range(p.n_nodes):
        assert (owners[p.records(i)] == i).all()
    assert len(set(p.names)) == p.n_nodes
    assert p.order.dtype == np.int64 and p.offsets.dtype == np.int64


@st.composite
def sizes(draw: st.DrawFn, most: int = 300) -> tuple[int, int, int]:
    n = draw(st.integers(1, most))
    n_nodes = draw(st.integers(1, min(n, 40)))
    seed = draw(st.integers(0, 2**32 - 1))
    return n, n_nodes, seed


alphas = st.floats(0.01, 100.0)


@FAST
@given(sizes())
def test_iid(case: tuple[int, int, int]) -> None:
    n, n_nodes, seed = case
    p = iid(n, n_nodes, seed)
    assert_valid(p, n)
    assert p.n_nodes == n_nodes and p.sizes.max() - p.sizes.min() <= 1
    assert p == iid(n, n_nodes, seed)


@FAST
@given(sizes(), alphas, st.integers(1, 5))
def test_quantity_skew(case: tuple[int, int, int], alpha: float, min_size: int) -> None:
    n, n_nodes, seed = case
    if n_nodes * min_size > n:
        with pytest.raises(DataError, match="cannot give"):
            quantity_skew(n, n_nodes, alpha, seed, min_size)
        return
    p = quantity_skew(n, n_nodes, alpha, seed, min_size)
    assert_valid(p, n)
    assert p.n_nodes == n_nodes and p.sizes.min() >= min_size
    assert p == quantity_skew(n, n_nodes, alpha, seed, min_size)


@FAST
@given(sizes(), alphas, st.integers(1, 10), st.data())
def test_dirichlet(
    case: tuple[int, int, int], alpha: float, n_classes: int, data: st.DataObject
) -> None:
    n, n_nodes, seed = case
    labels = np.array(data.draw(st.lists(st.integers(0, n_classes - 1), min_size=n, max_size=n)))
    try:
        p = dirichlet(labels, n_nodes, alpha, seed)
    except DataError as exc:  # an unreachable draw is allowed, but must say so
        failure = str(exc)
    else:
        failure = ""
    if failure:
        assert "larger alpha" in failure
        return
    assert_valid(p, n)
    assert p.n_nodes == n_nodes
    assert p == dirichlet(labels, n_nodes, alpha, seed)


@FAST
@given(st.lists(st.sampled_from(["b", "a", "c", "d"]) | st.integers(0, 5).map(str), min_size=1))
def test_natural(values: list[str]) -> None:
    groups = np.array(values)
    p = natural(groups)
    assert_valid(p, len(groups))
    assert p.names == tuple(sorted(set(values)))
    for i, name in enumerate(p.names):
        records = p.records(i)
        assert (groups[records] == name).all()  # one group value per node
        assert (np.diff(records) > 0).all()  # original order within a node
    assert p == natural(groups)


@FAST
@given(st.integers(1, 500))
def test_per_record(n: int) -> None:
    p = per_record(n)
    assert_valid(p, n)
    assert p.n_nodes == n and (p.sizes == 1).all()


def test_natural_is_vectorized_for_one_record_nodes() -> None:
    groups = np.random.default_rng(0).permutation(31_022)
    start = time.perf_counter()
    p = natural(groups)
    assert time.perf_counter() - start < 0.5  # milliseconds in practice
    assert p.n_nodes == 31_022
    assert p.names[:3] == ("0", "1", "2")
    np.testing.assert_array_equal(groups[p.order], np.arange(31_022))


def test_natural_numeric_groups_sort_by_value() -> None:
    p = natural(np.array([10, 2, 10, 33, 2]))
    assert p.names == ("2", "10", "33")
    np.testing.assert_array_equal(p.records(1), [0, 2])


def test_dirichlet_small_alpha_skews_labels() -> None:
    labels = np.repeat(np.arange(10), 200)

    def classes_per_node(alpha: float) -> float:
        p = dirichlet(labels, 20, alpha, seed=0)
        assert_valid(p, len(labels))
        return float(np.mean([len(np.unique(labels[p.records(i)])) for i in range(20)]))

    assert classes_per_node(0.1) < 5 < classes_per_node(100.0)


def test_quantity_skew_small_alpha_is_unbalanced() -> None:
    skewed = quantity_skew(10_000, 20, 0.2, seed=0).sizes
    even = quantity_skew(10_000, 20, 1000.0, seed=0).sizes
    assert skewed.max() / skewed.min() > 10 > even.max() / even.min()


def test_seeds_change_the_split() -> None:
    assert iid(100, 5, 0) != iid(100, 5, 1)
    labels = np.arange(100) % 3
    assert dirichlet(labels, 5, 1.0, 0) != dirichlet(labels, 5, 1.0, 1)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: iid(3, 5, 0), "cannot give 5 nodes"),
        (lambda: iid(0, 1, 0), "empty data"),
        (lambda: iid(10, 0, 0), "n_nodes must be at least 1"),
        (lambda: iid(10, 2.5, 0), "n_nodes must be an integer"),  # type: ignore[arg-type]
        (lambda: per_record(0), "number of records must be at least 1"),
        (lambda: iid(10, 2, -1), "seed must be at least 0"),
        (lambda: quantity_skew(10, 2, 0.0, 0), "alpha must be a finite number > 0"),
        (lambda: quantity_skew(10, 2, float("nan"), 0), "alpha must be a finite number > 0"),
        (lambda: quantity_skew(10, 4, 1.0, 0, min_size=3), "at least 3 record"),
        (lambda: dirichlet(np.array([]), 1, 1.0, 0), "empty data"),
        (lambda: dirichlet(np.zeros(10), 2, -1.0, 0), "alpha must be"),
        (lambda: dirichlet(np.zeros((3, 3)), 2, 1.0, 0), "1-D"),
        (lambda: dirichlet(np.zeros(50), 5, 1e-3, 0), r"larger alpha"),
        (lambda: natural(np.array([])), "non-empty"),
        (lambda: natural(np.array([1.0, np.nan])), "NaN"),
        (lambda: natural(np.array([1, "a", None], dtype=object)), "cannot be sorted"),
    ],
)
def test_impossible_requests_raise_data_error(make: object, message: str) -> None:
    with pytest.raises(DataError, match=message):
        make()  # type: ignore[operator]


def test_partition_checks_its_invariants() -> None:
    ok = Partition(order=np.array([2, 0, 1]), offsets=np.array([0, 1, 3]), names=("a", "b"))
    np.testing.assert_array_equal(ok.records(1), [0, 1])
    with pytest.raises(ValueError, match="read-only"):
        ok.order[0] = 5
    with pytest.raises(DataError, match="permutation"):
        Partition(order=np.array([0, 0, 1]), offsets=np.array([0, 1, 3]), names=("a", "b"))
    with pytest.raises(DataError, match="'b' is empty"):
        Partition(order=np.array([0, 1, 2]), offsets=np.array([0, 3, 3]), names=("a", "b"))
    with pytest.raises(DataError, match="2 names but 1 nodes"):
        Partition(order=np.array([0, 1, 2]), offsets=np.array([0, 3]), names=("a", "b"))
    with pytest.raises(DataError, match="from 0 to 3"):
        Partition(order=np.array([0, 1, 2]), offsets=np.array([0, 1, 2]), names=("a", "b"))
    with pytest.raises(DataError, match="distinct"):
        Partition(order=np.array([0, 1, 2]), offsets=np.array([0, 1, 3]), names=("a", "a"))
    with pytest.raises(DataError, match="integer array"):
        Partition(order=np.array([0.0, 1.0]), offsets=np.array([0, 2]), names=("a",))
    with pytest.raises(DataError, match="node index 2 out of range"):
        ok.records(2)

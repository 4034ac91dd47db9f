from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.errors import ConfigError, DataError
from tessera.ids import Task
from tessera.training import (
    BatchedTrainer,
    ModelSpec,
    Recipe,
    TrainResult,
    epoch_permutation,
    evaluate,
    init_weights,
    layout,
)
from tessera.training.shuffle import chunk_permutation

TrainOne = Callable[..., tuple[np.ndarray, float]]

# unequal nodes, one empty, some smaller than a batch, some spanning several
SIZES = np.array([7, 0, 1, 12, 4, 4, 9, 2])


def _data(
    spec: ModelSpec, loss: str, sizes: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = int(sizes.sum())
    x = rng.normal(size=(n, *spec.input_shape)).astype(np.float32)
    if loss == "cross_entropy":
        y = rng.integers(0, spec.n_outputs, n)
    else:
        y = rng.normal(size=(n, spec.n_outputs)).astype(np.float32)
        if spec.n_outputs == 1:
            y = y[:, 0]
    return x, y, np.concatenate([[0], np.cumsum(sizes)])


def _weights(spec: ModelSpec, seed: int = 3) -> np.ndarray:
    return layout(spec).flatten(init_weights(spec, seed))


def _check_against_reference(
    train_one: TrainOne,
    spec: ModelSpec,
    *,
    recipe: Recipe,
    sizes: np.ndarray,
    engine: str = "auto",
    seed: int = 11,
) -> TrainResult:
    x, y, off = _data(spec, recipe.loss, sizes)
    g = _weights(spec)
    trainer = BatchedTrainer(spec, recipe, x, y, off, engine=engine)  # type: ignore[arg-type]
    nodes = np.random.default_rng(1).permutation(len(sizes))
    res = trainer.train(g, nodes, seed)
    assert res.deltas.shape == (len(nodes), layout(spec).size)
    assert res.deltas.dtype == np.float32
    assert res.loss.dtype == np.float32
    assert res.num_samples.dtype == np.int64
    assert np.array_equal(res.num_samples, sizes[nodes])
    for row, node in enumerate(nodes):
        lo, hi = off[node], off[node + 1]
        if lo == hi:
            assert not res.deltas[row].any()
            assert res.loss[row] == 0
            continue
        delta, loss = train_one(
            spec, recipe=recipe, x=x[lo:hi], y=y[lo:hi], global_weights=g, node=int(node), seed=seed
        )
        np.testing.assert_allclose(res.deltas[row], delta, rtol=1e-4, atol=2e-6)
        assert res.loss[row] == pytest.approx(loss, rel=1e-4, abs=1e-6)
    return res


LINEAR = ModelSpec("linear", (3,), 4)
MLP = ModelSpec("mlp", (3,), 4, hidden=(8, 5))
RECIPES = {
    "sgd": Recipe("cross_entropy", lr=0.1, batch_size=4),
    "momentum-wd": Recipe(
        "cross_entropy", lr=0.1, batch_size=4, local_epochs=2, momentum=0.9, weight_decay=0.01
    ),
    "adam-prox": Recipe(
        "cross_entropy", optimizer="adam", lr=0.02, batch_size=3, local_epochs=3, prox_mu=0.5
    ),
    "adam-wd-clip": Recipe(
        "cross_entropy", optimizer="adam", lr=0.05, batch_size=5, weight_decay=0.1, clip_norm=0.05
    ),
    "sgd-prox-clip": Recipe(
        "cross_entropy", lr=0.3, batch_size=2, local_epochs=2, prox_mu=0.2, clip_norm=0.2
    ),
}


@pytest.mark.parametrize("recipe", RECIPES.values(), ids=list(RECIPES))
@pytest.mark.parametrize("spec", [LINEAR, MLP], ids=["linear", "mlp"])
def test_batched_equals_single_node_reference(
    train_one: TrainOne, spec: ModelSpec, recipe: Recipe
) -> None:
    _check_against_reference(train_one, spec, recipe=recipe, sizes=SIZES)


@pytest.mark.parametrize("n_outputs", [1, 2])
@pytest.mark.parametrize("spec_kind", ["linear", "mlp"])
def test_mse_regression_equals_reference(
    train_one: TrainOne, spec_kind: str, n_outputs: int
) -> None:
    hidden = (6,) if spec_kind == "mlp" else ()
    spec = ModelSpec(spec_kind, (3,), n_outputs, hidden=hidden)  # type: ignore[arg-type]
    recipe = Recipe("mse", lr=0.05, batch_size=3, local_epochs=2, momentum=0.5)
    _check_against_reference(train_one, spec, recipe=recipe, sizes=SIZES)


@pytest.mark.parametrize("recipe", [RECIPES["momentum-wd"], RECIPES["adam-prox"]], ids=str)
def test_vmap_engine_equals_reference(train_one: TrainOne, recipe: Recipe) -> None:
    _check_against_reference(train_one, MLP, recipe=recipe, sizes=SIZES, engine="vmap")


def test_cnn_on_8x8_images_equals_reference(train_one: TrainOne) -> None:
    spec = ModelSpec("cnn", (1, 8, 8), 10, channels=(4, 6))
    recipe = Recipe("cross_entropy", optimizer="adam", lr=0.01, batch_size=4, local_epochs=2)
    res = _check_against_reference(train_one, spec, recipe=recipe, sizes=np.array([9, 3, 0, 5]))
    assert np.isfinite(res.deltas).all()


def test_centralized_single_node(train_one: TrainOne) -> None:
    recipe = Recipe("cross_entropy", lr=0.1, batch_size=8, local_epochs=2, momentum=0.9)
    _check_against_reference(train_one, MLP, recipe=recipe, sizes=np.array([61]))


def test_results_do_not_depend_on_chunking_or_order() -> None:
    sizes = np.random.default_rng(5).integers(0, 40, 10)
    recipe = Recipe("cross_entropy", optimizer="adam", lr=0.01, batch_size=8, local_epochs=2)
    x, y, off = _data(MLP, recipe.loss, sizes)
    g = _weights(MLP)
    trainer = BatchedTrainer(MLP, recipe, x, y, off)
    together = trainer.train(g, np.arange(10), seed=4)
    first, second = trainer.train(g, np.arange(5), 4), trainer.train(g, np.arange(5, 10), 4)
    split = np.concatenate([first.deltas, second.deltas])
    np.testing.assert_allclose(together.deltas, split, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(together.loss, np.concatenate([first.loss, second.loss]), rtol=1e-5)
    tiny = BatchedTrainer(MLP, recipe, x, y, off, max_chunk_elements=1)  # one node per chunk
    reversed_ = tiny.train(g, np.arange(10)[::-1], seed=4)
    np.testing.assert_allclose(together.deltas, reversed_.deltas[::-1], rtol=1e-5, atol=1e-7)
    again = trainer.train(g, np.arange(10), seed=5)
    assert not np.allclose(together.deltas, again.deltas)  # the seed matters


def test_many_nodes_in_size_buckets_match_reference(train_one: TrainOne) -> None:
    sizes = np.random.default_rng(9).integers(1, 50, 300)
    recipe = Recipe("cross_entropy", optimizer="adam", lr=0.01, batch_size=16, local_epochs=2)
    x, y, off = _data(LINEAR, recipe.loss, sizes)
    g = _weights(LINEAR)
    trainer = BatchedTrainer(LINEAR, recipe, x, y, off)
    assert len(trainer._plan(np.sort(sizes)[::-1])) > 1  # several sub-chunks
    res = trainer.train(g, np.arange(300), seed=6)
    for node in (0, 17, int(np.argmin(sizes)), int(np.argmax(sizes)), 299):
        lo, hi = off[node], off[node + 1]
        delta, loss = train_one(
            LINEAR, recipe=recipe, x=x[lo:hi], y=y[lo:hi], global_weights=g, node=node, seed=6
        )
        np.testing.assert_allclose(res.deltas[node], delta, rtol=1e-4, atol=2e-6)
        assert res.loss[node] == pytest.approx(loss, rel=1e-4)


def test_prox_mu_argument_overrides_the_recipe() -> None:
    x, y, off = _data(MLP, "cross_entropy", SIZES)
    g = _weights(MLP)
    plain = Recipe("cross_entropy", lr=0.2, batch_size=3, local_epochs=2)
    prox = Recipe("cross_entropy", lr=0.2, batch_size=3, local_epochs=2, prox_mu=0.7)
    nodes = np.arange(len(SIZES))
    want = BatchedTrainer(MLP, prox, x, y, off).train(g, nodes, 1)
    got = BatchedTrainer(MLP, plain, x, y, off).train(g, nodes, 1, prox_mu=0.7)
    np.testing.assert_array_equal(got.deltas, want.deltas)
    off_ = BatchedTrainer(MLP, prox, x, y, off).train(g, nodes, 1, prox_mu=0.0)
    np.testing.assert_array_equal(
        off_.deltas, BatchedTrainer(MLP, plain, x, y, off).train(g, nodes, 1).deltas
    )
    with pytest.raises(ConfigError):
        BatchedTrainer(MLP, plain, x, y, off).train(g, nodes, 1, prox_mu=-1.0)


def test_duplicate_nodes_get_identical_rows() -> None:
    x, y, off = _data(LINEAR, "cross_entropy", SIZES)
    trainer = BatchedTrainer(LINEAR, RECIPES["sgd"], x, y, off)
    res = trainer.train(_weights(LINEAR), np.array([3, 6, 3]), 0)
    np.testing.assert_array_equal(res.deltas[0], res.deltas[2])


ClipSetup = tuple[Recipe, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def clip_setup() -> ClipSetup:
    sizes = np.array([30, 1, 17, 8, 3])
    recipe = Recipe("cross_entropy", lr=0.5, batch_size=4, local_epochs=2)
    x, y, off = _data(MLP, recipe.loss, sizes)
    g = _weights(MLP)
    raw = BatchedTrainer(MLP, recipe, x, y, off).train(g, np.arange(5), 2).deltas
    return recipe, x, y, off, g, raw


@settings(max_examples=25, deadline=None)
@given(clip=st.floats(min_value=1e-4, max_value=20.0))
def test_clip_bound_is_respected(clip_setup: ClipSetup, clip: float) -> None:
    base, x, y, off, g, raw = clip_setup
    recipe = Recipe("cross_entropy", lr=base.lr, batch_size=4, local_epochs=2, clip_norm=clip)
    res = BatchedTrainer(MLP, recipe, x, y, off).train(g, np.arange(5), 2)
    norms = np.linalg.norm(res.deltas.astype(np.float64), axis=1)
    raw_norms = np.linalg.norm(raw.astype(np.float64), axis=1)
    assert (norms <= clip).all()
    for row in range(5):
        if raw_norms[row] > clip:  # clipped: same direction, norm at the bound
            assert norms[row] == pytest.approx(clip, rel=1e-5)
            np.testing.assert_allclose(
                res.deltas[row], raw[row] * (norms[row] / raw_norms[row]), rtol=1e-4, atol=1e-7
            )
        else:
            np.testing.assert_allclose(res.deltas[row], raw[row], rtol=1e-4, atol=1e-7)


def test_learning_happens_on_separable_data() -> None:
    rng = np.random.default_rng(0)
    centers = np.array([[3, 0], [-3, 0], [0, 3], [0, -3]], np.float32)
    y = rng.integers(0, 4, 800)
    x = (centers[y] + rng.normal(scale=0.5, size=(800, 2))).astype(np.float32)
    spec = ModelSpec("mlp", (2,), 4, hidden=(16,))
    recipe = Recipe("cross_entropy", lr=0.1, batch_size=16)
    trainer = BatchedTrainer(spec, recipe, x, y, np.array([0, 800]))  # centralized
    w = _weights(spec)
    before = evaluate(spec, w, x, y, Task.CLASSIFICATION)
    losses = []
    for epoch in range(3):
        res = trainer.train(w, np.array([0]), seed=epoch)
        w = w + res.deltas[0]
        losses.append(float(res.loss[0]))
    assert losses[-1] < losses[0]
    assert evaluate(spec, w, x, y, Task.CLASSIFICATION) > 0.9 > before


def test_federated_averaging_learns_linear_regression() -> None:
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 20, 200)
    n = int(sizes.sum())
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.3 + rng.normal(scale=0.1, size=n)).astype(np.float32)
    spec = ModelSpec("linear", (3,), 1)
    trainer = BatchedTrainer(
        spec, Recipe("mse", lr=0.05, batch_size=8), x, y, np.concatenate([[0], np.cumsum(sizes)])
    )
    w = np.zeros(layout(spec).size, np.float32)
    for rnd in range(10):
        res = trainer.train(w, np.arange(200), seed=rnd)
        w = w + np.average(res.deltas, axis=0, weights=res.num_samples).astype(np.float32)
    assert evaluate(spec, w, x, y, Task.REGRESSION) > 0.95


def test_cnn_runs_on_digit_sized_images() -> None:
    spec = ModelSpec("cnn", (1, 8, 8), 10)
    sizes = np.array([40, 3, 17])
    x, y, off = _data(spec, "cross_entropy", sizes)
    trainer = BatchedTrainer(spec, Recipe("cross_entropy", batch_size=16), x, y, off)
    res = trainer.train(_weights(spec), np.arange(3), 0)
    assert res.deltas.shape == (3, layout(spec).size)
    assert np.isfinite(res.deltas).all() and (np.abs(res.deltas).sum(1) > 0).all()
    assert np.isfinite(res.loss).all() and (res.loss > 0).all()


def test_shuffle_depends_only_on_seed_node_epoch() -> None:
    perm = epoch_permutation(1, 5, 0, 20)
    assert sorted(perm.tolist()) == list(range(20))
    assert np.array_equal(perm, epoch_permutation(1, 5, 0, 20))
    assert not np.array_equal(perm, epoch_permutation(1, 5, 1, 20))
    assert not np.array_equal(perm, epoch_permutation(1, 6, 0, 20))
    assert not np.array_equal(perm, epoch_permutation(2, 5, 0, 20))
    nodes, sizes = np.array([9, 2, 5]), np.array([4, 0, 6])
    joint = chunk_permutation(3, nodes, sizes, 2)
    starts = np.cumsum(sizes) - sizes
    for node, start, size in zip(nodes, starts, sizes, strict=True):
        expected = epoch_permutation(3, int(node), 2, int(size))
        assert np.array_equal(joint[start : start + size] - start, expected)


def test_trainer_refuses_bad_inputs() -> None:
    x, y, off = _data(LINEAR, "cross_entropy", SIZES)
    recipe = RECIPES["sgd"]
    with pytest.raises(DataError):
        BatchedTrainer(LINEAR, recipe, x[:, :2], y, off)
    with pytest.raises(DataError):
        BatchedTrainer(LINEAR, recipe, x, y + 4, off)
    with pytest.raises(DataError):
        BatchedTrainer(LINEAR, recipe, x, y.astype(np.float32), off)
    with pytest.raises(DataError):
        BatchedTrainer(LINEAR, recipe, x, y, off[:-1])
    with pytest.raises(DataError):
        BatchedTrainer(LINEAR, recipe, x, y, off[::-1])
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError):
        BatchedTrainer(LINEAR, recipe, bad, y, off)
    with pytest.raises(ConfigError) as info:
        BatchedTrainer(ModelSpec("linear", (3,), 1), recipe, x, y, off)
    assert info.value.field == "recipe.loss"
    with pytest.raises(DataError):
        BatchedTrainer(LINEAR, Recipe("mse"), x, np.zeros((len(x), 2), np.float32), off)
    trainer = BatchedTrainer(LINEAR, recipe, x, y, off)
    g = _weights(LINEAR)
    with pytest.raises(DataError):
        trainer.train(g, np.array([len(SIZES)]), 0)
    with pytest.raises(DataError):
        trainer.train(g, np.array([-1]), 0)
    with pytest.raises(DataError):
        trainer.train(g[:-1], np.array([0]), 0)
    empty = trainer.train(g, np.zeros(0, np.int64), 0)
    assert empty.deltas.shape == (0, layout(LINEAR).size)

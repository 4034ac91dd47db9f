"""A node trained alone with its federation index as shuffle id equals the simulator's node.

The simulator trains node ``i`` among thousands; a deployed node trains on its
own rows only (offsets ``[0, n]``). With ``shuffle_ids=[i]`` both visit the
records in the same order, so the updates agree up to the last bits that
batched matrix products may round differently.
"""

from __future__ import annotations

import numpy as np
import pytest

from tessera.errors import DataError
from tessera.training import BatchedTrainer, ModelSpec, Recipe, init_weights, layout

# unequal nodes (one empty, some below a batch), then enough to fill several sub-chunks
SIZES = np.concatenate([[7, 0, 1, 12, 4, 4, 9, 2], np.random.default_rng(5).integers(1, 40, 150)])
RTOL, ATOL = 1e-5, 1e-6

CASES = [
    pytest.param(ModelSpec("linear", (5,), 3), Recipe("cross_entropy", lr=0.2), id="linear"),
    pytest.param(
        ModelSpec("mlp", (6,), 2, hidden=(16, 8)),
        Recipe("mse", optimizer="adam", lr=0.01, local_epochs=2, batch_size=4, prox_mu=0.1),
        id="mlp",
    ),
    pytest.param(
        ModelSpec("cnn", (1, 6, 6), 3, hidden=(8,), channels=(4,)),
        Recipe("cross_entropy", momentum=0.9, batch_size=5, clip_norm=0.5),
        id="cnn",
    ),
]


def _data(spec: ModelSpec, loss: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, *spec.input_shape)).astype(np.float32)
    if loss == "cross_entropy":
        return x, rng.integers(0, spec.n_outputs, n)
    return x, rng.normal(size=(n, spec.n_outputs)).astype(np.float32)


@pytest.mark.parametrize(("spec", "recipe"), CASES)
def test_alone_with_shuffle_id_equals_batched(spec: ModelSpec, recipe: Recipe) -> None:
    sizes = SIZES if spec.kind != "cnn" else SIZES[:24]
    off = np.concatenate([[0], np.cumsum(sizes)])
    x, y = _data(spec, recipe.loss, int(off[-1]))
    g = layout(spec).flatten(init_weights(spec, 3))
    nodes = np.random.default_rng(1).permutation(len(sizes))
    together = BatchedTrainer(spec, recipe, x, y, off).train(g, nodes, seed=11)
    worst = 0.0
    checked = len(nodes) if spec.kind != "cnn" else 8  # each lone vmap trainer costs ~0.2 s
    for row, node in enumerate(nodes[:checked]):
        lo, hi = off[node], off[node + 1]
        alone = BatchedTrainer(
            spec, recipe, x[lo:hi], y[lo:hi], np.array([0, hi - lo]), shuffle_ids=np.array([node])
        ).train(g, [0], seed=11)
        np.testing.assert_allclose(alone.deltas[0], together.deltas[row], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(alone.loss[0], together.loss[row], rtol=RTOL, atol=ATOL)
        assert alone.num_samples[0] == together.num_samples[row]
        worst = max(worst, float(np.abs(alone.deltas[0] - together.deltas[row]).max(initial=0)))
    print(f"{spec.kind}: max |alone - batched| = {worst:.3g}")


def test_default_shuffle_ids_are_node_indices() -> None:
    spec, recipe = ModelSpec("linear", (3,), 2), Recipe("cross_entropy", batch_size=2)
    off = np.array([0, 5, 9, 14])
    x, y = _data(spec, recipe.loss, 14)
    g = layout(spec).flatten(init_weights(spec, 0))
    plain = BatchedTrainer(spec, recipe, x, y, off).train(g, [0, 1, 2], seed=4)
    ids = BatchedTrainer(spec, recipe, x, y, off, shuffle_ids=np.arange(3)).train(
        g, [0, 1, 2], seed=4
    )
    assert np.array_equal(plain.deltas, ids.deltas)
    other = BatchedTrainer(spec, recipe, x, y, off, shuffle_ids=np.array([7, 8, 9])).train(
        g, [0, 1, 2], seed=4
    )
    assert not np.array_equal(plain.deltas, other.deltas)


@pytest.mark.parametrize("ids", [np.array([0, 1]), np.array([-1, 0, 1]), np.array([0.0, 1, 2])])
def test_bad_shuffle_ids_refused(ids: np.ndarray) -> None:
    spec, recipe = ModelSpec("linear", (3,), 2), Recipe("cross_entropy")
    x, y = _data(spec, recipe.loss, 6)
    with pytest.raises(DataError, match="shuffle_ids"):
        BatchedTrainer(spec, recipe, x, y, np.array([0, 2, 4, 6]), shuffle_ids=ids)

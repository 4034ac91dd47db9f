"""Per-node caps on local steps (``max_steps``): a deadline's partial work, exact."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tessera.errors import DataError
from tessera.training import BatchedTrainer, ModelSpec, Recipe, init_weights, layout

SPEC = ModelSpec("mlp", (3,), 4, hidden=(6,), dropout=0.25)
RECIPE = Recipe("cross_entropy", optimizer="adam", lr=0.05, batch_size=4, local_epochs=3)
SIZES = np.array([9, 0, 5, 12, 3, 7])  # one empty, some under a batch, some over two


def _trainer(recipe: Recipe = RECIPE) -> tuple[BatchedTrainer, np.ndarray]:
    rng = np.random.default_rng(1)
    n = int(SIZES.sum())
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = rng.integers(0, 4, n)
    offsets = np.concatenate([[0], np.cumsum(SIZES)])
    weights = layout(SPEC).flatten(init_weights(SPEC, 2))
    return BatchedTrainer(SPEC, recipe, x, y, offsets), weights


def _full_steps(recipe: Recipe = RECIPE) -> np.ndarray:
    return recipe.local_epochs * -(-SIZES // recipe.batch_size)


def test_steps_are_reported_and_caps_at_or_over_the_full_work_change_nothing() -> None:
    trainer, g = _trainer()
    nodes = np.arange(len(SIZES))
    plain = trainer.train(g, nodes, seed=5)
    capped = trainer.train(g, nodes, seed=5, max_steps=_full_steps() + (SIZES == 0) + 3)
    assert plain.steps is not None
    np.testing.assert_array_equal(plain.steps, _full_steps())
    np.testing.assert_array_equal(capped.deltas, plain.deltas)
    np.testing.assert_array_equal(capped.loss, plain.loss)


def test_a_cap_of_whole_epochs_is_training_fewer_epochs() -> None:
    trainer, g = _trainer()
    one_epoch, _ = _trainer(replace(RECIPE, local_epochs=1))
    nodes = np.arange(len(SIZES))
    per_epoch = np.maximum(-(-SIZES // RECIPE.batch_size), 1)
    capped = trainer.train(g, nodes, seed=5, max_steps=per_epoch)
    short = one_epoch.train(g, nodes, seed=5)
    np.testing.assert_array_equal(capped.deltas, short.deltas)
    np.testing.assert_allclose(capped.loss, short.loss, rtol=1e-6)
    assert capped.steps is not None
    np.testing.assert_array_equal(capped.steps, -(-SIZES // RECIPE.batch_size))


def test_a_node_stopped_mid_epoch_gets_its_own_update_whoever_shares_its_chunk() -> None:
    trainer, g = _trainer()
    nodes = np.arange(len(SIZES))
    caps = np.array([4, 1, 2, 7, 1, 9])  # node 3: in its third epoch, node 0: its second
    together = trainer.train(g, nodes, seed=5, max_steps=caps)
    for node in (0, 3, 5):
        alone = trainer.train(g, [node], seed=5, max_steps=caps[[node]])
        np.testing.assert_array_equal(together.deltas[node], alone.deltas[0])
        np.testing.assert_allclose(together.loss[node], alone.loss[0], rtol=1e-6)
    assert together.steps is not None
    np.testing.assert_array_equal(together.steps, np.minimum(caps, _full_steps()))
    full = trainer.train(g, nodes, seed=5)
    assert not np.array_equal(together.deltas[3], full.deltas[3])  # it did stop early
    # node 2 (5 records, 2 minibatches an epoch) was capped at 2 steps: one epoch
    one_epoch, _ = _trainer(replace(RECIPE, local_epochs=1))
    np.testing.assert_array_equal(together.deltas[2], one_epoch.train(g, [2], seed=5).deltas[0])


def test_caps_must_be_positive_integers_one_per_node() -> None:
    trainer, g = _trainer()
    with pytest.raises(DataError, match="at least 1"):
        trainer.train(g, [0, 2], seed=0, max_steps=[1, 0])
    with pytest.raises(DataError, match="2 integers"):
        trainer.train(g, [0, 2], seed=0, max_steps=[1])

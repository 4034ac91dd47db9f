"""Small jobs for the sandbox tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tessera.training import ModelSpec, Recipe, init_weights, layout


@dataclass(frozen=True)
class Job:
    spec: ModelSpec
    recipe: Recipe
    x: np.ndarray
    y: np.ndarray
    weights: np.ndarray


def make_job(spec: ModelSpec, recipe: Recipe, n: int, seed: int = 0) -> Job:
    """``n`` random records fitting ``spec``, and seeded initial weights."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *spec.input_shape)).astype(np.float32)
    if recipe.loss == "cross_entropy":
        y = rng.integers(0, spec.n_outputs, n)
    else:
        y = rng.normal(size=(n, spec.n_outputs)).astype(np.float32)
    return Job(spec, recipe, x, y, layout(spec).flatten(init_weights(spec, seed + 1)))

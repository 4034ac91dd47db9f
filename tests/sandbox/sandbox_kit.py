"""Small jobs for the sandbox tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pytest

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


Verdict = tuple[Literal["run", "skip", "fail"], str]


def isolation_verdict(*, problem: str, isolated: bool) -> Verdict:
    """Whether a test that needs the jailed sandbox runs, and if not why.

    ``problem`` is why bubblewrap's jail fails here ("" if it works), by the
    sandbox's own probe (``jail.find_isolation``). Without it the test skips
    naming what is missing; with them, a sandbox that still started
    unisolated is a fault that would hide the check, so the test fails (in CI
    and everywhere else) rather than skip.
    """
    if problem:
        return (
            "skip",
            f"bubblewrap or unprivileged user namespaces are unavailable, so no jail: {problem}",
        )
    if isolated:
        return "run", ""
    return "fail", (
        "bubblewrap and user namespaces work here, yet the sandbox child started without its jail"
    )


def require_isolation(*, problem: str, isolated: bool) -> None:
    """Skip or fail the calling test as ``isolation_verdict`` says."""
    verdict, reason = isolation_verdict(problem=problem, isolated=isolated)
    if verdict == "skip":
        pytest.skip(reason)
    if verdict == "fail":
        pytest.fail(reason)

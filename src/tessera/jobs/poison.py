"""Simulated hostile or poor data (``[simulation.poison]``): the truth a contribution
indicator is measured against.

Which nodes are corrupted is drawn from the job's seed, once; their records
are changed in the prepared job (so the centralized baseline, trained on the
union of the nodes' records, sees them too), and the nodes sending scaled
updates are named for the simulator, which scales what their trainer returns.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from tessera.ids import Task

if TYPE_CHECKING:  # prepared.py applies this module: no import cycle at run time
    from tessera.jobs.prepared import PreparedJob


def poisoned(job: PreparedJob) -> PreparedJob:
    """``job`` with ``[simulation.poison]`` applied (itself when it asks for nothing)."""
    p = job.config.simulation.poison
    if p.fraction == 0 and p.scaled_fraction == 0:
        return job
    n = job.n_nodes
    rng = np.random.default_rng([job.config.job.seed, 0xBAD])
    order = rng.permutation(n)
    corrupted = np.sort(order[: round(p.fraction * n)])
    scaled = np.sort(order[len(corrupted) : len(corrupted) + round(p.scaled_fraction * n)])
    x, y = job.x.copy(), job.y.copy()
    for node in corrupted:
        rows = slice(int(job.offsets[node]), int(job.offsets[node + 1]))
        if p.kind == "noise_features":  # inputs are standardized: noise of the same scale
            x[rows] = rng.standard_normal(x[rows].shape).astype(x.dtype)
        elif job.task is Task.CLASSIFICATION:
            y[rows] = len(job.classes) - 1 - y[rows]
        else:
            y[rows] = -y[rows]
    return replace(
        job,
        x=x,
        y=y,
        corrupted=tuple(int(i) for i in corrupted),
        scaled=tuple(int(i) for i in scaled),
    )

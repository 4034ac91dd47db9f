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
import pandas as pd

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


def poisoned_records(
    frame: pd.DataFrame, job: PreparedJob, column: str, *, seed: int
) -> pd.DataFrame:
    """``frame`` (a deployment's raw records, one user per ``column`` value) with the
    corrupted users' records changed as ``poisoned`` changes a simulated job's: the
    target mirrored over the classes (a regression's around its mean), or the features
    replaced by noise of each column's own scale (a category drawn at random). What a
    user's node then fetches from the data provider is poor data; nothing else knows."""
    p = job.config.simulation.poison
    users = {job.node_names[i] for i in job.corrupted}
    if not users:
        return frame
    out = frame.copy()
    rows = out[column].astype(str).isin(users).to_numpy()
    rng = np.random.default_rng([seed, 0xBAD, 1])
    d = job.config.data
    if p.kind == "label_flip":
        target = out[d.target]
        if job.task is Task.CLASSIFICATION:
            order = list(job.classes)
            mirror = {c: order[len(order) - 1 - i] for i, c in enumerate(order)}
            out.loc[rows, d.target] = target[rows].map(lambda v: mirror.get(v, v))
        else:
            out.loc[rows, d.target] = 2 * target.mean() - target[rows]
        return out
    derived = {e.name for e in d.derive}
    for name in (f for f in d.features if f not in derived and f in out):
        values = out[name]
        if name in d.categorical or not pd.api.types.is_numeric_dtype(values):
            pool = values.dropna().unique()
            out.loc[rows, name] = rng.choice(pool, size=int(rows.sum())) if len(pool) else values
        else:
            noisy = values.mean() + values.std() * rng.standard_normal(int(rows.sum()))
            if pd.api.types.is_integer_dtype(values):  # the column keeps its type
                noisy = np.rint(noisy).astype(np.int64)
            out.loc[rows, name] = noisy
    return out

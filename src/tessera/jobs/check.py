"""What a job file will train on, checked before anything trains (``tessera data check``).

A first run on a new table fails in quiet ways: a target in the hundreds
that the model never fits, rows dropped for a missing field, nodes of one
record, a column that never changes. ``check_job`` loads and partitions the
table exactly as ``tessera run`` would (``prepare_job``) and reports its
schema, missing values, node sizes, the target's distribution and the
warnings a careful person would raise; it trains nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tessera.config import JobConfig
from tessera.ids import Task
from tessera.jobs.prepared import PreparedJob, prepare_job, split_table

__all__ = ["ColumnReport", "DataReport", "check_job"]

#: A node with fewer records than this learns little and says much about its user.
TINY_NODE = 5
#: A regression target this far from unit scale trains badly without standardising.
RAW_SCALE = 10.0


@dataclass(frozen=True)
class ColumnReport:
    name: str
    dtype: str
    role: str  # "target", "feature", "categorical", "partition" or "unused"
    missing: int
    distinct: int


@dataclass(frozen=True)
class DataReport:
    """What ``check_job`` found: facts, then the warnings for people."""

    rows: int  # the nodes' part of the table (the holdout set aside)
    holdout_rows: int
    usable_rows: int  # those with every field the job uses
    columns: tuple[ColumnReport, ...]
    node_sizes: tuple[int, ...]
    task: Task
    target_summary: dict[str, float] = field(default_factory=dict)  # mean, std, min, max
    classes: dict[str, int] = field(default_factory=dict)  # label -> count
    warnings: tuple[str, ...] = ()

    def size_histogram(self, bins: int = 8) -> list[tuple[int, int, int]]:
        """(low, high, nodes) over log-spaced record counts: node sizes are skewed."""
        sizes = np.asarray(self.node_sizes)
        edges = np.unique(np.geomspace(1, max(int(sizes.max()), 2) + 1, bins + 1).astype(int))
        counts, _ = np.histogram(sizes, bins=edges)
        return [
            (int(lo), int(hi) - 1, int(n))
            for lo, hi, n in zip(edges[:-1], edges[1:], counts, strict=True)
        ]


def _role(cfg: JobConfig, column: str, features: list[str]) -> str:
    d = cfg.data
    if column == d.target:
        return "target"
    if column == cfg.partition.column:
        return "partition"
    if column in d.categorical:
        return "categorical"
    return "feature" if column in features else "unused"


def check_job(cfg: JobConfig) -> DataReport:
    """Load, split and partition as a run would; report and warn. ``ConfigError`` as a run."""
    train_df, test_df = split_table(cfg)
    job: PreparedJob = prepare_job(cfg)
    d = cfg.data
    features = list(d.features) or [c for c in train_df.columns if c != d.target]
    used = [d.target, *features]
    columns = tuple(
        ColumnReport(
            name=str(c),
            dtype=str(train_df[c].dtype),
            role=_role(cfg, str(c), features),
            missing=int(train_df[c].isna().sum()),
            distinct=int(train_df[c].nunique(dropna=True)),
        )
        for c in train_df.columns
    )
    usable = int(train_df[used].notna().all(axis=1).sum())
    sizes = tuple(int(n) for n in job.node_samples)
    warnings: list[str] = []
    dropped = len(train_df) - usable
    if dropped:
        share = dropped / max(len(train_df), 1)
        missing = [c.name for c in columns if c.role != "unused" and c.missing]
        warnings.append(
            f"{dropped:,} of {len(train_df):,} rows ({share:.0%}) miss a field the job uses "
            f"({', '.join(missing)}) and are left out of training"
        )
    tiny = sum(1 for n in sizes if n < TINY_NODE)
    if tiny:
        warnings.append(f"{tiny:,} of {len(sizes):,} nodes hold fewer than {TINY_NODE} records")
    constant = [c.name for c in columns if c.role in ("feature", "categorical") and c.distinct <= 1]
    if constant:
        warnings.append(f"constant column(s) {', '.join(constant)}: they carry nothing to learn")
    summary: dict[str, float] = {}
    classes: dict[str, int] = {}
    target = train_df[d.target].dropna()
    if job.task is Task.REGRESSION:
        values = pd.to_numeric(target, errors="coerce").dropna()
        summary = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "min": float(values.min()),
            "max": float(values.max()),
        }
        if abs(summary["mean"]) > RAW_SCALE or summary["std"] > RAW_SCALE:
            warnings.append(
                f"the regression target {d.target!r} is on a raw scale (mean "
                f"{summary['mean']:.4g}, std {summary['std']:.4g}): standardise it or lower "
                "recipe.lr, or the model may learn nothing"
            )
    else:
        counts = target.astype(str).value_counts()
        classes = {str(k): int(v) for k, v in counts.items()}
        rare = [k for k, v in classes.items() if v < 0.01 * len(target)]
        if rare:
            warnings.append(f"class(es) {', '.join(rare)} hold under 1% of the records")
    return DataReport(
        rows=len(train_df),
        holdout_rows=len(test_df),
        usable_rows=usable,
        columns=columns,
        node_sizes=sizes,
        task=job.task,
        target_summary=summary,
        classes=classes,
        warnings=tuple(warnings),
    )

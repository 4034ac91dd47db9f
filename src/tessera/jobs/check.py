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

__all__ = ["ColumnReport", "DataReport", "check_job", "count_histogram"]

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
    derived: bool = False  # computed by a [[data.derive]] entry
    policy: str | None = None  # "drop", "impute" or "indicator" (target and features)
    dropped: int = 0  # rows of the nodes' part dropped for missing it
    imputed: int = 0  # values of the nodes' part imputed


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
    imputed_values: int = 0  # in the nodes' part, over all columns
    node_dropped: tuple[int, ...] | None = None  # per node (natural partitions)
    node_imputed: tuple[int, ...] = ()  # per node

    @property
    def dropped_rows(self) -> int:
        return self.rows - self.usable_rows

    def size_histogram(self, bins: int = 8) -> list[tuple[int, int, int]]:
        """(low, high, nodes) over log-spaced record counts: node sizes are skewed."""
        sizes = np.asarray(self.node_sizes)
        edges = np.unique(np.geomspace(1, max(int(sizes.max()), 2) + 1, bins + 1).astype(int))
        counts, _ = np.histogram(sizes, bins=edges)
        return [
            (int(lo), int(hi) - 1, int(n))
            for lo, hi, n in zip(edges[:-1], edges[1:], counts, strict=True)
        ]


def count_histogram(counts: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(low, high, nodes) over per-node counts in bins 0, 1, 2-3, 4-7, ...: how lost rows
    or imputed values spread over the nodes."""
    if not counts:
        return []
    values = np.asarray(counts, dtype=np.int64)
    top = int(values.max())
    edges = [0, 1]
    while edges[-1] <= top:
        edges.append(edges[-1] * 2)
    counted, _ = np.histogram(values, bins=np.array(edges) - 0.5)
    return [(lo, hi - 1, int(n)) for lo, hi, n in zip(edges[:-1], edges[1:], counted, strict=True)]


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
    assert job.preprocessor is not None
    assert job.missing is not None
    d, m = cfg.data, job.missing
    frame = job.preprocessor.with_derived(train_df)
    derived = set(job.preprocessor.derived)
    features = list(job.preprocessor.features)
    columns = tuple(
        ColumnReport(
            name=str(c),
            dtype=str(frame[c].dtype),
            role=_role(cfg, str(c), features),
            missing=int(frame[c].isna().sum()),
            distinct=int(frame[c].nunique(dropna=True)),
            derived=str(c) in derived,
            policy=m.policy.get(str(c)),
            dropped=m.dropped.get(str(c), 0),
            imputed=m.imputed.get(str(c), 0),
        )
        for c in frame.columns
    )
    usable = m.rows - m.dropped_rows
    sizes = tuple(int(n) for n in job.node_samples)
    warnings: list[str] = []
    dropped = m.dropped_rows
    if dropped:
        share = dropped / max(len(train_df), 1)
        missing = [c for c, n in m.dropped.items() if n and c != cfg.partition.column]
        grouped = m.dropped.get(cfg.partition.column or "", 0)
        warnings.append(
            f"{dropped:,} of {len(train_df):,} rows ({share:.0%}) miss a field the job uses "
            f"({', '.join(missing) or cfg.partition.column}) and are left out of training"
            + (f" ({grouped:,} miss their {cfg.partition.column})" if grouped and missing else "")
            + "; data.missing can impute them or add an indicator instead"
        )
    tiny = sum(1 for n in sizes if n < TINY_NODE)
    if tiny:
        warnings.append(f"{tiny:,} of {len(sizes):,} nodes hold fewer than {TINY_NODE} records")
    constant = [c.name for c in columns if c.role in ("feature", "categorical") and c.distinct <= 1]
    if constant:
        warnings.append(f"constant column(s) {', '.join(constant)}: they carry nothing to learn")
    summary: dict[str, float] = {}
    classes: dict[str, int] = {}
    target = frame[d.target].dropna()
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
        imputed_values=m.imputed_values,
        node_dropped=None if m.node_dropped is None else tuple(int(n) for n in m.node_dropped),
        node_imputed=() if m.node_imputed is None else tuple(int(n) for n in m.node_imputed),
    )

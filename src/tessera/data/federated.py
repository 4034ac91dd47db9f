"""Fitting from federated statistics: the nodes' own counts, totalled, never pooled rows.

``FederatedSummaries`` is a ``prepare.Summarizer``: asked for the summaries
of some rows, it splits them by the node holding each, has every node count
its share by a public ``StatisticsPlan``, and reads the summaries off the
total that ``totals_of`` returns (``runtime.sim.statistics.secure_totals``:
the secure aggregation of training rounds; ``plain_totals``: the clear sum,
for plaintext jobs). ``Preprocessor.fit`` then learns means, standard
deviations, imputation values, category and class lists and the medians of
derived columns from those totals alone.

What the totals give is what pooled rows give, up to the statistics round's
precision: counts and category counts exactly; means and standard
deviations from sums rounded into the ring (off by under one ring step per
node); medians within the sketch's relative accuracy (``RELATIVE_ACCURACY``).
Category domains are the schema's (the values a column can take: declared in
the job, ``data.categories``, else as a data provider's catalogue lists them;
in the simulator, read off the rows); a value outside is counted as "other".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import pandas as pd

from tessera.data.prepare import ColumnSummary, sorted_values
from tessera.data.statistics import (
    RELATIVE_ACCURACY,
    REPORT_ACCURACY,
    StatisticsPlan,
    Totals,
    category_of,
)
from tessera.errors import DataError

#: (plan, every node's vector: one row a node) -> the totals, however they are added up.
TotalsOf = Callable[[StatisticsPlan, npt.NDArray[np.float64]], Totals]


@runtime_checkable
class PrivateTotals(Protocol):
    """A ``TotalsOf`` that can add a private job's noise as a deployment's nodes would
    (the simulator's secure totals): ``make_private`` once, then ``spent`` holds each
    round's noise variance, for the job's ledger."""

    spent: list[float]

    @property
    def noised(self) -> bool:
        """Whether the totals carry a private job's noise (after ``make_private``)."""
        ...

    def make_private(self, privacy: Any, clip: float) -> None: ...

    def __call__(self, plan: StatisticsPlan, vectors: npt.NDArray[np.float64]) -> Totals: ...


def plain_totals(plan: StatisticsPlan, vectors: npt.NDArray[np.float64]) -> Totals:
    """The nodes' statistics summed in the clear (plaintext jobs: updates are clear too)."""
    return plan.totals(vectors.sum(axis=0))


@dataclass
class FederatedSummaries:
    """Summaries of rows from the totals of their nodes' statistics (see the module doc).

    ``node_of`` maps each row label of the table being fitted to the node
    holding it (0 .. ``n_nodes`` - 1); ``rounds`` counts the statistics rounds
    run (one per ``summarize`` call: two when derived columns use a median).
    """

    node_of: pd.Series
    n_nodes: int
    totals_of: TotalsOf
    relative_accuracy: float = RELATIVE_ACCURACY
    report_accuracy: float = REPORT_ACCURACY
    rounds: int = field(default=0, init=False)
    #: Per column, what the last round that counted it totalled (``column_report``).
    columns: dict[str, dict[str, Any]] = field(default_factory=dict, init=False)

    def __call__(
        self,
        df: pd.DataFrame,
        *,
        numeric: Sequence[str] = (),
        categorical: Sequence[str] = (),
        medians: bool = False,
        domains: Mapping[str, Sequence[Hashable]] | None = None,
    ) -> dict[str, ColumnSummary]:
        if not numeric and not categorical:
            return {}  # nothing to count: no round
        declared = domains or {}
        values = {
            c: tuple(declared[c]) if c in declared else sorted_values(df[c].dropna())
            for c in categorical
        }
        plan = StatisticsPlan(
            tuple(numeric),
            tuple((c, tuple(category_of(v) for v in values[c])) for c in categorical),
            self.relative_accuracy if medians else self.report_accuracy,
        )
        totals = self.totals_of(plan, plan.vectors(df, self._nodes(df), self.n_nodes))
        self.rounds += 1
        self.columns.update(column_report(totals))
        noised = isinstance(self.totals_of, PrivateTotals) and self.totals_of.noised
        return summaries_of(totals, values, whole_domains=noised)

    def _nodes(self, df: pd.DataFrame) -> npt.NDArray[np.int64]:
        """The node holding each row of ``df``."""
        try:
            return self.node_of.loc[df.index].to_numpy(dtype=np.int64)
        except KeyError:
            raise DataError("rows to summarise that no node holds") from None


def column_report(totals: Totals) -> dict[str, dict[str, Any]]:
    """The totals as people read them (metrics.json's ``statistics.columns``).

    Numeric: count, missing, mean, std, and min, median, max within the
    sketch's relative accuracy; categorical: the count of each value, of
    other values and of missing ones. Aggregates over every node only.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, n in totals.numeric.items():
        out[name] = {
            "count": n.count,
            "missing": n.missing,
            **{
                k: (None if not math.isfinite(v) else round(v, 6))
                for k, v in (
                    ("mean", n.mean),
                    ("std", n.std),
                    ("min", n.min),
                    ("median", n.median),
                    ("max", n.max),
                )
            },
        }
    for name, c in totals.categorical.items():
        out[name] = {"counts": dict(c.counts), "other": c.other, "missing": c.missing}
    return out


def summaries_of(
    totals: Totals, domains: Mapping[str, tuple[Hashable, ...]], *, whole_domains: bool = False
) -> dict[str, ColumnSummary]:
    """``prepare.summarize``'s answer, read off federated totals.

    ``domains`` gives each categorical column's values in order (sorted, or as
    declared; the plan named them by their text); a value no node holds is no
    category, unless ``whole_domains`` (noised totals: a count of 0 may be noise,
    so every value of the domain stays a category, as a deployment's schema has it).
    """
    out: dict[str, ColumnSummary] = {}
    for name, n in totals.numeric.items():
        if n.count == 0:
            out[name] = ColumnSummary(count=0, missing=n.missing)
            continue
        out[name] = ColumnSummary(
            count=n.count, missing=n.missing, mean=n.mean, std=n.std, median=n.median
        )
    for name, c in totals.categorical.items():
        held = tuple(v for v in domains[name] if whole_domains or c.counts[category_of(v)] > 0)
        top = max((c.counts[category_of(v)] for v in held), default=0)
        out[name] = ColumnSummary(
            count=sum(c.counts.values()) + c.other,
            missing=c.missing,
            categories=held,
            mode=next((v for v in held if c.counts[category_of(v)] == top), None),
        )
    return out


def node_of_rows(
    n_rows: int,
    kept: npt.NDArray[np.intp],
    order: npt.NDArray[np.int64],
    offsets: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """Each row's node: a kept row's from the partition (``order``, ``offsets`` over the kept
    rows), a row no node was dealt (dropped before dealing) counted by node ``row % n``.

    Totals are sums, so which node counts a row changes no total: this only
    spreads the rows over nodes as a federation would hold them.
    """
    n_nodes = len(offsets) - 1
    node = np.arange(n_rows, dtype=np.int64) % max(n_nodes, 1)
    of_kept = np.empty(len(kept), np.int64)
    for j in range(n_nodes):
        of_kept[order[offsets[j] : offsets[j + 1]]] = j
    node[kept] = of_kept
    return node

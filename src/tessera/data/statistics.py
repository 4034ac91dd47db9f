"""Column statistics that add up across nodes, so secure aggregation can total them.

Each node turns its own records into one float64 vector laid out by a public
``StatisticsPlan``; the sum of the nodes' vectors (computed by the same
secure aggregation as a training round, so no node's vector is seen by
anyone) decodes into ``Totals``: per numeric column the count, missing
count, sum and sum of squares (so mean and standard deviation) and a
quantile sketch (so minimum, maximum and median); per categorical column the
count of each value of its public domain, of other values, and of missing
ones. A plan may also name the columns whose missing value drops a row
(``dropped``): it then counts the rows, the rows dropped and, per such column,
the rows missing it, and counts the other columns over the rows kept only.
Everything here is a sum, which is what additive masking can total.

Minimum, maximum and quantiles come from a DDSketch (Masson et al., VLDB
2019, the ``ddsketch`` package): a value ``v`` counts in the bucket
``mapping.key(|v|)`` of its sign, and bucket counts of different nodes
simply add. A quantile read from the total is within ``relative_accuracy``
of the true one (relative to its magnitude). The sketch is dense over a fixed
window of keys so every node's vector has the same length; magnitudes under
``TINY`` count as zero, and magnitudes over ``HUGE`` are refused.

A node's counts are whole numbers and travel exactly; its sums and sums of
squares are real and are rounded into the ring with unbiased stochastic
rounding, so their totals are off by less than one ring step per node.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from ddsketch import DDSketch
from ddsketch.mapping import LogarithmicMapping

from tessera.data._common import require_columns, table_name
from tessera.errors import DataError

#: The sketch's quantile accuracy when a fit uses medians: within 1% of the true one.
RELATIVE_ACCURACY = 0.01
#: Otherwise the sketch only reports min, median and max (metrics.json), within 5%:
#: 721 buckets a column instead of 3,605, for every node's vector.
REPORT_ACCURACY = 0.05
#: Magnitudes below this count as zero in the sketch (not in sums).
TINY = 2.0**-20
#: The largest magnitude of any value a node may hold; also bounds the sketch.
HUGE = 2.0**32
#: Every word of a node's vector is at most this in size (a public bound the ring is
#: sized for): counts, and sums of squares of up to 2**12 records of HUGE values.
TERM_BOUND = 2.0**44

_FORMAT = "tessera-statistics-plan/v1"
_NUMERIC_WORDS = 4  # count, missing, sum, sum of squares; then the sketch's buckets
_CATEGORY_WORDS = 2  # missing, other; then one count per domain value
_ROW_WORDS = 2  # rows, rows dropped; then one count per dropping column


def _value_key(value: object) -> str:
    """A category's name in a plan: its text (the plan travels as JSON), one text per
    value however it was read: a whole number as an integer (``2``, ``2.0``,
    ``numpy.int64(2)``: ``"2"``), as a node's JSON records and a table differ there."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class StatisticsPlan:
    """What each node counts, in which order: public, the same for every node.

    ``categorical`` pairs each categorical column with its domain (the values
    the data provider's schema lists, as text); other values are counted
    together. ``relative_accuracy`` is the sketch's quantile accuracy.
    ``dropped``: columns (of the others) whose missing value drops a row, as a
    fit drops it: missing is non-finite for a numeric column, absent for a
    categorical one (module doc).
    """

    numeric: tuple[str, ...]
    categorical: tuple[tuple[str, tuple[str, ...]], ...] = ()
    relative_accuracy: float = 0.02
    dropped: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [*self.numeric, *(c for c, _ in self.categorical)]
        if len(set(names)) != len(names):
            raise DataError(f"a statistics plan names a column twice: {names}")
        if len(set(self.dropped)) != len(self.dropped) or not set(self.dropped) <= set(names):
            raise DataError(f"a plan drops rows by columns it counts, each once: {self.dropped}")
        if not 0 < self.relative_accuracy < 0.5:
            raise DataError(
                f"relative_accuracy must be in (0, 0.5), got {self.relative_accuracy!r}"
            )
        for column, domain in self.categorical:
            if len(set(domain)) != len(domain):
                raise DataError(f"the domain of {column!r} lists a value twice")

    @classmethod
    def of(
        cls,
        table: pd.DataFrame,
        *,
        numeric: Sequence[str],
        categorical: Sequence[str] = (),
        relative_accuracy: float = 0.02,
    ) -> StatisticsPlan:
        """A plan for ``table``'s columns, each categorical domain as the schema lists it.

        The domain is the set of values the column can take (the data
        provider's schema, here read off its table), sorted; it says nothing
        about how often each occurs.
        """
        require_columns(table, [*numeric, *categorical])
        domains = tuple(
            (c, tuple(sorted({_value_key(v) for v in table[c].dropna().unique()})))
            for c in categorical
        )
        return cls(tuple(numeric), domains, relative_accuracy)

    @cached_property
    def mapping(self) -> LogarithmicMapping:
        return LogarithmicMapping(self.relative_accuracy)

    @cached_property
    def _keys(self) -> tuple[int, int]:
        """The sketch's key window: every magnitude in [TINY, HUGE] has a key in it."""
        return self.mapping.key(TINY), self.mapping.key(HUGE)

    @property
    def buckets(self) -> int:
        """Sketch buckets per numeric column: one per key and sign, and zero."""
        low, high = self._keys
        return 2 * (high - low + 1) + 1

    @property
    def length(self) -> int:
        """Words in each node's vector."""
        words = len(self.numeric) * (_NUMERIC_WORDS + self.buckets)
        words += sum(_CATEGORY_WORDS + len(d) for _, d in self.categorical)
        return words + (_ROW_WORDS + len(self.dropped) if self.dropped else 0)

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.numeric, *(c for c, _ in self.categorical))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "numeric": list(self.numeric),
            "categorical": [[c, list(d)] for c, d in self.categorical],
            "relative_accuracy": self.relative_accuracy,
            "dropped": list(self.dropped),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> StatisticsPlan:
        if not isinstance(raw, Mapping) or raw.get("format") != _FORMAT:
            raise DataError(f"not a statistics plan (expected format {_FORMAT!r})")
        try:
            numeric = tuple(str(c) for c in raw["numeric"])
            categorical = tuple(
                (str(c), tuple(str(v) for v in domain)) for c, domain in raw["categorical"]
            )
            accuracy = float(raw["relative_accuracy"])
            dropped = tuple(str(c) for c in raw.get("dropped", ()))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"malformed statistics plan: {exc}") from None
        return cls(numeric, categorical, accuracy, dropped)

    # -- a node's vector ---------------------------------------------------------
    def vector(self, table: pd.DataFrame) -> npt.NDArray[np.float64]:
        """This node's statistics of ``table``, as one vector of ``length`` words.

        Missing means NaN, None or an infinity. Raises DataError for a value
        over ``HUGE`` in size or a non-numeric value in a numeric column.
        """
        vector: npt.NDArray[np.float64] = self.vectors(table, np.zeros(len(table), np.int64), 1)[0]
        return vector

    def vectors(
        self, table: pd.DataFrame, nodes: npt.NDArray[np.int64], n_nodes: int
    ) -> npt.NDArray[np.float64]:
        """Every node's vector at once: row i is node i's, from the rows ``nodes`` gives it.

        The simulator counts many nodes in one pass; a node counts itself with
        ``vector`` (this, for one node). Raises DataError as ``vector`` says,
        for the table as a whole.
        """
        require_columns(table, self.columns)
        if len(nodes) != len(table) or (
            len(nodes) and not 0 <= nodes.min() <= nodes.max() < n_nodes
        ):
            raise DataError(f"every row needs a node in 0..{n_nodes - 1}")
        out = np.zeros((n_nodes, self.length), np.float64)

        def per_node(weights: npt.NDArray[np.float64] | None = None) -> npt.NDArray[np.float64]:
            return np.bincount(nodes, weights=weights, minlength=n_nodes).astype(np.float64)

        at = 0
        if self.dropped:  # the drops first, then the kept rows alone
            absent = {c: self._missing(table, c) for c in self.dropped}
            drop = np.logical_or.reduce([*absent.values(), np.zeros(len(table), bool)])
            out[:, 0] = per_node()
            out[:, 1] = per_node(drop.astype(np.float64))
            for i, c in enumerate(self.dropped):
                out[:, _ROW_WORDS + i] = per_node(absent[c].astype(np.float64))
            at = _ROW_WORDS + len(self.dropped)
            table, nodes = table.iloc[np.flatnonzero(~drop)], nodes[~drop]
        for column in self.numeric:
            values = _numeric(table, column)
            finite = np.isfinite(values)
            present = np.where(finite, values, 0.0)
            if float(np.abs(present).max(initial=0.0)) > HUGE:
                raise DataError(
                    f"column {column!r} of {table_name(table)} holds a value over {HUGE:.3g} "
                    "in size: rescale it for federated statistics"
                )
            out[:, at] = per_node(finite.astype(np.float64))
            out[:, at + 1] = per_node((~finite).astype(np.float64))
            out[:, at + 2] = per_node(present)
            out[:, at + 3] = per_node(present * present)
            at += _NUMERIC_WORDS
            index = self._buckets_of(values[finite])
            flat = nodes[finite] * self.buckets + index
            counts = np.bincount(flat, minlength=n_nodes * self.buckets)
            out[:, at : at + self.buckets] = counts.reshape(n_nodes, self.buckets)
            at += self.buckets
        for column, domain in self.categorical:
            raw = table[column]
            missing = raw.isna().to_numpy()
            code = pd.Series(np.arange(len(domain)), index=list(domain), dtype=np.int64)
            known = np.full(len(raw), -2, np.int64)  # -2 missing, -1 outside the domain
            text = raw[~missing].map(_value_key)
            known[~missing] = text.map(code).fillna(-1).to_numpy(dtype=np.int64)
            out[:, at] = per_node(missing.astype(np.float64))
            out[:, at + 1] = per_node((known == -1).astype(np.float64))
            held = known >= 0
            flat = nodes[held] * len(domain) + known[held]
            counts = np.bincount(flat, minlength=n_nodes * len(domain))
            out[:, at + 2 : at + 2 + len(domain)] = counts.reshape(n_nodes, len(domain))
            at += _CATEGORY_WORDS + len(domain)
        if bool(np.abs(out).max(initial=0.0) > TERM_BOUND):
            raise DataError(
                f"a node's statistics exceed {TERM_BOUND:.3g} (too many records of large "
                "values): rescale the columns or split the node"
            )
        return out

    def _missing(self, table: pd.DataFrame, column: str) -> npt.NDArray[np.bool_]:
        if column in self.numeric:
            return ~np.isfinite(_numeric(table, column))
        return table[column].isna().to_numpy()

    def _buckets_of(self, values: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        """Each value's sketch bucket in the dense layout: negative keys high to low,
        zero (magnitudes under TINY), positive keys low to high."""
        low, high = self._keys
        width = high - low + 1
        key = self.mapping.key
        out = np.full(values.size, width, np.int64)  # magnitudes under TINY: the zero bucket
        for sign in (-1.0, 1.0):
            where = np.flatnonzero((np.sign(values) == sign) & (np.abs(values) >= TINY))
            keys = np.fromiter((key(float(abs(values[i]))) for i in where), np.int64, where.size)
            out[where] = keys - low + width + 1 if sign > 0 else high - keys
        return out

    # -- the total ---------------------------------------------------------------
    def totals(self, vector: npt.NDArray[np.floating[Any]]) -> Totals:
        """Read the sum of nodes' vectors (or one node's) as per-column totals. A private
        job's total carries noise: a count read below zero is zero (and a sketch's
        bucket below one is empty), never a negative number of records."""
        if vector.shape != (self.length,):
            raise DataError(
                f"statistics vector has shape {vector.shape}, the plan {(self.length,)}"
            )
        numeric: dict[str, NumericTotals] = {}
        categorical: dict[str, CategoryTotals] = {}
        rows = None
        at = 0
        if self.dropped:
            at = _ROW_WORDS + len(self.dropped)
            words = [max(round(float(v)), 0) for v in vector[:at]]
            rows = RowTotals(words[0], words[1], dict(zip(self.dropped, words[2:], strict=True)))
        for column in self.numeric:
            count, missing, total, squares = (float(v) for v in vector[at : at + _NUMERIC_WORDS])
            at += _NUMERIC_WORDS
            sketch = self._sketch_of(vector[at : at + self.buckets])
            at += self.buckets
            numeric[column] = NumericTotals(
                count=max(round(count), 0), missing=max(round(missing), 0), sum=total,
                sum_sq=max(squares, 0.0),
                sketch=sketch,
            )  # fmt: skip
        for column, domain in self.categorical:
            words = [
                max(round(float(v)), 0) for v in vector[at : at + _CATEGORY_WORDS + len(domain)]
            ]
            at += _CATEGORY_WORDS + len(domain)
            categorical[column] = CategoryTotals(
                missing=words[0], other=words[1], counts=dict(zip(domain, words[2:], strict=True))
            )
        return Totals(numeric=numeric, categorical=categorical, rows=rows)

    def _sketch_of(self, counts: npt.NDArray[np.floating[Any]]) -> DDSketch:
        low, high = self._keys
        width = high - low + 1
        sketch = DDSketch(self.relative_accuracy)
        value = self.mapping.value
        for index in np.flatnonzero(counts):
            weight = round(float(counts[index]))
            if weight <= 0:
                continue
            if index == width:
                sketch.add(0.0, weight)
            elif index < width:
                sketch.add(-value(high - int(index)), weight)
            else:
                sketch.add(value(low + int(index) - width - 1), weight)
        return sketch


def _numeric(table: pd.DataFrame, column: str) -> npt.NDArray[np.float64]:
    try:
        values = pd.to_numeric(table[column], errors="raise")
    except (TypeError, ValueError):
        raise DataError(
            f"column {column!r} of {table_name(table)} is not numeric: declare it categorical"
        ) from None
    return np.asarray(values, dtype=np.float64)


@dataclass(frozen=True)
class NumericTotals:
    """A numeric column's totals over every node that took part."""

    count: int  # values present
    missing: int
    sum: float
    sum_sq: float
    sketch: DDSketch = field(repr=False, compare=False)

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else math.nan

    @property
    def std(self) -> float:
        """The population standard deviation (as numpy's default)."""
        if not self.count:
            return math.nan
        return math.sqrt(max(self.sum_sq / self.count - self.mean**2, 0.0))

    def quantile(self, q: float) -> float:
        """Within the plan's relative accuracy of the true ``q``-quantile (NaN if empty)."""
        value = self.sketch.get_quantile_value(q)
        return math.nan if value is None else float(value)

    @property
    def min(self) -> float:
        return self.quantile(0.0)

    @property
    def max(self) -> float:
        return self.quantile(1.0)

    @property
    def median(self) -> float:
        return self.quantile(0.5)


@dataclass(frozen=True)
class CategoryTotals:
    """A categorical column's counts: per value of its domain, other values, missing."""

    counts: dict[str, int]
    other: int
    missing: int

    @property
    def mode(self) -> str | None:
        """The most frequent value of the domain (the first in order on ties)."""
        if not self.counts or max(self.counts.values()) == 0:
            return None
        return max(self.counts, key=lambda v: (self.counts[v], -list(self.counts).index(v)))


@dataclass(frozen=True)
class RowTotals:
    """A plan's rows (``StatisticsPlan.dropped``): all of them, those dropped, and per
    dropping column those missing it (a row missing two counts under both)."""

    rows: int
    dropped: int
    dropped_by: dict[str, int]


@dataclass(frozen=True)
class Totals:
    numeric: dict[str, NumericTotals]
    categorical: dict[str, CategoryTotals]
    rows: RowTotals | None = None  # with a plan that drops rows


def category_of(value: Hashable) -> str:
    """How a raw category value is named in a plan and its totals."""
    return _value_key(value)

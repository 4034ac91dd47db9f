"""Turn a table into model inputs without leaking test data into training.

The AI provider holds out its test set first (``split_holdout``, drawn among
the rows the missing-value policy keeps, ``usable_rows``), then fits a
``Preprocessor`` on the training part only: category lists, means, standard
deviations, the label set, imputation values and the statistics derived
columns use all come from training rows, and the same fitted preprocessor is
applied unchanged to the test rows and to every node's data.

Every number fitting learns comes from one function, ``summarize`` (per
column: count, missing, mean, std, median, distinct values, mode), so that
the same fit can later be made from federated totals instead of pooled rows.

Order inside ``fit`` and ``transform``: derived columns (``tessera.data.derive``,
in the job file's order) on the raw rows; then the missing-value policy per
column (``drop`` the row, ``impute`` the training mean or mode, or
``indicator``: impute and add a 0/1 ``<column>_missing`` feature right after
the column's own encoding); then the encoding. A missing target always drops
the row. Every dropped row and imputed value is counted (``Prepared``).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt
import pandas as pd

from tessera.data._columns import (
    INDICATOR_SUFFIX,
    POLICIES,
    Policy,
    _Categorical,
    _Derived,
    _image_shape,
    _Numeric,
)
from tessera.data._common import listing, require_columns, suggest, table_name
from tessera.data._preprocessor_json import (
    _json_column,
    _json_derive,
    _json_image_shape,
    _json_name,
    _json_object,
    _json_scalar,
    _json_values,
    _target_scale,
)
from tessera.data.derive import (
    Derivation,
    DeriveError,
    Statistic,
    parse_derivations,
    statistic_key,
)
from tessera.data.domains import declared_categories, schema_domain
from tessera.data.statistics import (
    RELATIVE_ACCURACY,
    REPORT_ACCURACY,
    StatisticsPlan,
    Totals,
    category_of,
)
from tessera.errors import DataError
from tessera.ids import Task

#: int64 class indices (classification) or float32 targets (regression).
Labels = npt.NDArray[np.int64] | npt.NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class Prepared:
    """Model-ready arrays for some rows of a table.

    ``x`` is float32, shape ``(n, d)`` or ``(n, *image_shape)``; ``y`` holds
    int64 class indices (classification) or float32 targets (regression);
    ``groups`` holds a chosen column's values for these rows (for the natural
    partition) or None; ``n_dropped`` counts rows skipped for missing values.

    What the missing-value policy did: ``dropped_by`` counts, per column, the
    dropped rows that miss it (a row missing two columns counts in both;
    ``n_dropped`` counts it once); ``imputed`` counts values filled per
    column; ``imputed_per_row`` (one per kept row) and ``dropped_groups``
    (the ``group_column`` value of each dropped row that has one) let a
    caller count per node.
    """

    x: npt.NDArray[np.float32]
    y: Labels
    groups: npt.NDArray[Any] | None
    n_dropped: int = 0
    dropped_by: Mapping[str, int] = field(default_factory=dict)
    imputed: Mapping[str, int] = field(default_factory=dict)
    imputed_per_row: npt.NDArray[np.int64] | None = None
    dropped_groups: npt.NDArray[Any] | None = None

    def __post_init__(self) -> None:
        n = len(self.y)
        if len(self.x) != n or (self.groups is not None and len(self.groups) != n):
            raise DataError(
                f"prepared arrays disagree on length: x {len(self.x)}, y {n}"
                + ("" if self.groups is None else f", groups {len(self.groups)}")
            )

    def __len__(self) -> int:
        return len(self.y)

    @property
    def n_imputed(self) -> int:
        """Values imputed, over all columns."""
        return sum(self.imputed.values())


_JSON_FORMAT = "tessera-preprocessor/v1"
_JSON_KEYS = ("format", "target", "task", "columns", "classes", "image_shape", "n_dropped")
# Absent in encodings written before them: target_scale (regression scale), derive
# (derived columns); a column's "missing" and "fill" (its missing-value policy).
_OPTIONAL_JSON_KEYS: dict[str, Any] = {"target_scale": None, "derive": []}


@dataclass(frozen=True)
class ColumnSummary:
    """What fitting learns of one column, from the rows that hold a value.

    Numeric columns: ``mean``, ``std`` (population), ``median``; categorical
    ones: ``categories`` (sorted distinct values; of a column whose values are
    declared, those held, in declared order) and ``mode`` (the most frequent
    category, the first on a tie). ``count`` values present, ``missing``
    absent (NaN, None, an infinity).
    """

    count: int
    missing: int
    mean: float = math.nan
    std: float = math.nan
    median: float = math.nan
    categories: tuple[Hashable, ...] = ()
    mode: Hashable | None = None


def summarize(
    df: pd.DataFrame,
    *,
    numeric: Sequence[str] = (),
    categorical: Sequence[str] = (),
    medians: bool = False,  # noqa: ARG001 (pooled rows give exact medians anyway)
    domains: Mapping[str, Sequence[Hashable]] | None = None,
) -> dict[str, ColumnSummary]:
    """Per-column summaries of ``df``'s rows: the one place fitting computes numbers.

    Everything a ``Preprocessor`` learns (standardisation, imputation values,
    category and label sets, the ``median``/``mean`` of derived columns) is
    read from these; federated statistics can stand in for them later.
    ``domains``: the declared values of some categorical columns; a value
    outside is no category (counted by its text, as a statistics plan counts).
    """
    out: dict[str, ColumnSummary] = {}
    for name in numeric:
        values = _numeric_matrix(df, [name])[:, 0]
        present = values[np.isfinite(values)]
        if len(present) == 0:
            out[name] = ColumnSummary(count=0, missing=len(values))
            continue
        out[name] = ColumnSummary(
            count=len(present),
            missing=len(values) - len(present),
            mean=float(present.mean()),
            std=float(present.std()),
            median=float(np.median(present)),
        )
    for name in categorical:
        column = df[name]
        present_values = column.dropna()
        declared = (domains or {}).get(name)
        if declared is None:
            counts = present_values.value_counts(sort=False)
            held = [(v, int(counts.get(v, 0))) for v in sorted_values(present_values)]
        else:  # pairs, not a dict: 1 and True are two declared categories
            texts = present_values.map(category_of).value_counts(sort=False)
            held = [(v, int(texts.get(category_of(v), 0))) for v in declared]
            held = [(v, n) for v, n in held if n]
        top = max((n for _, n in held), default=0)
        out[name] = ColumnSummary(
            count=len(present_values),
            missing=len(column) - len(present_values),
            categories=tuple(v for v, _ in held),
            mode=next((v for v, n in held if n == top), None),
        )
    return out


def _classes(values: pd.Series, summary: ColumnSummary) -> tuple[Hashable, ...]:
    """A classification target's labels (at least 2, not a measurement), sorted."""
    classes = summary.categories
    if len(classes) < 2:
        raise DataError(
            f"classification target {values.name!r} has {len(classes)} distinct "
            f"value(s) in the training rows; at least 2 are needed"
        )
    _check_labels(values, str(values.name), len(classes))
    return classes


def _scales(
    stats: Mapping[str, ColumnSummary], numeric: Sequence[str], *, standardize: bool, image: bool
) -> dict[str, tuple[float, float]]:
    """Each numeric feature's (mean, std) to standardise with; (0, 1) leaves it as it is."""
    if not standardize or not numeric:
        return dict.fromkeys(numeric, (0.0, 1.0))
    if image:  # one global scale over every pixel: border pixels are constant
        mean = float(np.mean([stats[c].mean for c in numeric]))
        second = float(np.mean([stats[c].std ** 2 + stats[c].mean ** 2 for c in numeric]))
        std = _safe_std(math.sqrt(max(second - mean**2, 0.0)), mean)
        return dict.fromkeys(numeric, (mean, std))
    return {
        c: (stats[c].mean, _safe_std(stats[c].std, stats[c].mean)) if stats[c].count else (0.0, 1.0)
        for c in numeric
    }


def _derive_stat(summary: ColumnSummary, stat: Statistic) -> float:
    return summary.median if stat[0] == "median" else summary.mean


class Summarizer(Protocol):
    """Per-column summaries of some rows: ``summarize`` over pooled rows, or federated
    statistics (``tessera.data.federated``) totalled over the nodes holding them."""

    def __call__(
        self,
        df: pd.DataFrame,
        *,
        numeric: Sequence[str] = (),
        categorical: Sequence[str] = (),
        medians: bool = False,
        domains: Mapping[str, Sequence[Hashable]] | None = None,
    ) -> dict[str, ColumnSummary]:
        """``medians``: the caller uses the medians (a derived column's ``median(...)``),
        so a federated summarizer counts them to its finest accuracy; ``domains``:
        categorical columns whose values are declared, other values none of them."""
        ...


def _fit_derived(
    df: pd.DataFrame, derivations: Sequence[Derivation], summarize: Summarizer = summarize
) -> tuple[pd.DataFrame, tuple[_Derived, ...]]:
    """``df`` with the derived columns added, each fitted on ``df``'s rows in order."""
    frame = df.copy()
    fitted: list[_Derived] = []
    for d in derivations:
        if d.name in df.columns:
            raise DeriveError(d.index, "name", f"{d.name!r} is already a column of the table")
        columns = [c for _, c in d.statistics]
        unknown = [c for c in columns if c not in frame.columns]
        if unknown:
            d.evaluate(frame, {})  # names the unknown column
        for c in columns:
            if not _is_number_column(frame[c]):
                raise d.fail(f"column {c!r} is not numeric (dtype {frame[c].dtype})")
        summaries = summarize(
            frame, numeric=columns, medians=any(s[0] == "median" for s in d.statistics)
        )
        values = {s: _derive_stat(summaries[s[1]], s) for s in d.statistics}
        for s, v in values.items():
            if not math.isfinite(v):
                raise d.fail(f"{statistic_key(s)}: the column has no values in the training rows")
        frame[d.name] = d.evaluate(frame, values)
        fitted.append(_Derived(d, tuple(values.items())))
    return frame, tuple(fitted)


def _derivation_plan(d: _Derived) -> StatisticsPlan:
    """What a statistics round counts for a derived column's statistics: their columns,
    finely enough for a median when one is used (as ``FederatedSummaries`` does)."""
    stats = d.derivation.statistics
    columns = tuple(dict.fromkeys(c for _, c in stats))
    medians = any(s[0] == "median" for s in stats)
    return StatisticsPlan(columns, (), RELATIVE_ACCURACY if medians else REPORT_ACCURACY)


def _fitted_derivation(d: _Derived, totals: Totals) -> _Derived:
    """``d`` with its statistics read off its statistics round's total."""
    values = {}
    for s in d.derivation.statistics:
        n = totals.numeric[s[1]]
        value = n.median if s[0] == "median" else n.mean
        if n.count == 0 or not math.isfinite(value):
            raise d.derivation.fail(f"{statistic_key(s)}: no node holds a value of the column")
        values[s] = value
    return _Derived(d.derivation, tuple(values.items()))


def _apply_derived(df: pd.DataFrame, derived: Sequence[_Derived]) -> pd.DataFrame:
    if not derived:
        return df
    frame = df.copy()
    for d in derived:
        frame[d.name] = d.derivation.evaluate(frame, dict(d.statistics))
    return frame


def _is_number_column(series: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(series))


class PolicyError(DataError):
    """A missing-value policy names what it cannot; ``field`` is where (``missing.columns.x``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _policies(
    target: str,
    names: Sequence[str],
    default: str,
    columns: Mapping[str, str],
) -> dict[str, Policy]:
    """Each feature's policy (the default unless named); the target always drops."""
    for where, policy in [("missing.default", default)] + [
        (f"missing.columns.{c}", p) for c, p in columns.items()
    ]:
        if policy not in POLICIES:
            raise PolicyError(where, f"must be one of {', '.join(POLICIES)}, got {policy!r}")
    for column, policy in columns.items():
        if column == target:
            if policy != "drop":
                raise PolicyError(
                    f"missing.columns.{column}",
                    f"the target is never imputed (a row missing it is always dropped); "
                    f"remove {column!r} or set it to 'drop'",
                )
        elif column not in names:
            raise PolicyError(
                f"missing.columns.{column}",
                f"{column!r} is not the target or a feature"
                f"{suggest(column, [target, *names])}; features: {listing(names)}",
            )
    return {c: cast(Policy, columns.get(c, default)) for c in names}


@dataclass(frozen=True)
class Preprocessor:
    """Feature encoding fitted on training rows only; build it with ``fit``.

    Numeric columns are standardized with training mean and std (a constant
    column gets std 1); categorical columns are one-hot encoded over the
    categories seen in training (an unseen category encodes as all zeros);
    classification labels map to 0..C-1 in sorted order of the training labels.
    A regression target is standardized too (``target_scale``: its training
    mean and std), since a target in the hundreds trains nothing at the usual
    learning rates; ``target_from_model`` maps predictions back, and R^2 is
    the same on either scale.

    ``derive``: derived columns, computed first (module doc). Missing values
    (NaN/None/inf) follow each feature's policy (``missing`` of each column):
    ``drop`` drops the row, ``impute`` fills the training mean (numeric) or
    mode (categorical), ``indicator`` fills it too and adds a 0/1 feature
    ``<column>_missing`` after the column's encoding. A row missing the
    target is always dropped. ``n_dropped`` counts the training rows dropped
    in ``fit``; ``Prepared`` counts what ``transform`` dropped and imputed.
    """

    target: str
    task: Task
    columns: tuple[_Numeric | _Categorical, ...]
    classes: tuple[Hashable, ...]
    image_shape: tuple[int, ...] | None
    n_dropped: int
    target_scale: tuple[float, float] | None = None  # regression: the target's (mean, std)
    derive: tuple[_Derived, ...] = ()

    @classmethod
    def fit(
        cls,
        train_df: pd.DataFrame,
        *,
        target: str,
        features: Sequence[str] | None = (),
        categorical: Sequence[str] = (),
        task: Task | str,
        standardize: bool = True,
        image_shape: tuple[int, ...] | None = None,
        derive: Sequence[tuple[str, str]] = (),
        missing: str = "drop",
        missing_columns: Mapping[str, str] | None = None,
        categories: Mapping[str, Sequence[Hashable]] | None = None,
        summarize: Summarizer = summarize,
    ) -> Preprocessor:
        """Fit on ``train_df``; ``features`` empty or None means every other column.

        ``derive``: (name, expression) pairs in order; ``missing``: the default
        policy of the features, ``missing_columns``: per-column overrides;
        ``categories``: a categorical feature's declared categories, in order
        (``data.categories``; another value encodes as all zeros, as an unseen one).
        Errors of a derivation are ``DeriveError`` (a ``DataError``).
        ``summarize`` computes every number the fit learns from the usable rows;
        federated statistics stand in for the pooled ``summarize`` there.
        """
        try:
            kind = Task(task)
        except ValueError:
            raise DataError(
                f"unknown task {task!r}; valid tasks: {', '.join(t.value for t in Task)}"
            ) from None
        frame, derived = _fit_derived(train_df, parse_derivations(list(derive)), summarize)
        require_columns(frame, [target])
        names = _feature_list(frame, target, features)
        policy = _policies(target, names, missing, missing_columns or {})
        cats = list(dict.fromkeys(categorical))
        for column in cats:
            if column not in names:
                raise DataError(f"categorical column {column!r} is not among the features")
        declared = declared_categories(categories, categorical=cats, target=target)
        if image_shape is not None:
            image_shape = _image_shape(image_shape, len(names), cats)
            indicated = [c for c, p in policy.items() if p == "indicator"]
            if indicated:
                raise DataError(
                    f"image_shape cannot be combined with missing 'indicator' "
                    f"({listing(indicated)}): it adds features"
                )
        numeric = [c for c in names if c not in cats]
        _check_numeric(frame, numeric)
        if kind is Task.REGRESSION:
            _check_numeric(frame, [target], role="regression target")

        drop_numeric = [c for c in numeric if policy[c] == "drop"]
        drop_cats = [c for c in cats if policy[c] == "drop"]
        keep = _usable(frame, target, drop_numeric, drop_cats, kind)
        rows = frame.iloc[np.flatnonzero(keep)]
        if len(rows) == 0:
            raise DataError(
                f"no usable training rows in {table_name(train_df)}: "
                f"all {len(train_df)} have a missing target or a missing feature whose "
                "policy is 'drop'"
            )

        target_numeric = [target] if kind is Task.REGRESSION else []
        target_cats = [target] if kind is Task.CLASSIFICATION else []
        stats = summarize(
            rows,
            numeric=[*numeric, *target_numeric],
            categorical=[*cats, *target_cats],
            domains=declared,
        )
        empty = [c for c in names if stats[c].count == 0 and policy[c] != "drop"]
        if empty:
            raise DataError(
                f"feature(s) {listing(empty)} have no values in the usable training rows: "
                "nothing to impute them from"
            )

        classes: tuple[Hashable, ...] = ()
        if kind is Task.CLASSIFICATION:
            classes = _classes(rows[target], stats[target])
        scale = _scales(stats, numeric, standardize=standardize, image=image_shape is not None)
        target_scale = None
        if kind is Task.REGRESSION and standardize:
            t = stats[target]
            target_scale = (t.mean, _safe_std(t.std, t.mean))
        columns = [
            _Categorical(c, declared.get(c, stats[c].categories), policy[c], stats[c].mode)
            if c in cats
            else _Numeric(c, *scale[c], policy[c], stats[c].mean)
            for c in names
        ]
        return cls(
            target=target,
            task=kind,
            columns=tuple(c if c.missing != "drop" else replace(c, fill=None) for c in columns),
            classes=classes,
            image_shape=image_shape,
            n_dropped=len(train_df) - len(rows),
            target_scale=target_scale,
            derive=derived,
        )

    @classmethod
    def schema(
        cls,
        *,
        target: str,
        features: Sequence[str],
        categorical: Sequence[str] = (),
        task: Task | str,
        standardize: bool = True,
        derive: Sequence[tuple[str, str]] = (),
        missing: str = "drop",
        missing_columns: Mapping[str, str] | None = None,
        domains: Mapping[str, Sequence[Hashable] | None],
        categories: Mapping[str, Sequence[Hashable]] | None = None,
    ) -> Preprocessor:
        """An encoding whose width the schema fixes and whose numbers are not fitted yet.

        Categories and classes come from ``categories`` (declared in the job), a
        derived column's expression (``Derivation.domain``), or ``domains`` (a data
        provider's catalogue: the values of each field that enough records hold;
        None where it lists none), in that order (``data.domains.schema_domain``);
        numeric columns, fills, the target's scale and derived columns' statistics
        (``median(...)``) are placeholders until ``refitted`` fits them from the
        statistics rounds' totals.
        """
        kind = Task(task)
        derived = parse_derivations(list(derive))
        names = list(dict.fromkeys(features))
        if not names:
            raise DataError("an encoding from the schema names its features")
        policy = _policies(target, names, missing, missing_columns or {})
        cats = list(dict.fromkeys(categorical))
        if not set(cats) <= set(names):
            raise DataError(f"categorical column(s) {listing(set(cats) - set(names))} not features")
        declared = declared_categories(categories, categorical=cats, target=target)
        by_name = {d.name: d for d in derived}

        def domain(column: str) -> tuple[Hashable, ...]:
            return schema_domain(
                column, declared=declared, derived=by_name, listed=domains, target=column == target
            )

        columns: list[_Numeric | _Categorical] = [
            _Categorical(c, domain(c), policy[c], None if policy[c] == "drop" else domain(c)[0])
            if c in cats
            else _Numeric(c, 0.0, 1.0, policy[c], None if policy[c] == "drop" else 0.0)
            for c in names
        ]
        classes = domain(target) if kind is Task.CLASSIFICATION else ()
        if kind is Task.CLASSIFICATION and len(classes) < 2:
            raise DataError(f"the schema lists {len(classes)} value(s) of {target!r}: 2 at least")
        return cls(
            target=target,
            task=kind,
            columns=tuple(columns),
            classes=classes,
            image_shape=None,
            n_dropped=0,
            target_scale=(0.0, 1.0) if kind is Task.REGRESSION and standardize else None,
            derive=tuple(_Derived(d, tuple((s, 0.0) for s in d.statistics)) for d in derived),
        )

    @property
    def features(self) -> tuple[str, ...]:
        """Input column names, in order (derived ones included)."""
        return tuple(c.name for c in self.columns)

    @property
    def categorical(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if isinstance(c, _Categorical))

    @property
    def derived(self) -> tuple[str, ...]:
        """The derived columns' names, in the order they are computed."""
        return tuple(d.name for d in self.derive)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The table columns ``transform`` reads: target, features and derivations' inputs,
        derived ones replaced by what they are computed from (what a node asks for)."""
        made = set(self.derived)
        wanted = [i for d in self.derive for i in d.derivation.inputs]
        wanted += [self.target, *self.features]
        return tuple(c for c in dict.fromkeys(wanted) if c not in made)

    @property
    def missing_policy(self) -> dict[str, Policy]:
        """Each feature's missing-value policy (the target's is always ``drop``)."""
        return {c.name: c.missing for c in self.columns}

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Encoded feature names, one-hot columns as ``column=value``, indicators as
        ``column_missing``."""
        out: list[str] = []
        for c in self.columns:
            if isinstance(c, _Categorical):
                out.extend(f"{c.name}={v}" for v in c.categories)
            else:
                out.append(c.name)
            if c.missing == "indicator":
                out.append(c.name + INDICATOR_SUFFIX)
        return tuple(out)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def n_classes(self) -> int | None:
        return len(self.classes) if self.task is Task.CLASSIFICATION else None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.image_shape if self.image_shape is not None else (self.n_features,)

    def to_json(self) -> dict[str, Any]:
        """This fitted encoding as plain JSON data; ``from_json`` reads it back exactly.

        Only aggregates: means, standard deviations, category and label sets,
        imputation values, the statistics derived columns use. Floats survive
        a JSON round trip bit for bit; category and label values keep their
        JSON type (string, integer, float, true/false); values of any other
        type (dates, tuples, ...) raise ``DataError``. ``derive`` and a
        column's ``missing``/``fill`` are written only when used, so an
        encoding without them reads as before.
        """
        columns: list[dict[str, Any]] = []
        for c in self.columns:
            if isinstance(c, _Categorical):
                values = [_json_scalar(v, f"category of column {c.name!r}") for v in c.categories]
                entry: dict[str, Any] = {
                    "name": c.name,
                    "kind": "categorical",
                    "categories": values,
                }
                fill: Any = (
                    None if c.fill is None else _json_scalar(c.fill, f"mode of column {c.name!r}")
                )
            else:
                entry = {"name": c.name, "kind": "numeric", "mean": c.mean, "std": c.std}
                fill = c.fill
            if c.missing != "drop":
                entry["missing"] = c.missing
                entry["fill"] = fill
            columns.append(entry)
        out: dict[str, Any] = {
            "format": _JSON_FORMAT,
            "target": self.target,
            "task": self.task.value,
            "columns": columns,
            "classes": [_json_scalar(v, f"class of {self.target!r}") for v in self.classes],
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "n_dropped": self.n_dropped,
            "target_scale": None if self.target_scale is None else list(self.target_scale),
        }
        if self.derive:
            out["derive"] = [
                {
                    "name": d.name,
                    "expr": d.derivation.expr,
                    "statistics": {statistic_key(s): v for s, v in d.statistics},
                }
                for d in self.derive
            ]
        return out

    @classmethod
    def from_json(cls, obj: object) -> Preprocessor:
        """Read what ``to_json`` wrote; anything malformed raises ``DataError`` naming where."""
        if isinstance(obj, dict):  # keys added later: absent in older encodings
            obj = {**_OPTIONAL_JSON_KEYS, **obj}
        top = _json_object(obj, "preprocessor", {*_JSON_KEYS, *_OPTIONAL_JSON_KEYS})
        if top["format"] != _JSON_FORMAT:
            raise DataError(f"preprocessor.format must be {_JSON_FORMAT!r}, got {top['format']!r}")
        target = _json_name(top["target"], "preprocessor.target")
        try:
            task = Task(top["task"])
        except ValueError:
            raise DataError(
                f"preprocessor.task must be one of {', '.join(t.value for t in Task)}, "
                f"got {top['task']!r}"
            ) from None
        raw_columns = top["columns"]
        if not isinstance(raw_columns, list):
            raise DataError("preprocessor.columns must be a list")
        columns = tuple(
            _json_column(c, f"preprocessor.columns[{i}]") for i, c in enumerate(raw_columns)
        )
        names = [c.name for c in columns]
        if len(set(names)) != len(names):
            raise DataError(f"preprocessor.columns names a feature twice: {listing(names)}")
        if target in names:
            raise DataError(f"preprocessor.target {target!r} is also a feature")
        classes = _json_values(top["classes"], "preprocessor.classes")
        if task is Task.CLASSIFICATION and len(classes) < 2:
            raise DataError("preprocessor.classes must hold at least 2 labels for classification")
        if task is Task.REGRESSION and classes:
            raise DataError("preprocessor.classes must be empty for regression")
        image_shape = _json_image_shape(top["image_shape"], columns)
        n_dropped = top["n_dropped"]
        if isinstance(n_dropped, bool) or not isinstance(n_dropped, int) or n_dropped < 0:
            raise DataError(f"preprocessor.n_dropped must be an integer >= 0, got {n_dropped!r}")
        return cls(
            target=target,
            task=task,
            columns=columns,
            classes=classes,
            image_shape=image_shape,
            n_dropped=n_dropped,
            target_scale=_target_scale(top["target_scale"], task),
            derive=_json_derive(top["derive"]),
        )

    def with_derived(self, df: pd.DataFrame) -> pd.DataFrame:
        """``df`` with the derived columns added (``df`` itself when there are none)."""
        return _apply_derived(df, self.derive)

    def transform(self, df: pd.DataFrame, *, group_column: str | None = None) -> Prepared:
        """Encode ``df`` with the fitted statistics (never statistics of ``df``).

        Derived columns first; then rows missing the target, a ``drop``
        feature, or a ``group_column`` value are dropped, and the others'
        missing values imputed; all of it counted in the ``Prepared``.
        """
        frame = self.with_derived(_empty_as_numbers(df))
        require_columns(frame, [self.target, *self.features])
        if group_column is not None:
            require_columns(frame, [group_column])
        _check_numeric(frame, [c.name for c in self.columns if isinstance(c, _Numeric)])
        if self.task is Task.REGRESSION:
            _check_numeric(frame, [self.target], role="regression target")

        absent = {c.name: _absent(frame, c) for c in self.columns}
        absent[self.target] = ~_usable(frame, self.target, [], [], self.task)
        drops = [self.target] + [c.name for c in self.columns if c.missing == "drop"]
        if group_column is not None:
            lost = frame[group_column].isna().to_numpy()
            absent[group_column] = absent.get(group_column, lost) | lost
            drops.append(group_column)
        drops = list(dict.fromkeys(drops))
        dropped = np.zeros(len(frame), dtype=bool)
        for name in drops:
            dropped |= absent[name]
        kept = np.flatnonzero(~dropped)
        rows = frame.iloc[kept]
        filled = {c.name: absent[c.name][kept] for c in self.columns if c.missing != "drop"}
        per_row = np.zeros(len(rows), dtype=np.int64)
        for mask in filled.values():
            per_row += mask

        groups = dropped_groups = None
        if group_column is not None:
            groups = rows[group_column].to_numpy()
            lost_groups = frame[group_column].to_numpy()[dropped]
            dropped_groups = lost_groups[pd.notna(lost_groups)]
        return Prepared(
            x=self._encode(rows, filled),
            y=self._labels(rows),
            groups=groups,
            n_dropped=len(frame) - len(rows),
            dropped_by={c: int((absent[c] & dropped).sum()) for c in drops},
            imputed={c: int(m.sum()) for c, m in filled.items()},
            imputed_per_row=per_row,
            dropped_groups=dropped_groups,
        )

    def _encode(
        self, rows: pd.DataFrame, filled: Mapping[str, npt.NDArray[np.bool_]]
    ) -> npt.NDArray[np.float32]:
        """The feature matrix of ``rows``; ``filled``: per column, the values to impute."""
        n = len(rows)
        x = np.empty((n, self.n_features), dtype=np.float32)
        position = 0
        numeric: list[_Numeric] = []
        numeric_at: list[int] = []
        for c in self.columns:
            if isinstance(c, _Categorical):
                values = rows[c.name]
                if c.name in filled:
                    values = values.where(~filled[c.name], c.fill)
                codes = _category_codes(c.categories, values)
                block = np.zeros((n, len(c.categories)), dtype=np.float32)
                seen = np.flatnonzero(codes >= 0)
                block[seen, codes[seen]] = 1.0
                x[:, position : position + len(c.categories)] = block
                position += len(c.categories)
            else:
                numeric.append(c)
                numeric_at.append(position)
                position += 1
            if c.missing == "indicator":
                x[:, position] = filled[c.name]
                position += 1
        if numeric:
            matrix = _numeric_matrix(rows, [c.name for c in numeric]).copy()  # filled below
            for j, c in enumerate(numeric):
                if c.fill is not None and c.name in filled:
                    matrix[filled[c.name], j] = c.fill
            means = np.array([c.mean for c in numeric])
            stds = np.array([c.std for c in numeric])
            x[:, numeric_at] = (matrix - means) / stds
        if self.image_shape is not None:
            x = x.reshape(n, *self.image_shape)
        return x

    # -- federated statistics in a deployment --------------------------------------
    @property
    def statistics_rounds(self) -> int:
        """How many statistics rounds fit this encoding: one per derived column that uses a
        ``median(...)`` or ``mean(...)`` (counted before it can be computed), then one."""
        return 1 + sum(1 for d in self.derive if d.derivation.statistics)

    def statistics_plans(self) -> tuple[StatisticsPlan, ...]:
        """Each statistics round's plan, in order (``statistics_rounds`` of them): a
        derived column's statistics' columns (a sketch fine enough for a median), then
        ``statistics_plan``'s. Public before anything is counted: none depends on a total."""
        return (*(_derivation_plan(d) for d in self._counted_derivations()), self.statistics_plan())

    def counted_vector(self, df: pd.DataFrame, round: int) -> npt.NDArray[np.float64]:
        """What a node holding ``df`` shares in statistics round ``round`` of this encoding."""
        plan, rows = self.counted(df, round)
        return plan.vector(rows)

    def counted(self, df: pd.DataFrame, round: int) -> tuple[StatisticsPlan, pd.DataFrame]:
        """Statistics round ``round``'s plan and the rows of ``df`` it counts (labels kept).

        In a derived column's round, its statistics' columns over every row, the
        derived columns before it added (as ``fit`` summarises them); in the last,
        every row with every derived column (the plan counts the drops, then the
        rows a fit keeps). The derived columns' statistics of the earlier rounds
        must be in (``refitted`` with their totals).
        """
        frame = _empty_as_numbers(df)
        derivations = self._counted_derivations()
        if not 0 <= round <= len(derivations):
            raise DataError(f"this encoding has no statistics round {round}")
        if round == len(derivations):
            frame = self.with_derived(frame)
            require_columns(frame, [self.target, *self.features])
            return self.statistics_plan(), frame
        d = derivations[round]
        before = self.derive[: self.derive.index(d)]
        return _derivation_plan(d), _apply_derived(frame, before)

    def refitted(self, totals: Sequence[Totals], *, standardize: bool) -> Preprocessor:
        """This encoding once the first ``len(totals)`` statistics rounds are in: each
        derived column's statistics from its round's total, and with every round's,
        every other number from the last (``rescaled``)."""
        derivations = self._counted_derivations()
        if len(totals) > len(derivations) + 1:
            raise DataError(f"{len(totals)} totals for {len(derivations) + 1} statistics rounds")
        fitted = dict(zip(derivations, totals, strict=False))
        derive = tuple(_fitted_derivation(d, fitted[d]) if d in fitted else d for d in self.derive)
        pre = replace(self, derive=derive)
        if len(totals) <= len(derivations):
            return pre
        return pre.rescaled(totals[-1], standardize=standardize)

    def _counted_derivations(self) -> tuple[_Derived, ...]:
        return tuple(d for d in self.derive if d.derivation.statistics)

    def statistics_plan(self, relative_accuracy: float = REPORT_ACCURACY) -> StatisticsPlan:
        """What each node counts so that ``rescaled`` can fit this encoding's numbers:
        the numeric features (and a regression target), the categorical ones over
        their categories (and a classifier's classes), over the rows a fit keeps; and
        the rows the missing-value policy drops (the target and ``drop`` features')."""
        if self.image_shape is not None:
            raise DataError("federated statistics do not fit image jobs yet")
        numeric = [c.name for c in self.columns if isinstance(c, _Numeric)]
        categorical = [
            (c.name, tuple(category_of(v) for v in c.categories))
            for c in self.columns
            if isinstance(c, _Categorical)
        ]
        if self.task is Task.REGRESSION:
            numeric.append(self.target)
        else:
            categorical.append((self.target, tuple(category_of(v) for v in self.classes)))
        dropped = (self.target, *(c.name for c in self.columns if c.missing == "drop"))
        return StatisticsPlan(tuple(numeric), tuple(categorical), relative_accuracy, dropped)

    def rescaled(self, totals: Totals, *, standardize: bool) -> Preprocessor:
        """This encoding with every number refitted from federated ``totals``
        (``statistics_plan``'s): scales, imputation values, the target's scale.

        Columns, categories, classes and derived columns stay: the model's
        width is fixed before anything is counted.
        """
        columns: list[_Numeric | _Categorical] = []
        for c in self.columns:
            if isinstance(c, _Numeric):
                n = totals.numeric[c.name]
                mean, std = (n.mean, _safe_std(n.std, n.mean)) if n.count else (0.0, 1.0)
                scale = (mean, std) if standardize else (c.mean, c.std)
                fill = None if c.missing == "drop" else (n.mean if n.count else 0.0)
                columns.append(replace(c, mean=scale[0], std=scale[1], fill=fill))
            else:
                counts = totals.categorical[c.name].counts
                top = max((counts[category_of(v)] for v in c.categories), default=0)
                mode = next((v for v in c.categories if counts[category_of(v)] == top), None)
                columns.append(replace(c, fill=None if c.missing == "drop" else mode))
        target_scale = self.target_scale
        if self.task is Task.REGRESSION and target_scale is not None:
            t = totals.numeric[self.target]
            target_scale = (t.mean, _safe_std(t.std, t.mean))
        return replace(self, columns=tuple(columns), target_scale=target_scale)

    def target_from_model(self, values: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """A regression model's outputs on the target's own scale (undoes ``target_scale``)."""
        out = np.asarray(values, dtype=np.float64)
        if self.target_scale is None:
            return out
        mean, std = self.target_scale
        return out * std + mean

    def _labels(self, rows: pd.DataFrame) -> Labels:
        values = rows[self.target]
        if self.task is Task.REGRESSION:
            if self.target_scale is None:
                return values.to_numpy(dtype=np.float32)
            mean, std = self.target_scale
            return ((values.to_numpy(dtype=np.float64) - mean) / std).astype(np.float32)
        codes = pd.Index(self.classes).get_indexer(pd.Index(values))
        if (codes < 0).any():
            unseen = sorted_values(values[codes < 0])
            raise DataError(
                f"label(s) {listing(unseen, 5)} of {self.target!r} in {table_name(rows)} "
                f"were not in the training data; known: {listing(self.classes)}"
            )
        return codes.astype(np.int64)


def usable_rows(
    df: pd.DataFrame,
    *,
    target: str,
    features: Sequence[str] | None = (),
    task: Task | str,
    derive: Sequence[tuple[str, str]] = (),
    missing: str = "drop",
    missing_columns: Mapping[str, str] | None = None,
) -> npt.NDArray[np.bool_]:
    """One flag per row of ``df``: does the missing-value policy keep it?

    For drawing the holdout among usable rows (``split_holdout(usable=...)``)
    before anything is fitted: a row is unusable if it misses the target or
    a feature whose policy is ``drop``. Derived columns are computed with
    statistics of all of ``df`` here; only which values are missing is used
    (it depends on the inputs, not on a median, but for a division by an
    expression that is zero on some rows), never a value.
    """
    kind = Task(task)
    frame, _ = _fit_derived(df, parse_derivations(list(derive)))
    require_columns(frame, [target])
    names = _feature_list(frame, target, features)
    policy = _policies(target, names, missing, missing_columns or {})
    keep = _usable(frame, target, [], [], kind)
    for c in names:
        if policy[c] == "drop":
            keep &= frame[c].notna().to_numpy()
            if _is_number_column(frame[c]):
                keep &= np.isfinite(_numeric_matrix(frame, [c])[:, 0])
    return keep


def _empty_as_numbers(df: pd.DataFrame) -> pd.DataFrame:
    """Columns with no value at all as float NaN: a node's few records (rows of JSON) may
    miss a numeric field everywhere, which pandas would read as text."""
    empty = [c for c in df.columns if df[c].dtype == object and bool(df[c].isna().all())]
    if not empty or len(df) == 0:
        return df
    return df.assign(**{str(c): df[c].astype(np.float64) for c in empty})


def _absent(df: pd.DataFrame, column: _Numeric | _Categorical) -> npt.NDArray[np.bool_]:
    """Rows missing ``column``: NaN/None, or an infinity for a numeric column."""
    if isinstance(column, _Numeric):
        return ~np.isfinite(_numeric_matrix(df, [column.name])[:, 0])
    return df[column.name].isna().to_numpy()


def _feature_list(df: pd.DataFrame, target: str, features: Sequence[str] | None) -> list[str]:
    if isinstance(features, str):
        raise DataError(f"features must be a list of column names, got the string {features!r}")
    if not features:
        return [str(c) for c in df.columns if c != target]
    names = list(features)
    require_columns(df, names)
    if target in names:
        raise DataError(f"target {target!r} is also listed as a feature")
    if len(set(names)) != len(names):
        twice = sorted({c for c in names if names.count(c) > 1})
        raise DataError(f"feature(s) listed twice: {listing(twice)}")
    return names


#: More distinct labels than this, or any fractional one, is a measurement, not a class.
MAX_CLASSES = 100


def _check_labels(values: pd.Series, target: str, n_classes: int) -> None:
    """A continuous column given as a classification target: say so, and what to do."""
    numbers = pd.to_numeric(values, errors="coerce")
    numeric = bool(numbers.notna().all())
    fractional = numeric and bool((numbers % 1 != 0).any())
    if fractional or n_classes > MAX_CLASSES:
        what = "fractional values" if fractional else f"{n_classes} distinct values"
        raise DataError(
            f"classification target {target!r} has {what}: it looks continuous; set "
            f'[job] task = "regression", or derive classes from it (for example a '
            f"threshold) in a column of their own"
        )


def _check_numeric(df: pd.DataFrame, columns: Sequence[str], role: str = "feature") -> None:
    for column in columns:
        if not pd.api.types.is_numeric_dtype(df[column]):
            hint = " (declare it in `categorical`)" if role == "feature" else ""
            raise DataError(
                f"{role} column {column!r} in {table_name(df)} is not numeric "
                f"(dtype {df[column].dtype}){hint}"
            )


def _numeric_matrix(df: pd.DataFrame, columns: Sequence[str]) -> npt.NDArray[np.float64]:
    if not columns:
        return np.zeros((len(df), 0))
    return df[list(columns)].to_numpy(dtype=np.float64, na_value=np.nan)


def _usable(
    df: pd.DataFrame, target: str, numeric: Sequence[str], categorical: Sequence[str], task: Task
) -> npt.NDArray[np.bool_]:
    """Rows whose target and features are all present (and finite, if numeric)."""
    keep = np.isfinite(_numeric_matrix(df, numeric)).all(axis=1)
    if categorical:
        keep &= df[list(categorical)].notna().all(axis=1).to_numpy()
    if task is Task.REGRESSION:
        keep &= np.isfinite(_numeric_matrix(df, [target])[:, 0])
    else:
        keep &= df[target].notna().to_numpy()
    return keep


def _category_codes(categories: Sequence[Hashable], values: pd.Series) -> npt.NDArray[np.intp]:
    """Each value's position among ``categories`` (-1: none), matched by ``category_of``
    as the statistics rounds count them: 2, 2.0 and "2" are one category (a node's JSON
    records and a table, or a declared list and a column, may type a value apart)."""
    keys = pd.Index([category_of(v) for v in categories])
    position = pd.Series(np.arange(len(keys)), index=keys)
    position = position[~keys.duplicated()]  # the first of values that print alike
    present = values.notna().to_numpy()
    codes = np.full(len(values), -1, np.intp)
    found = values[present].map(category_of).map(position)
    codes[present] = found.fillna(-1).to_numpy(dtype=np.intp)
    return codes


def sorted_values(column: pd.Series) -> tuple[Hashable, ...]:
    """Distinct non-missing values, sorted (by text when types do not compare)."""
    values = column.dropna().drop_duplicates().tolist()
    try:
        return tuple(sorted(values))
    except TypeError:
        return tuple(sorted(values, key=lambda v: (type(v).__name__, str(v))))


def _safe_std(std: float, mean: float) -> float:
    """``std``, or 1 for a (numerically) constant column, which then maps to 0."""
    return std if std > 1e-12 * max(1.0, abs(mean)) else 1.0

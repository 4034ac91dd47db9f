"""Turn a table into model inputs without leaking test data into training.

The AI provider holds out its test set first (``split_holdout``), then fits a
``Preprocessor`` on the training part only: category lists, means, standard
deviations and the label set all come from training rows, and the same fitted
preprocessor is applied unchanged to the test rows and to every node's data.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from tessera.data._common import listing, require_columns, rng, table_name
from tessera.errors import DataError
from tessera.ids import Task


def split_holdout(
    df: pd.DataFrame, *, by: str | None, fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``df`` into (train part, test part); the test part is the AI provider's.

    With ``by``, whole groups (e.g. schools) go to the test part until it holds
    about ``fraction`` of the records, so the model is judged on unseen groups.
    With ``by=None`` records are drawn at random. Both parts keep row order and
    index; each gets at least one record (and, with ``by``, one group).
    """
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
        raise DataError(f"holdout fraction must be a number in (0, 1), got {fraction!r}")
    if not (0.0 < float(fraction) < 1.0):
        raise DataError(f"holdout fraction must be in (0, 1), got {fraction!r}")
    n = len(df)
    if n < 2:
        raise DataError(f"cannot hold out part of {table_name(df)}: it has {n} record(s)")
    draw = rng(seed)
    test = np.zeros(n, dtype=bool)
    if by is None:
        n_test = min(max(round(float(fraction) * n), 1), n - 1)
        test[draw.permutation(n)[:n_test]] = True
    else:
        require_columns(df, [by])
        codes = _group_codes(df[by])
        sizes = np.bincount(codes)
        if len(sizes) < 2:
            raise DataError(
                f"cannot hold out whole groups of {by!r} in {table_name(df)}: it has one group"
            )
        drawn = draw.permutation(len(sizes))
        held = np.cumsum(sizes[drawn])
        k = int(np.argmin(np.abs(held - float(fraction) * n))) + 1
        k = min(max(k, 1), len(sizes) - 1)
        is_test_group = np.zeros(len(sizes), dtype=bool)
        is_test_group[drawn[:k]] = True
        test = is_test_group[codes]
    return df.iloc[np.flatnonzero(~test)], df.iloc[np.flatnonzero(test)]


def _group_codes(column: pd.Series) -> npt.NDArray[np.intp]:
    """Group index per row; sorted groups (when sortable) so row order does not matter."""
    try:
        codes, _ = pd.factorize(column, sort=True, use_na_sentinel=False)
    except TypeError:  # mixed, unorderable group values: first-seen order
        try:
            codes, _ = pd.factorize(column, sort=False, use_na_sentinel=False)
        except TypeError as exc:
            raise DataError(f"group column {column.name!r} has unhashable values: {exc}") from None
    return np.asarray(codes, dtype=np.intp)


#: int64 class indices (classification) or float32 targets (regression).
Labels = npt.NDArray[np.int64] | npt.NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class Prepared:
    """Model-ready arrays for some rows of a table.

    ``x`` is float32, shape ``(n, d)`` or ``(n, *image_shape)``; ``y`` holds
    int64 class indices (classification) or float32 targets (regression);
    ``groups`` holds a chosen column's values for these rows (for the natural
    partition) or None; ``n_dropped`` counts rows skipped for missing values.
    """

    x: npt.NDArray[np.float32]
    y: Labels
    groups: npt.NDArray[Any] | None
    n_dropped: int = 0

    def __post_init__(self) -> None:
        n = len(self.y)
        if len(self.x) != n or (self.groups is not None and len(self.groups) != n):
            raise DataError(
                f"prepared arrays disagree on length: x {len(self.x)}, y {n}"
                + ("" if self.groups is None else f", groups {len(self.groups)}")
            )

    def __len__(self) -> int:
        return len(self.y)


_JSON_FORMAT = "tessera-preprocessor/v1"
_JSON_KEYS = ("format", "target", "task", "columns", "classes", "image_shape", "n_dropped")
_OPTIONAL_JSON_KEYS = ("target_scale",)  # absent in encodings written before it


@dataclass(frozen=True)
class _Numeric:
    name: str
    mean: float
    std: float


@dataclass(frozen=True)
class _Categorical:
    name: str
    categories: tuple[Hashable, ...]


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
    the same on either scale. Rows with a missing (NaN/None/inf) target or
    feature are dropped, in ``fit`` and in ``transform`` alike; ``n_dropped``
    and ``Prepared.n_dropped`` say how many.
    """

    target: str
    task: Task
    columns: tuple[_Numeric | _Categorical, ...]
    classes: tuple[Hashable, ...]
    image_shape: tuple[int, ...] | None
    n_dropped: int
    target_scale: tuple[float, float] | None = None  # regression: the target's (mean, std)

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
    ) -> Preprocessor:
        """Fit on ``train_df``; ``features`` empty or None means every other column."""
        try:
            kind = Task(task)
        except ValueError:
            raise DataError(
                f"unknown task {task!r}; valid tasks: {', '.join(t.value for t in Task)}"
            ) from None
        require_columns(train_df, [target])
        names = _feature_list(train_df, target, features)
        cats = list(dict.fromkeys(categorical))
        for column in cats:
            if column not in names:
                raise DataError(f"categorical column {column!r} is not among the features")
        if image_shape is not None:
            image_shape = _image_shape(image_shape, len(names), cats)
        numeric = [c for c in names if c not in cats]
        _check_numeric(train_df, numeric)
        if kind is Task.REGRESSION:
            _check_numeric(train_df, [target], role="regression target")

        keep = _usable(train_df, target, numeric, cats, kind)
        rows = train_df.iloc[np.flatnonzero(keep)]
        if len(rows) == 0:
            raise DataError(
                f"no usable training rows in {table_name(train_df)}: "
                f"all {len(train_df)} have a missing target or feature"
            )

        classes: tuple[Hashable, ...] = ()
        if kind is Task.CLASSIFICATION:
            classes = _sorted_values(rows[target])
            if len(classes) < 2:
                raise DataError(
                    f"classification target {target!r} has {len(classes)} distinct "
                    f"value(s) in the training rows; at least 2 are needed"
                )
            _check_labels(rows[target], target, len(classes))

        matrix = _numeric_matrix(rows, numeric)
        if not standardize or not numeric:
            means, stds = np.zeros(len(numeric)), np.ones(len(numeric))
        elif image_shape is not None:  # one global scale: border pixels are constant
            means = np.full(len(numeric), matrix.mean())
            stds = np.full(len(numeric), _safe_std(float(matrix.std()), float(matrix.mean())))
        else:
            means = matrix.mean(axis=0)
            stds = np.array(
                [
                    _safe_std(float(s), float(m))
                    for s, m in zip(matrix.std(axis=0), means, strict=True)
                ]
            )
        stats = {c: (float(m), float(s)) for c, m, s in zip(numeric, means, stds, strict=True)}
        target_scale = None
        if kind is Task.REGRESSION and standardize:
            values = rows[target].to_numpy(dtype=np.float64)
            mean = float(values.mean())
            target_scale = (mean, _safe_std(float(values.std()), mean))
        columns: list[_Numeric | _Categorical] = [
            _Categorical(c, _sorted_values(rows[c])) if c in cats else _Numeric(c, *stats[c])
            for c in names
        ]
        return cls(
            target=target,
            task=kind,
            columns=tuple(columns),
            classes=classes,
            image_shape=image_shape,
            n_dropped=len(train_df) - len(rows),
            target_scale=target_scale,
        )

    @property
    def features(self) -> tuple[str, ...]:
        """Input column names, in order."""
        return tuple(c.name for c in self.columns)

    @property
    def categorical(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if isinstance(c, _Categorical))

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Encoded feature names, one-hot columns as ``column=value``."""
        out: list[str] = []
        for c in self.columns:
            if isinstance(c, _Categorical):
                out.extend(f"{c.name}={v}" for v in c.categories)
            else:
                out.append(c.name)
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

        Only aggregates: means, standard deviations, category and label sets.
        Floats survive a JSON round trip bit for bit; category and label values
        keep their JSON type (string, integer, float, true/false); values of
        any other type (dates, tuples, ...) raise ``DataError``.
        """
        columns: list[dict[str, Any]] = []
        for c in self.columns:
            if isinstance(c, _Categorical):
                values = [_json_scalar(v, f"category of column {c.name!r}") for v in c.categories]
                columns.append({"name": c.name, "kind": "categorical", "categories": values})
            else:
                columns.append({"name": c.name, "kind": "numeric", "mean": c.mean, "std": c.std})
        return {
            "format": _JSON_FORMAT,
            "target": self.target,
            "task": self.task.value,
            "columns": columns,
            "classes": [_json_scalar(v, f"class of {self.target!r}") for v in self.classes],
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "n_dropped": self.n_dropped,
            "target_scale": None if self.target_scale is None else list(self.target_scale),
        }

    @classmethod
    def from_json(cls, obj: object) -> Preprocessor:
        """Read what ``to_json`` wrote; anything malformed raises ``DataError`` naming where."""
        if isinstance(obj, dict) and "target_scale" not in obj:
            obj = {**obj, "target_scale": None}  # written before targets were scaled
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
        image_shape = top["image_shape"]
        if image_shape is not None:
            if not isinstance(image_shape, list):
                raise DataError("preprocessor.image_shape must be a list of integers or null")
            cats = [c.name for c in columns if isinstance(c, _Categorical)]
            try:
                image_shape = _image_shape(image_shape, len(names), cats)
            except DataError as exc:
                raise DataError(f"preprocessor.{exc}") from None
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
        )

    def transform(self, df: pd.DataFrame, *, group_column: str | None = None) -> Prepared:
        """Encode ``df`` with the fitted statistics (never statistics of ``df``).

        Rows with a missing target or feature, or a missing ``group_column``
        value, are dropped and counted in ``Prepared.n_dropped``.
        """
        require_columns(df, [self.target, *self.features])
        if group_column is not None:
            require_columns(df, [group_column])
        numeric = [c for c in self.columns if isinstance(c, _Numeric)]
        cats = [c for c in self.columns if isinstance(c, _Categorical)]
        numeric_names, cat_names = [c.name for c in numeric], [c.name for c in cats]
        _check_numeric(df, numeric_names)
        if self.task is Task.REGRESSION:
            _check_numeric(df, [self.target], role="regression target")

        keep = _usable(df, self.target, numeric_names, cat_names, self.task)
        if group_column is not None:
            keep &= df[group_column].notna().to_numpy()
        rows = df.iloc[np.flatnonzero(keep)]
        n = len(rows)

        x = np.empty((n, self.n_features), dtype=np.float32)
        position, numeric_at = 0, []
        for c in self.columns:
            if isinstance(c, _Categorical):
                codes = pd.Index(c.categories).get_indexer(pd.Index(rows[c.name]))
                block = np.zeros((n, len(c.categories)), dtype=np.float32)
                seen = np.flatnonzero(codes >= 0)
                block[seen, codes[seen]] = 1.0
                x[:, position : position + len(c.categories)] = block
                position += len(c.categories)
            else:
                numeric_at.append(position)
                position += 1
        if numeric:
            means = np.array([c.mean for c in numeric])
            stds = np.array([c.std for c in numeric])
            matrix = _numeric_matrix(rows, numeric_names)
            x[:, numeric_at] = (matrix - means) / stds
        if self.image_shape is not None:
            x = x.reshape(n, *self.image_shape)

        groups = None if group_column is None else rows[group_column].to_numpy()
        return Prepared(x=x, y=self._labels(rows), groups=groups, n_dropped=len(df) - n)

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
            unseen = _sorted_values(values[codes < 0])
            raise DataError(
                f"label(s) {listing(unseen, 5)} of {self.target!r} in {table_name(rows)} "
                f"were not in the training data; known: {listing(self.classes)}"
            )
        return codes.astype(np.int64)


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


def _image_shape(shape: Sequence[int], n_columns: int, categorical: list[str]) -> tuple[int, ...]:
    dims = tuple(shape)
    if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise DataError(f"image_shape must be positive integers, got {shape!r}")
    if categorical:
        raise DataError("image_shape cannot be combined with categorical features")
    if math.prod(dims) != n_columns:
        raise DataError(
            f"image_shape {dims} holds {math.prod(dims)} values but there are "
            f"{n_columns} feature columns"
        )
    return dims


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


def _sorted_values(column: pd.Series) -> tuple[Hashable, ...]:
    """Distinct non-missing values, sorted (by text when types do not compare)."""
    values = column.dropna().drop_duplicates().tolist()
    try:
        return tuple(sorted(values))
    except TypeError:
        return tuple(sorted(values, key=lambda v: (type(v).__name__, str(v))))


def _safe_std(std: float, mean: float) -> float:
    """``std``, or 1 for a (numerically) constant column, which then maps to 0."""
    return std if std > 1e-12 * max(1.0, abs(mean)) else 1.0


# -- JSON form (Preprocessor.to_json / from_json) ----------------------------------------


def _json_scalar(value: object, what: str) -> str | int | float | bool:
    """A category or label as JSON: numpy scalars become Python ones, others refuse."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise DataError(f"{what} {value!r} cannot be written as JSON (not finite)")
    if not isinstance(value, str | int | float | bool):
        raise DataError(
            f"{what} {value!r} ({type(value).__name__}) cannot be written as JSON: "
            "only strings, integers, floats and true/false can"
        )
    return value


def _target_scale(value: object, task: Task) -> tuple[float, float] | None:
    """``[mean, std]`` of a regression target (std > 0), or null."""
    if value is None:
        return None
    items = value if isinstance(value, list) else []
    numbers = [float(v) for v in items if isinstance(v, int | float) and not isinstance(v, bool)]
    ok = len(numbers) == 2 == len(items) and all(map(math.isfinite, numbers)) and numbers[1] > 0
    if not ok or task is not Task.REGRESSION:
        raise DataError(
            "preprocessor.target_scale must be null, or [mean, std > 0] of a regression target"
        )
    return numbers[0], numbers[1]


def _json_object(obj: object, where: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"{where} must be a JSON object, got {type(obj).__name__}")
    if set(obj) != keys:
        missing, extra = sorted(keys - set(obj)), sorted(set(obj) - keys)
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(map(str, extra))}"] if extra else []
        )
        raise DataError(f"{where}: {'; '.join(parts)}")
    return obj


def _json_name(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise DataError(f"{where} must be a non-empty string, got {value!r}")
    return value


def _json_values(value: object, where: str) -> tuple[Hashable, ...]:
    if not isinstance(value, list):
        raise DataError(f"{where} must be a list")
    for i, item in enumerate(value):
        if isinstance(item, float) and not math.isfinite(item):
            raise DataError(f"{where}[{i}] must be finite, got {item!r}")
        if not isinstance(item, str | int | float | bool):
            raise DataError(f"{where}[{i}] must be a string, number or true/false, got {item!r}")
    if len(set(value)) != len(value):
        raise DataError(f"{where} lists a value twice")
    return tuple(value)


def _json_column(obj: object, where: str) -> _Numeric | _Categorical:
    kind = obj.get("kind") if isinstance(obj, dict) else None
    if kind == "categorical":
        column = _json_object(obj, where, {"name", "kind", "categories"})
        name = _json_name(column["name"], f"{where}.name")
        return _Categorical(name, _json_values(column["categories"], f"{where}.categories"))
    if kind == "numeric":
        column = _json_object(obj, where, {"name", "kind", "mean", "std"})
        name = _json_name(column["name"], f"{where}.name")
        mean, std = column["mean"], column["std"]
        for label, number in (("mean", mean), ("std", std)):
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise DataError(f"{where}.{label} must be a number, got {number!r}")
            if not math.isfinite(number):
                raise DataError(f"{where}.{label} must be finite, got {number!r}")
        if std <= 0:
            raise DataError(f"{where}.std must be > 0, got {std!r}")
        return _Numeric(name, float(mean), float(std))
    raise DataError(f"{where}.kind must be 'numeric' or 'categorical', got {kind!r}")

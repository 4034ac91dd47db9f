"""A fitted preprocessor's JSON form: strict reading, with errors naming the key.

The encoding travels in the signed job document to every node, which applies
it to its own records: an input from outside, so every value is checked.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any, cast

import numpy as np

from tessera.data._columns import (
    POLICIES,
    Policy,
    _Categorical,
    _Derived,
    _image_shape,
    _Numeric,
)
from tessera.data.derive import DeriveError, Statistic, parse_derivations, statistic_key
from tessera.errors import DataError
from tessera.ids import Task

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
    policy: Policy = "drop"
    if isinstance(obj, dict) and "missing" in obj:  # absent: drop (older encodings)
        raw_policy = obj["missing"]
        if raw_policy not in POLICIES or raw_policy == "drop":
            raise DataError(f"{where}.missing must be 'impute' or 'indicator', got {raw_policy!r}")
        policy = cast(Policy, raw_policy)
        obj = {k: v for k, v in obj.items() if k != "missing"}
    with_fill = {"fill"} if policy != "drop" else set()
    if kind == "categorical":
        column = _json_object(obj, where, {"name", "kind", "categories", *with_fill})
        name = _json_name(column["name"], f"{where}.name")
        categories = _json_values(column["categories"], f"{where}.categories")
        fill = column.get("fill")
        if policy != "drop" and fill not in categories:
            raise DataError(f"{where}.fill must be one of the categories, got {fill!r}")
        return _Categorical(name, categories, policy, fill)
    if kind == "numeric":
        column = _json_object(obj, where, {"name", "kind", "mean", "std", *with_fill})
        name = _json_name(column["name"], f"{where}.name")
        labels = ["mean", "std", *sorted(with_fill)]
        for label in labels:
            number = column[label]
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise DataError(f"{where}.{label} must be a number, got {number!r}")
            if not math.isfinite(number):
                raise DataError(f"{where}.{label} must be finite, got {number!r}")
        mean, std = column["mean"], column["std"]
        if std <= 0:
            raise DataError(f"{where}.std must be > 0, got {std!r}")
        fill_value = float(column["fill"]) if policy != "drop" else None
        return _Numeric(name, float(mean), float(std), policy, fill_value)
    raise DataError(f"{where}.kind must be 'numeric' or 'categorical', got {kind!r}")


def _json_image_shape(
    value: object, columns: Sequence[_Numeric | _Categorical]
) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise DataError("preprocessor.image_shape must be a list of integers or null")
    cats = [c.name for c in columns if isinstance(c, _Categorical)]
    try:
        shape = _image_shape(value, len(columns), cats)
    except DataError as exc:
        raise DataError(f"preprocessor.{exc}") from None
    if any(c.missing == "indicator" for c in columns):
        raise DataError("preprocessor.image_shape cannot be combined with indicators")
    return shape


def _json_derive(value: object) -> tuple[_Derived, ...]:
    """``[{"name", "expr", "statistics": {"median(score)": 7.0}}, ...]``, parsed again."""
    if not isinstance(value, list):
        raise DataError("preprocessor.derive must be a list")
    entries = [
        _json_object(item, f"preprocessor.derive[{i}]", {"name", "expr", "statistics"})
        for i, item in enumerate(value)
    ]
    try:
        parsed = parse_derivations([(e["name"], e["expr"]) for e in entries])
    except DeriveError as exc:
        raise DataError(f"preprocessor.derive[{exc.index}].{exc.field}: {exc.message}") from None
    out: list[_Derived] = []
    for i, (d, entry) in enumerate(zip(parsed, entries, strict=True)):
        where = f"preprocessor.derive[{i}].statistics"
        given = entry["statistics"]
        if not isinstance(given, dict) or set(given) != {statistic_key(s) for s in d.statistics}:
            needed = ", ".join(statistic_key(s) for s in d.statistics) or "none"
            raise DataError(f"{where} must give exactly the statistics used ({needed})")
        values: list[tuple[Statistic, float]] = []
        for s in d.statistics:
            number = given[statistic_key(s)]
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise DataError(f"{where}.{statistic_key(s)} must be a number, got {number!r}")
            if not math.isfinite(number):
                raise DataError(f"{where}.{statistic_key(s)} must be finite, got {number!r}")
            values.append((s, float(number)))
        out.append(_Derived(d, tuple(values)))
    return tuple(out)

"""Helpers that make data errors name the table, the column and the fix."""

from __future__ import annotations

import difflib
import math
import numbers
import operator
from collections.abc import Iterable, Sequence
from typing import SupportsIndex

import numpy as np
import pandas as pd

from tessera.errors import DataError

# ``load_table`` stores the dataset's name here so that later errors can say
# "column 'shool' not in mlmRev/Chem97" instead of "not in the table".
NAME_ATTR = "tessera.dataset"


def table_name(df: pd.DataFrame) -> str:
    name = df.attrs.get(NAME_ATTR)
    return str(name) if name else "the table"


def listing(names: Iterable[object], limit: int = 12) -> str:
    """``a, b, c, ... (n more)``: enough to spot a typo, short enough for one line."""
    items = [str(n) for n in names]
    shown = ", ".join(items[:limit])
    return f"{shown}, ... ({len(items) - limit} more)" if len(items) > limit else shown


def suggest(name: str, options: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` when a close option exists, else empty."""
    same_case = [o for o in options if o.lower() == name.lower()]
    close = same_case or difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def require_columns(df: pd.DataFrame, columns: Iterable[str]) -> None:
    available = [str(c) for c in df.columns]
    for column in columns:
        if column not in df.columns:
            raise DataError(
                f"column {column!r} not in {table_name(df)}{suggest(str(column), available)}; "
                f"available: {listing(available)}"
            )


def count(name: str, value: object, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, or a DataError naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, SupportsIndex):
        raise DataError(f"{name} must be an integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:  # an __index__ that returns no int
        raise DataError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise DataError(f"{name} must be at least {minimum}, got {number}")
    return number


def positive(name: str, value: object) -> float:
    """``value`` as a finite float > 0, or a DataError naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DataError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise DataError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def rng(seed: object) -> np.random.Generator:
    """The one generator a seeded operation draws from; same seed, same result."""
    return np.random.default_rng(count("seed", seed, 0))

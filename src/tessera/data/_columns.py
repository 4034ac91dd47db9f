"""A fitted preprocessor's columns, shared by the fit (``prepare``) and its JSON form."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

from tessera.data.derive import Derivation, Statistic
from tessera.errors import DataError

#: What happens to a row missing a column's value (``Preprocessor`` doc).
Policy = Literal["drop", "impute", "indicator"]
POLICIES: tuple[Policy, ...] = ("drop", "impute", "indicator")
#: The 0/1 feature an ``indicator`` column adds: ``<column>_missing``.
INDICATOR_SUFFIX = "_missing"


@dataclass(frozen=True)
class _Numeric:
    name: str
    mean: float
    std: float
    missing: Policy = "drop"
    fill: float | None = None  # impute / indicator: the training mean


@dataclass(frozen=True)
class _Categorical:
    name: str
    categories: tuple[Hashable, ...]
    missing: Policy = "drop"
    fill: Hashable | None = None  # impute / indicator: the training mode


@dataclass(frozen=True)
class _Derived:
    """A derived column and the statistics of the training rows it was fitted with."""

    derivation: Derivation
    statistics: tuple[tuple[Statistic, float], ...]

    @property
    def name(self) -> str:
        return self.derivation.name


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

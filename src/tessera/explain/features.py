"""Source features and the encoded columns each one became.

A model sees encoded columns (``Preprocessor.feature_names``): a numeric
column is one, a categorical one is one per category (``gender=F``,
``gender=M``), and a column whose missing values are ``indicator``-ed adds
``<column>_missing`` after its own encoding. Explanations speak of the
source feature: permuting ``gender`` permutes its one-hot columns together,
and its attribution is the sum over them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tessera.data import Preprocessor


@dataclass(frozen=True)
class Feature:
    """One source feature: its name and the encoded column indices it covers."""

    name: str
    columns: tuple[int, ...]


def source_features(pre: Preprocessor) -> tuple[Feature, ...]:
    """Each source feature of ``pre`` with its encoded columns, in encoding order.

    An image's pixels are features each (``Preprocessor.features``, one per pixel).
    """
    out: list[Feature] = []
    categorical = set(pre.categorical)
    at = 0
    for c in pre.columns:
        width = len(getattr(c, "categories", ())) if c.name in categorical else 1
        width += c.missing == "indicator"
        out.append(Feature(c.name, tuple(range(at, at + width))))
        at += width
    assert at == pre.n_features
    return tuple(out)


def each_column(n: int, names: Sequence[str] | None = None) -> tuple[Feature, ...]:
    """One feature per encoded column (named ``x0``, ``x1``, ... unless ``names``)."""
    labels = list(names) if names is not None else [f"x{i}" for i in range(n)]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} names for {n} columns")
    return tuple(Feature(label, (i,)) for i, label in enumerate(labels))

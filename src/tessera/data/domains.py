"""Where a categorical column's values come from when no row is at hand.

An encoding built from a data provider's schema (``Preprocessor.schema``)
must fix each categorical feature's categories and a classifier's classes
before anything is counted. They come, in this order, from the job's own
declaration (``data.categories``), from a derived column's expression
(``Derivation.domain``: a comparison or ``bin``), or from the values the
provider's catalogue lists (a field of at most ``MAX_LISTED_VALUES`` distinct
values, those enough records hold). A declared list is also what a fit on
rows uses (``Preprocessor.fit(categories=...)``).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Mapping, Sequence

from tessera.config import MAX_DECLARED_CATEGORIES
from tessera.data._common import listing
from tessera.data.derive import Derivation
from tessera.data.statistics import category_of
from tessera.errors import DataError

__all__ = [
    "MAX_DECLARED_CATEGORIES",
    "MAX_LISTED_VALUES",
    "declared_categories",
    "every_feature",
    "schema_domain",
]

#: A field with more distinct values than this lists none in a provider's catalogue.
MAX_LISTED_VALUES = 100


def declared_categories(
    categories: Mapping[str, Sequence[Hashable]] | None, *, categorical: Sequence[str], target: str
) -> dict[str, tuple[Hashable, ...]]:
    """The job's declared categories (``data.categories``), checked: each names a categorical
    feature, holds 1 to ``MAX_DECLARED_CATEGORIES`` plain values, none twice."""
    out: dict[str, tuple[Hashable, ...]] = {}
    for column, values in (categories or {}).items():
        where = f"categories.{column}"
        if column == target:
            raise DataError(f"{where}: the target's classes are not declared, only features'")
        if column not in categorical:
            raise DataError(f"{where}: {column!r} is not a categorical feature; list it there")
        if isinstance(values, str) or not 1 <= len(values) <= MAX_DECLARED_CATEGORIES:
            raise DataError(f"{where}: must list 1 to {MAX_DECLARED_CATEGORIES:,} values")
        for v in values:
            if not isinstance(v, str | int | float | bool) or (
                isinstance(v, float) and not math.isfinite(v)
            ):
                raise DataError(
                    f"{where}: {v!r} is not a string, a whole or finite number, or bool"
                )
        keys = [category_of(v) for v in values]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise DataError(f"{where}: {listing(twice)} listed twice")
        out[column] = tuple(values)
    return out


def every_feature(
    columns: Sequence[str],
    *,
    target: str,
    derive: Sequence[Derivation] = (),
    identifying: Collection[str] = (),
) -> list[str]:
    """What a job that names no features uses: as ``Preprocessor.fit`` does, every column of
    the table and then every derived column, but the target; and never one that
    ``identifying`` lists (a provider's user field and declared identifiers)."""
    names = [*columns, *(d.name for d in derive)]
    return [c for c in dict.fromkeys(names) if c != target and c not in identifying]


def schema_domain(
    column: str,
    *,
    declared: Mapping[str, Sequence[Hashable]],
    derived: Mapping[str, Derivation],
    listed: Mapping[str, Sequence[Hashable] | None],
    target: bool = False,
) -> tuple[Hashable, ...]:
    """``column``'s categories (or a classifier's classes): declared, else a derived column's
    static domain, else the catalogue's listed values; or a ``DataError`` that says
    why there are none and what to do."""
    if column in declared:
        return tuple(declared[column])
    if column in derived:
        domain = derived[column].domain
        if domain is not None:
            return domain
        why = "a derived column's values are known only for a comparison or a bin()"
    else:
        values = listed.get(column)
        if values:
            return tuple(values)
        why = "the data provider's catalogue lists none " + (
            f"of a field with more than {MAX_LISTED_VALUES} distinct values"
            if values is None
            else "when no value is held by enough records"
        )
    role = "classification target" if target else "categorical feature"
    fix = (
        "derive classes from it (a comparison or a bin()) in a column of their own"
        if target
        else f"declare its categories in the job file's [data.categories] ({column} = [...])"
    )
    raise DataError(f"the schema lists no values of {column!r}, a {role}: {why}; {fix}")

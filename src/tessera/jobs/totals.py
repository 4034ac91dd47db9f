"""A job's statistics rounds' totals as the coordinator keeps them: a small JSON artefact.

The coordinator decodes the total of every included node's statistics vector
(``protocol.effects.StatisticsClosed``) in each statistics round and keeps
them, content-addressed, as one artefact of the job: each round's artefact
holds every total so far, in round order, and the job's status names the
latest. Each participant and the AI provider read it back against the plans
the job document implies (``Preprocessor.statistics_plans``) and fit the
same numbers from it (``Preprocessor.refitted``). JSON numbers hold float64
exactly (Python writes the shortest repr that reads back to the same float),
so everyone reads the same totals bit for bit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.data.statistics import StatisticsPlan, Totals
from tessera.errors import RemoteProtocolError

_FORMAT = "tessera-statistics-totals/v2"
#: A document is at most this long (plans of many columns): bounded before it is parsed.
MAX_TOTAL_BYTES = 64 << 20


@dataclass(frozen=True)
class RoundTotal:
    """One statistics round's decoded total and how many nodes it holds."""

    total: tuple[float, ...]
    nodes: int


def statistics_document(rounds: Sequence[RoundTotal]) -> bytes:
    """The artefact: every statistics round's total so far, in round order."""
    body = {
        "format": _FORMAT,
        "rounds": [{"nodes": r.nodes, "total": [float(v) for v in r.total]} for r in rounds],
    }
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def round_totals(data: bytes) -> list[RoundTotal]:
    """The rounds of an artefact, shapes unchecked against any plan (RemoteProtocolError if
    it is not one): what the coordinator appends the next round's total to."""
    if len(data) > MAX_TOTAL_BYTES:
        raise RemoteProtocolError("statistics totals larger than any plan makes")
    try:
        body: Any = json.loads(data)
    except ValueError:
        raise RemoteProtocolError("statistics totals are not JSON") from None
    if not isinstance(body, dict) or body.get("format") != _FORMAT:
        raise RemoteProtocolError(f"not statistics totals (expected {_FORMAT!r})")
    rounds = body.get("rounds")
    if not isinstance(rounds, list) or not rounds:
        raise RemoteProtocolError("statistics totals name at least one round")
    out = []
    for i, entry in enumerate(rounds):
        total = entry.get("total") if isinstance(entry, dict) else None
        nodes = entry.get("nodes") if isinstance(entry, dict) else None
        if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1:
            raise RemoteProtocolError(f"statistics round {i} names how many nodes it holds")
        if (
            not isinstance(total, list)
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in total)
            or not all(math.isfinite(v) for v in total)
        ):
            raise RemoteProtocolError(f"statistics round {i}'s total must be finite numbers")
        out.append(RoundTotal(tuple(float(v) for v in total), nodes))
    return out


def read_statistics_document(
    data: bytes, plans: Sequence[StatisticsPlan]
) -> list[tuple[Totals, int]]:
    """(totals, nodes) of each round in the artefact, read by the job's ``plans``;
    RemoteProtocolError if it holds more rounds than the plans or a total of another
    length than its round's plan."""
    rounds = round_totals(data)
    if len(rounds) > len(plans):
        raise RemoteProtocolError(f"{len(rounds)} statistics totals for {len(plans)} rounds")
    out = []
    for i, (r, plan) in enumerate(zip(rounds, plans, strict=False)):
        if len(r.total) != plan.length:
            raise RemoteProtocolError(
                f"statistics round {i}'s total must be {plan.length} numbers, not {len(r.total)}"
            )
        out.append((plan.totals(np.array(r.total, dtype=np.float64)), r.nodes))
    return out


def append_total(previous: bytes | None, total: npt.NDArray[np.float64], nodes: int) -> bytes:
    """The artefact after one more round: ``previous``'s rounds, then this total."""
    rounds = [] if previous is None else round_totals(previous)
    return statistics_document([*rounds, RoundTotal(tuple(float(v) for v in total), nodes)])

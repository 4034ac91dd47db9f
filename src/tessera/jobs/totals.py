"""A statistics round's total as the coordinator keeps it: a small JSON artefact.

The coordinator decodes the total of every included node's statistics vector
(``protocol.effects.StatisticsClosed``) and keeps it, content-addressed, as
an artefact of the job; the job's status names it. Each participant and the
AI provider read it back against the plan the job document implies
(``Preprocessor.statistics_plan``) and fit the same numbers from it
(``Preprocessor.rescaled``). JSON numbers hold float64 exactly (Python writes
the shortest repr that reads back to the same float), so everyone reads the
same total bit for bit.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.data.statistics import StatisticsPlan, Totals
from tessera.errors import RemoteProtocolError

_FORMAT = "tessera-statistics-total/v1"
#: A total is at most this long (a plan of many columns): bounded before it is parsed.
MAX_TOTAL_BYTES = 64 << 20


def statistics_document(total: npt.NDArray[np.float64], nodes: int) -> bytes:
    """The artefact: the decoded total and how many nodes it holds."""
    body = {"format": _FORMAT, "nodes": nodes, "total": [float(v) for v in total]}
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def read_statistics_document(data: bytes, plan: StatisticsPlan) -> tuple[Totals, int]:
    """(totals, nodes) from the artefact; RemoteProtocolError if it is not one for ``plan``."""
    if len(data) > MAX_TOTAL_BYTES:
        raise RemoteProtocolError("a statistics total larger than any plan makes")
    try:
        body: Any = json.loads(data)
    except ValueError:
        raise RemoteProtocolError("a statistics total is not JSON") from None
    if not isinstance(body, dict) or body.get("format") != _FORMAT:
        raise RemoteProtocolError(f"not a statistics total (expected {_FORMAT!r})")
    total, nodes = body.get("total"), body.get("nodes")
    if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1:
        raise RemoteProtocolError("a statistics total names how many nodes it holds")
    if (
        not isinstance(total, list)
        or len(total) != plan.length
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in total)
        or not all(math.isfinite(v) for v in total)
    ):
        raise RemoteProtocolError(f"a statistics total must be {plan.length} finite numbers")
    return plan.totals(np.array(total, dtype=np.float64)), nodes

"""What a sum of honest contributors' vectors can hold, checked on the sum alone.

Every honest contributor clips its update to L2 norm ``clip`` and weighs it by
``w`` in [0, 1], so a sum over ``n`` of them has an update part of norm at most
``clip * W`` (``W``, the summed weights, at most ``n``), and every word after
the update (the loss, the capped count, the quality words, the weight) lies in
[0, n]. A contributor that skipped its clip, or wrote words of its own, can
break these bounds, and then the sum shows it, whoever sent it: no update is
needed to see it. Stochastic rounding moves each word by less than one ring
step per contributor, which the check allows for. What it cannot see is a
hostile update within the bound (a scaled update clipped as everyone's is an
honest-looking one): contribution indicators and robust combinations are for
that. Private jobs' sums carry noise as large as an update, so they are not
checked here.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt


def bound_problem(
    total: npt.NDArray[np.float64], *, size: int, contributors: int, clip: float, step: float
) -> str | None:
    """Why ``total`` (a decoded sum of ``contributors`` vectors of a model of ``size``
    weights, ring step ``step``) cannot be a sum of honest ones, or None."""
    n = contributors
    slack = n * step  # each contributor's rounding, per word
    weight = float(total[-1])
    if not -slack <= weight <= n + slack:
        return f"its weights sum to {weight:.6g}, outside [0, {n}]"
    words = total[size:-1]
    if words.size and not bool(((words >= -slack) & (words <= n + slack)).all()):
        return f"a word after its update lies outside [0, {n}]"
    norm = float(np.sqrt(np.dot(total[:size], total[:size])))
    allowed = clip * max(weight, 0.0) + slack * math.sqrt(size)
    if norm > allowed:
        return f"its update has norm {norm:.6g} over the clip bound {allowed:.6g}"
    return None

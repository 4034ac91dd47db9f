"""Buffered asynchronous rounds (FedBuff, Nguyen et al. 2022): the staleness algebra.

A buffered job (``RoundParams.buffer`` = K) closes a round's training phase
once K updates are in. A contributor still training when its round closes
keeps training; asked again by a later round ``r'`` while it trains from
round ``r``'s model, it does not start over: it sends that update in round
``r'``, ``tau = r' - r`` rounds stale, its weight times ``s(tau)`` (the update
words and the weight word alike, so the weighted mean stays a mean). Past
``max_staleness`` it drops the work and trains afresh on ``r'``'s model.
The coordinator applies the buffered mean of deltas, each from its own base
model, to the current model: FedBuff's update rule.
"""

from __future__ import annotations

import math

#: FedBuff's polynomial staleness weight ``s(tau) = (1 + tau) ** -STALENESS_POWER``.
STALENESS_POWER = 0.5


def staleness_weight(tau: int) -> float:
    """``s(tau) = (1 + tau) ** -0.5``: 1 for a fresh update, decreasing, always in (0, 1]."""
    if isinstance(tau, bool) or not isinstance(tau, int) or tau < 0:
        raise ValueError(f"staleness must be an integer >= 0, not {tau!r}")
    return 1.0 if tau == 0 else 1.0 / math.sqrt(1.0 + tau)

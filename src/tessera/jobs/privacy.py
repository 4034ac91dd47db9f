"""A job's ``[privacy]`` calibrated: the noise each round's total must carry.

The noise lives in ring units at a fixed scale (``NOISE_FRAC_BITS``), so one
contributor's sensitivity is fixed by the job alone: its whole vector (the
clipped, weighted update, norm at most ``clip_norm``, and ``TAIL`` words each
at most 1) rounded to integers at that scale (``tessera.privacy.sensitivity``).
The variance is the smallest that spends ``epsilon`` over the job's rounds
(``tessera.privacy.calibrate``), computed once per job and cached: every party
that reads the signed job calibrates the same number.
"""

from __future__ import annotations

import math
from functools import lru_cache

from tessera.config import JobConfig
from tessera.privacy import calibrate, sensitivity
from tessera.protocol.limits import TAIL
from tessera.protocol.noise import PrivacyParams

#: The scale of a private job's words: 2^-16 steps, far below any useful noise, and
#: room for the noise of thousands of contributors in a 64-bit ring.
NOISE_FRAC_BITS = 16


def privacy_params_of(
    cfg: JobConfig, *, clip_norm: float, n_weights: int, statistics: tuple[int, ...] = ()
) -> PrivacyParams | None:
    """The job's privacy parameters (None without ``[privacy]``); ``statistics``: the
    lengths of the statistics rounds that open it, each a release like a training
    round's (``protocol.noise.private_statistics``), so the budget spans them all."""
    p = cfg.privacy
    if p is None:
        return None
    if not p.statistics:  # released exact, outside the guarantee ([privacy] statistics)
        statistics = ()
    dim = max((n_weights, *statistics)) + TAIL
    rounds = cfg.federation.rounds + len(statistics)
    l1, l2, variance = _calibrated(p.epsilon, p.delta, rounds, clip_norm, dim)
    return PrivacyParams(
        epsilon=p.epsilon,
        delta=p.delta,
        variance=variance,
        frac_bits=NOISE_FRAC_BITS,
        l1=l1,
        l2=l2,
        dropout_margin=p.dropout_margin,
        stop=p.on_budget == "stop",
        statistics_clip=p.statistics_clip if statistics else None,
    )


@lru_cache(maxsize=64)
def _calibrated(
    epsilon: float, delta: float, rounds: int, clip_norm: float, dim: int
) -> tuple[float, float, float]:
    # The whole vector's real norm: the update's, and the tail's words (each <= 1).
    norm = math.sqrt(clip_norm**2 + TAIL)
    l1, l2 = sensitivity(norm, 2.0**NOISE_FRAC_BITS, dim)
    return l1, l2, calibrate(epsilon, delta, rounds, l1, l2)

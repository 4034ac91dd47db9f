"""The Skellam mechanism: integer noise that adds up across contributors.

Theory of operation
-------------------
A contributor's update reaches the ring as integers: ``x = round(v * scale)``
with ``scale = 2**frac_bits`` and unbiased stochastic rounding
(``tessera.crypto.fixedpoint``). Distributed DP adds integer noise to ``x``
*before* it is split into shares, so no party ever sees a noiseless vector,
and the decoded total carries the sum of the included contributors' noise.

The noise is the symmetric Skellam distribution ``Sk(mu)``: ``P1 - P2`` with
``P1, P2`` independent ``Poisson(mu / 2)``, of mean 0 and variance ``mu``. It
is the one integer noise that is closed under summation (a sum of
independent Poissons is Poisson), so ``n`` contributors each adding
``Sk(mu / n)`` put exactly ``Sk(mu)`` into the total, and the ``m`` of them
that are included after dropouts put exactly ``Sk(mu * m / n)``: the
accountant is told that variance, never the planned one (Agarwal, Kairouz &
Liu, "The Skellam Mechanism for Differentially Private Federated Learning",
NeurIPS 2021).

What this module must never know: who the contributors are, how many were
planned, the ring. It takes a variance and a generator and returns integers;
the caller adds them in the ring (where they wrap like any other word, so the
ring must be sized for the signal plus the noise) and tells the accountant
what was included.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["sensitivity", "skellam_noise"]


def skellam_noise(rng: np.random.Generator, variance: float, size: int) -> npt.NDArray[np.int64]:
    """``size`` independent draws of symmetric Skellam noise of the given ``variance``.

    Each coordinate is ``Poisson(variance / 2) - Poisson(variance / 2)``: mean
    0, variance ``variance``, and a sum of such draws is again one of them,
    with the variances added. ``variance == 0`` gives zeros (a contributor
    whose share of the noise is nothing). The draws come from ``rng`` only, so
    a seeded generator repeats them; numpy's Poisson sampler is what the
    paper relies on ("ships with all ... software packages").
    """
    if not _is_real(variance) or not (math.isfinite(variance) and variance >= 0):
        raise ValueError(f"variance must be a finite number >= 0, got {variance!r}")
    if not isinstance(size, int | np.integer) or isinstance(size, bool) or size < 0:
        raise ValueError(f"size must be an int >= 0, got {size!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, not {type(rng).__name__}")
    if variance == 0:
        return np.zeros(int(size), dtype=np.int64)
    half = float(variance) / 2
    up = rng.poisson(half, size=int(size)).astype(np.int64)
    up -= rng.poisson(half, size=int(size)).astype(np.int64)
    return up


def sensitivity(clip: float, scale: float, dim: int) -> tuple[float, float]:
    """``(L1, L2)``: how far one contributor's quantized vector can move the integer sum.

    Adding or removing one contributor moves the sum by its vector ``x``, the
    integers ``round(v * scale)`` of a real vector ``v`` with ``||v||_2 <=
    clip`` (``clip`` must bound the whole shared vector, the words after the
    update included). Rounding moves each coordinate by less than 1, so by the
    triangle inequality ``||x||_2 <= clip * scale + sqrt(dim)``: that is L2.

    L1 is ``sqrt(dim) * L2 = sqrt(dim) * clip * scale + dim``, and nothing
    simple is tighter:

    - it is Cauchy-Schwarz on L2, and equally ``||v * scale||_1 + dim``;
    - the integer bound ``||x||_1 <= ||x||_2**2`` (``|x_i| <= x_i**2``; Google's
      distributed-DP accounting takes the min of the two) never wins here,
      because this L2 is at least ``sqrt(dim)``, so ``L2**2 >= sqrt(dim) *
      L2``; it only helps with a probabilistic L2 bound, which we do not use;
    - it is attained in the limit: when ``k - 1 = clip * scale / sqrt(dim)``
      is an integer, every ``v_i * scale`` a hair above ``k - 1`` may round up
      to ``k``, giving ``||x||_1 = dim * k``, the bound. Sensitivity is a
      worst case over every rounding outcome, however unlikely.
    """
    if not _is_real(clip) or not (math.isfinite(clip) and clip >= 0):
        raise ValueError(f"clip must be a finite number >= 0, got {clip!r}")
    if not _is_real(scale) or not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    if not isinstance(dim, int | np.integer) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f"dim must be an int >= 1, got {dim!r}")
    root = math.sqrt(int(dim))
    l2 = float(clip) * float(scale) + root
    return root * l2, l2


def _is_real(x: object) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)

"""What the Skellam releases of a job cost in privacy, by Rényi DP.

Theory of operation
-------------------
One round releases ``sum of the included contributors' integer vectors +
Sk(variance)`` per coordinate, where ``variance`` is the noise actually in the
total (``variance_per_contributor * included``). Its cost is a Rényi-DP
curve ``eps(alpha)`` over a grid of orders (``skellam_rdp``, the Skellam
paper's bound); rounds compose by adding their curves (Mironov 2017,
Proposition 1), and a curve becomes ``(epsilon, delta)`` through
dp-accounting's ``compute_epsilon`` (``epsilon_of``). ``PrivacyLedger`` keeps
the running sum for a job; ``calibrate`` inverts the whole chain for a budget.

The bound is proven for integer orders ``alpha >= 2`` only, so
``DEFAULT_ORDERS`` holds only those and ``skellam_rdp`` refuses any other:
the (1, 2) orders that can help at very large epsilon are given up, which only
makes the reported epsilon larger, never smaller.

dp-accounting has no Skellam event, so the curve is ours and everything after
it is theirs: the conversion here, and the Gaussian mechanism that
``gaussian_epsilon`` reports beside ours. It is imported inside the functions
that use it: it pulls in scipy.stats (about a second), which the parties
importing this package to add noise never need.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_ORDERS",
    "PrivacyLedger",
    "calibrate",
    "epsilon_of",
    "gaussian_epsilon",
    "skellam_rdp",
]

DEFAULT_ORDERS: tuple[int, ...] = (
    *range(2, 65),
    *(80, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096),
)
"""RDP orders: every integer 2..64, where budgets of about 0.5 and more find their
optimum, then sparser up to 4096 for smaller ones (the best order grows like
``log(1/delta) / epsilon``: below about 0.005 the grid ends and calibration grows
conservative); integers only, as the bound needs."""

_TOLERANCE = 1e-3  # calibrate stops when its bracket is this narrow, relatively


def skellam_rdp(
    orders: Sequence[float], variance: float, l1: float, l2: float
) -> npt.NDArray[np.float64]:
    """RDP epsilon at each order of one release of an integer sum plus ``Sk(variance)``.

    With ``mu = variance`` and the L1/L2 sensitivities ``l1``, ``l2`` of the
    sum (integer units, ``skellam.sensitivity``), at integer ``alpha >= 2``::

        eps(alpha) = alpha * l2**2 / (2 * mu)
                     + min(((2 * alpha - 1) * l2**2 + 6 * l1) / (4 * mu**2),
                           3 * l1 / (2 * mu))

    the bound on the Rényi divergence of the multi-dimensional Skellam
    mechanism of Agarwal, Kairouz & Liu, "The Skellam Mechanism for
    Differentially Private Federated Learning", NeurIPS 2021 (arXiv:2110.04995,
    Section 3, its multi-dimensional RDP theorem), where ``mu`` is the
    per-coordinate variance of the noise. The first term is the Gaussian
    mechanism's RDP at the same variance; the second, the price of integers,
    vanishes relative to it as ``mu`` grows. It holds for integer orders > 1
    only, so any other order is a ``ValueError``. ``variance == 0`` is no
    noise: infinite cost, or zero if both sensitivities are zero.
    """
    alphas = _integer_orders(orders)
    mu, l1, l2 = (
        _non_negative("variance", variance),
        _non_negative("l1", l1),
        _non_negative("l2", l2),
    )
    if mu == 0:
        return np.full(alphas.shape, 0.0 if l1 == l2 == 0 else math.inf)
    # In ratios to mu, so nothing overflows into inf / inf (a NaN) or underflows to 0 / 0:
    # a result out of range is inf, the conservative answer.
    ratio = l2 / math.sqrt(mu)
    gauss, per = ratio * ratio, l1 / mu  # l2**2 / mu and l1 / mu (a float * is inf, never raises)
    with np.errstate(over="ignore"):
        integers = np.minimum(((2 * alphas - 1) * gauss + 6 * per) / 4 / mu, 1.5 * per)
        return alphas * gauss / 2 + integers


def epsilon_of(
    rdp: Sequence[float] | npt.NDArray[np.float64], orders: Sequence[float], delta: float
) -> float:
    """The ``epsilon`` of an RDP curve at ``delta``, by dp-accounting's ``compute_epsilon``.

    That is the conversion of Canonne, Kamath & Steinke 2020 (arXiv:2004.00010,
    Proposition 12), ``min over alpha of eps(alpha) + log(1 - 1/alpha) -
    log(delta * alpha) / (alpha - 1)``, tighter than Mironov's
    ``eps(alpha) + log(1/delta) / (alpha - 1)``; it is also what
    dp-accounting's ``RdpAccountant.get_epsilon`` returns for a curve it
    composed itself. ``inf`` when the curve is infinite at every order.
    """
    from dp_accounting.rdp import compute_epsilon

    _probability("delta", delta)
    if len(rdp) != len(orders) or len(orders) == 0:
        raise ValueError(
            f"rdp and orders must be non-empty and of one length, got {len(rdp)} and {len(orders)}"
        )
    if not bool(np.all(np.asarray(rdp, dtype=np.float64) >= 0)):  # NaN fails too
        raise ValueError("an RDP curve is >= 0 at every order (dp-accounting reads NaN as 0)")
    return float(compute_epsilon(list(orders), list(rdp), delta)[0])


def gaussian_epsilon(
    noise_multiplier: float, rounds: int, delta: float, orders: Sequence[float] = DEFAULT_ORDERS
) -> float:
    """``epsilon`` of ``rounds`` Gaussian releases with noise ``noise_multiplier * l2``.

    dp-accounting's ``RdpAccountant`` composing a ``GaussianDpEvent``: the
    maintained library's answer for the continuous mechanism at the same
    ``sqrt(variance) / l2``, to report beside the Skellam accounting (which is
    never below it). The default orders are ours, so the two differ by the
    mechanism alone; dp-accounting's own default grid adds fractional orders.
    """
    import dp_accounting

    if not _is_real(noise_multiplier) or not noise_multiplier > 0:
        raise ValueError(f"noise_multiplier must be a number > 0, got {noise_multiplier!r}")
    _probability("delta", delta)
    accountant = dp_accounting.rdp.RdpAccountant(orders=list(orders))
    event = dp_accounting.GaussianDpEvent(float(noise_multiplier))
    accountant.compose(event, _rounds(rounds))
    return float(accountant.get_epsilon(delta))


class PrivacyLedger:
    """A job's privacy spent so far, one Skellam release per round, at a fixed ``delta``."""

    def __init__(self, delta: float, orders: Sequence[float] = DEFAULT_ORDERS) -> None:
        self.delta = _probability("delta", delta)
        self.orders: tuple[int, ...] = tuple(int(a) for a in _integer_orders(orders))
        self._rdp = np.zeros(len(self.orders))
        self._rounds = 0

    @property
    def rounds(self) -> int:
        """How many releases were spent."""
        return self._rounds

    @property
    def rdp(self) -> npt.NDArray[np.float64]:
        """The composed RDP curve at ``orders`` (a copy)."""
        return self._rdp.copy()

    def spend(self, variance: float, l1: float, l2: float) -> None:
        """Record one round released with total noise ``variance`` (what was included)."""
        self._rdp = self._rdp + skellam_rdp(self.orders, variance, l1, l2)
        self._rounds += 1

    def epsilon(self) -> float:
        """``epsilon`` at ``delta`` of every round spent so far (0 before the first)."""
        return epsilon_of(self._rdp, self.orders, self.delta)

    def epsilon_if(self, variance: float, l1: float, l2: float) -> float:
        """``epsilon()`` after one more ``spend(variance, l1, l2)``, spending nothing."""
        return epsilon_of(
            self._rdp + skellam_rdp(self.orders, variance, l1, l2), self.orders, self.delta
        )


def calibrate(epsilon: float, delta: float, rounds: int, l1: float, l2: float) -> float:
    """The smallest total variance at which ``rounds`` releases spend at most ``epsilon``.

    Each release's cost falls as its variance grows, at every order, so the
    composed ``epsilon`` does too: a bisection on the log of the variance,
    between a variance that spends too much and one that does not, stops when
    they are within 0.1% and returns the one that does not (so the result
    always meets the budget, by at most that much noise too many). Zero
    sensitivity needs no noise: 0.0.
    """
    if not _is_real(epsilon) or not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    _probability("delta", delta)
    count = _rounds(rounds)
    l1, l2 = _non_negative("l1", l1), _non_negative("l2", l2)
    if l1 == l2 == 0:
        return 0.0

    def spends(variance: float) -> float:
        with np.errstate(over="ignore"):
            rdp = count * skellam_rdp(DEFAULT_ORDERS, variance, l1, l2)
        return epsilon_of(rdp, DEFAULT_ORDERS, delta)

    low, high = _bracket(lambda v: spends(v) <= epsilon)
    while high > low * (1 + _TOLERANCE):
        middle = math.sqrt(low * high)
        low, high = (low, middle) if spends(middle) <= epsilon else (middle, high)
    return high


def _bracket(enough: Callable[[float], bool]) -> tuple[float, float]:
    """``(low, high)`` with ``enough(high)`` and not ``enough(low)``, ``high = 2 * low``."""
    high = 1.0
    while not enough(high):
        high *= 2
        if not math.isfinite(high):
            raise ValueError("no finite variance reaches this epsilon")
    low = high / 2
    while enough(low):
        low, high = low / 2, low
        if low == 0:  # sensitivities so small that no variance > 0 is too little
            return high, high
    return low, high


def _integer_orders(orders: Sequence[float]) -> npt.NDArray[np.float64]:
    alphas = np.asarray(orders, dtype=np.float64)
    if alphas.ndim != 1 or alphas.size == 0:
        raise ValueError("orders must be a non-empty sequence of numbers")
    if not bool(np.all((alphas >= 2) & (alphas == np.floor(alphas)) & np.isfinite(alphas))):
        raise ValueError(
            f"the Skellam RDP bound holds for integer orders >= 2 only, got {list(orders)}"
        )
    return alphas


def _non_negative(name: str, value: float) -> float:
    if not _is_real(value) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _probability(name: str, value: float) -> float:
    if not _is_real(value) or not 0 < value < 1:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)


def _rounds(rounds: int) -> int:
    if not isinstance(rounds, int | np.integer) or isinstance(rounds, bool) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    return int(rounds)


def _is_real(x: object) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)

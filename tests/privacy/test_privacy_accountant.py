"""The Skellam RDP bound, dp-accounting's conversion, the ledger and calibration."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import dp_accounting
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special

import tessera.privacy
from tessera.privacy import (
    DEFAULT_ORDERS,
    PrivacyLedger,
    calibrate,
    epsilon_of,
    gaussian_epsilon,
    sensitivity,
    skellam_rdp,
)

ORDERS = np.array(DEFAULT_ORDERS, dtype=np.float64)
L1, L2 = sensitivity(1.0, 2.0**12, 10_000)  # a 10k-parameter update at 12 fractional bits
FAST = settings(max_examples=40, deadline=None)
BUDGETS = st.floats(0.1, 20.0)
DELTAS = st.sampled_from([1e-3, 1e-5, 1e-7, 1e-9])


def gaussian_rdp(variance: float, l2: float) -> np.ndarray:
    """The Gaussian mechanism's RDP at the same variance: ``alpha * l2**2 / (2 * variance)``."""
    return ORDERS * l2 * l2 / (2 * variance)


def spent(variance: float, rounds: int, delta: float, l1: float = L1, l2: float = L2) -> float:
    return epsilon_of(rounds * skellam_rdp(DEFAULT_ORDERS, variance, l1, l2), DEFAULT_ORDERS, delta)


def skellam_logpmf(k: np.ndarray, variance: float) -> np.ndarray:
    """``log P(Sk(variance) = k)``, the noise ``skellam_noise`` draws, summed in log space.

    ``P(k) = exp(-v) * sum over j of lam**(2j + |k|) / (j! (j + |k|)!)`` with
    ``lam = v / 2`` (the two Poisson means), so no tail underflows to zero.
    """
    lam = variance / 2
    j = np.arange(0, math.ceil(lam + 50 * math.sqrt(lam) + 100))[:, None]
    a = np.abs(k)[None, :]
    terms = (2 * j + a) * math.log(lam) - special.gammaln(j + 1) - special.gammaln(j + a + 1)
    return special.logsumexp(terms, axis=0) - variance


def exact_rdp(alpha: int, variance: float, shift: int) -> float:
    """The Rényi divergence of order ``alpha`` of ``shift + Sk(variance)`` from ``Sk(variance)``."""
    reach = 10 * max(alpha * shift, int(variance)) + 200
    k = np.arange(-reach, reach + shift + 1)
    terms = alpha * skellam_logpmf(k - shift, variance)
    terms += (1 - alpha) * skellam_logpmf(k, variance)
    assert max(terms[0], terms[-1]) < terms.max() - 40  # the tails cut off add nothing
    return float(special.logsumexp(terms)) / (alpha - 1)


def test_the_package_exports_what_its_docstring_names() -> None:
    names = set(tessera.privacy.__all__)
    assert names == {
        "DEFAULT_ORDERS",
        "PrivacyLedger",
        "calibrate",
        "epsilon_of",
        "gaussian_epsilon",
        "sensitivity",
        "skellam_noise",
        "skellam_rdp",
    }
    assert all(
        f"``{name}``" in (tessera.privacy.__doc__ or "") for name in names - {"DEFAULT_ORDERS"}
    )


def test_adding_noise_does_not_import_dp_accounting() -> None:
    """dp-accounting brings scipy.stats (about a second): only the conversions import it."""
    check = "import sys, tessera.privacy; assert 'dp_accounting' not in sys.modules"
    subprocess.run([sys.executable, "-c", check], check=True, timeout=60)


# -- the RDP bound ---------------------------------------------------------


def test_the_bound_at_known_points() -> None:
    """Both branches of the min, by hand from the formula in the docstring."""
    # alpha 2, mu 100, l1 10, l2 1: 2/200 + min((3 + 60)/40000, 30/200) = 0.01 + 0.001575
    assert skellam_rdp([2], 100.0, 10.0, 1.0)[0] == pytest.approx(0.011575, rel=1e-12)
    # alpha 2, mu 1, l1 1, l2 1: 2/2 + min((3 + 6)/4, 3/2) = 1 + 1.5
    assert skellam_rdp([2], 1.0, 1.0, 1.0)[0] == pytest.approx(2.5, rel=1e-12)


@pytest.mark.parametrize("variance", [1.0, 30.0, 200.0])
@pytest.mark.parametrize("shift", [1, 3])
@pytest.mark.parametrize("alpha", [2, 8, 32])
def test_the_bound_bounds_the_exact_divergence_in_one_dimension(
    variance: float, shift: int, alpha: int
) -> None:
    """Computed from the pmf of the noise we draw, the divergence stays under the bound,
    which is tight (within 6%) once the variance is large: so ``mu`` in the paper's bound
    is the variance of ``Poisson(mu / 2) - Poisson(mu / 2)``, not a Poisson mean."""
    exact = exact_rdp(alpha, variance, shift)
    bound = float(skellam_rdp([alpha], variance, shift, shift)[0])
    assert exact <= bound
    if variance >= 200:
        assert bound <= 1.06 * exact


def test_the_default_orders_are_integers_from_two() -> None:
    assert all(isinstance(a, int) and a >= 2 for a in DEFAULT_ORDERS)
    assert list(DEFAULT_ORDERS) == sorted(set(DEFAULT_ORDERS))


def test_the_bound_tends_to_the_gaussian_as_the_variance_grows() -> None:
    """Never below the Gaussian's RDP, and the excess shrinks to nothing relative to it."""
    excess = []
    for variance in L2 * L2 * np.geomspace(1e-2, 1e8, 11):
        skellam, gaussian = (
            skellam_rdp(DEFAULT_ORDERS, variance, L1, L2),
            gaussian_rdp(variance, L2),
        )
        assert np.all(skellam >= gaussian)
        excess.append(float(np.max(skellam / gaussian - 1)))
    assert excess == sorted(excess, reverse=True)
    assert excess[-1] < 1e-6


def test_finer_quantization_at_one_noise_multiplier_tends_to_the_gaussian() -> None:
    """Scale, sensitivity and noise together (``variance = (z * l2)**2``): the RDP tends to
    ``alpha / (2 z**2)``, the Gaussian mechanism's, and dp-accounting's epsilon follows."""
    z, rounds, delta = 1.1, 100, 1e-6
    gaussian = gaussian_epsilon(z, rounds, delta)
    gaps = []
    for frac_bits in (4, 8, 12, 16, 20):
        l1, l2 = sensitivity(1.0, 2.0**frac_bits, 1000)
        rdp = skellam_rdp(DEFAULT_ORDERS, (z * l2) ** 2, l1, l2)
        assert np.all(rdp >= ORDERS / (2 * z * z))
        gaps.append(spent((z * l2) ** 2, rounds, delta, l1, l2) / gaussian - 1)
    assert all(gap >= 0 for gap in gaps)
    assert gaps == sorted(gaps, reverse=True)
    assert gaps[-1] < 1e-4


@FAST
@given(
    variances=st.lists(st.floats(1e-3, 1e12), min_size=2, max_size=2, unique=True),
    l2s=st.lists(st.floats(0.0, 1e6), min_size=2, max_size=2, unique=True),
    spread=st.floats(1.0, 1e3),
)
def test_more_noise_costs_less_and_more_sensitivity_costs_more(
    variances: list[float], l2s: list[float], spread: float
) -> None:
    less, more = sorted(variances)
    low, high = sorted(l2s)
    l1 = high * spread
    assert np.all(
        skellam_rdp(DEFAULT_ORDERS, less, l1, high) >= skellam_rdp(DEFAULT_ORDERS, more, l1, high)
    )
    assert np.all(
        skellam_rdp(DEFAULT_ORDERS, less, l1, low) <= skellam_rdp(DEFAULT_ORDERS, less, l1, high)
    )
    assert np.all(
        skellam_rdp(DEFAULT_ORDERS, less, low, high) <= skellam_rdp(DEFAULT_ORDERS, less, l1, high)
    )


def test_no_noise_costs_everything_unless_nothing_is_sensitive() -> None:
    assert np.all(np.isinf(skellam_rdp(DEFAULT_ORDERS, 0.0, L1, L2)))
    assert not skellam_rdp(DEFAULT_ORDERS, 0.0, 0.0, 0.0).any()
    assert epsilon_of(skellam_rdp(DEFAULT_ORDERS, 0.0, L1, L2), DEFAULT_ORDERS, 1e-5) == math.inf


@pytest.mark.parametrize("orders", [[1.5], [1], [2, 2.5], [2, math.inf], [], [[2]]])
def test_the_bound_refuses_orders_it_was_not_proven_for(orders: list[float]) -> None:
    with pytest.raises(ValueError, match="orders"):
        skellam_rdp(orders, 1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("variance", "l1", "l2", "field"),
    [
        (-1.0, 1.0, 1.0, "variance"),
        (math.nan, 1.0, 1.0, "variance"),
        (1.0, -1.0, 1.0, "l1"),
        (1.0, 1.0, math.inf, "l2"),
        (1.0, 1.0, None, "l2"),
    ],
)
def test_the_bound_refuses_what_is_not_a_variance_or_a_sensitivity(
    variance: float, l1: float, l2: float, field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        skellam_rdp(DEFAULT_ORDERS, variance, l1, l2)


# -- the conversion --------------------------------------------------------


@pytest.mark.parametrize(("z", "rounds"), [(0.7, 1), (1.0, 10), (2.5, 500), (10.0, 10_000)])
@pytest.mark.parametrize("delta", [1e-3, 1e-7])
def test_epsilon_of_agrees_with_dp_accountings_rdp_accountant(
    z: float, rounds: int, delta: float
) -> None:
    """A Gaussian curve converted by ``epsilon_of`` and dp-accounting's own accountant."""
    accountant = dp_accounting.rdp.RdpAccountant(orders=list(DEFAULT_ORDERS))
    accountant.compose(dp_accounting.GaussianDpEvent(z), rounds)
    ours = epsilon_of(rounds * gaussian_rdp(z * z, 1.0), DEFAULT_ORDERS, delta)
    assert ours == pytest.approx(accountant.get_epsilon(delta), rel=1e-12)
    assert gaussian_epsilon(z, rounds, delta) == pytest.approx(ours, rel=1e-12)


def test_epsilon_of_is_the_improved_conversion() -> None:
    """Pins dp-accounting's formula: ``r + log(1 - 1/a) - log(delta * a) / (a - 1)`` at the
    best order, below Mironov's ``r + log(1/delta) / (a - 1)``."""
    alpha, r, delta = 8, 0.5, 1e-5
    improved = r + math.log1p(-1 / alpha) - math.log(delta * alpha) / (alpha - 1)
    assert epsilon_of([r], [alpha], delta) == pytest.approx(improved, rel=1e-12)
    assert improved < r + math.log(1 / delta) / (alpha - 1)
    assert epsilon_of([r, 10.0], [alpha, 2], delta) == pytest.approx(improved, rel=1e-12)


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, math.nan])
def test_epsilon_of_refuses_a_delta_outside_zero_one(delta: float) -> None:
    with pytest.raises(ValueError, match="delta"):
        epsilon_of([1.0], [2], delta)


def test_epsilon_of_refuses_a_curve_and_orders_of_different_lengths() -> None:
    with pytest.raises(ValueError, match="length"):
        epsilon_of([1.0, 2.0], [2], 1e-5)


def test_skellam_never_costs_less_than_the_gaussian_at_its_noise_multiplier() -> None:
    for variance in L2 * L2 * np.array([0.25, 1.0, 4.0, 100.0]):
        z = math.sqrt(variance) / L2
        for rounds in (1, 50, 2000):
            assert spent(variance, rounds, 1e-6) >= gaussian_epsilon(z, rounds, 1e-6)


# -- calibration -----------------------------------------------------------


@FAST
@given(
    epsilon=BUDGETS,
    delta=DELTAS,
    rounds=st.integers(1, 3000),
    clip=st.floats(0.01, 100.0),
    frac_bits=st.integers(0, 24),
    dim=st.integers(1, 10**7),
)
def test_calibrate_round_trips_to_just_under_the_budget(
    epsilon: float, delta: float, rounds: int, clip: float, frac_bits: int, dim: int
) -> None:
    l1, l2 = sensitivity(clip, 2.0**frac_bits, dim)
    variance = calibrate(epsilon, delta, rounds, l1, l2)
    assert epsilon * (1 - 0.005) <= spent(variance, rounds, delta, l1, l2) <= epsilon
    assert spent(variance / 1.002, rounds, delta, l1, l2) > epsilon  # and it is the least


@FAST
@given(epsilon=BUDGETS, delta=DELTAS, rounds=st.integers(1, 3000), fewer=st.floats(0.1, 0.9))
def test_more_rounds_or_a_smaller_budget_need_more_noise(
    epsilon: float, delta: float, rounds: int, fewer: float
) -> None:
    base = calibrate(epsilon, delta, rounds, L1, L2)
    assert calibrate(epsilon, delta, 2 * rounds, L1, L2) > base
    assert calibrate(epsilon * fewer, delta, rounds, L1, L2) > base


def test_calibrate_needs_no_noise_when_nothing_is_sensitive() -> None:
    assert calibrate(1.0, 1e-5, 10, 0.0, 0.0) == 0.0


def test_calibrate_reaches_tiny_sensitivities_and_budgets() -> None:
    small = calibrate(1.0, 1e-5, 1, 1e-3, 1e-3)
    assert 0 < small < 1 and spent(small, 1, 1e-5, 1e-3, 1e-3) <= 1.0
    huge = calibrate(1e-4, 1e-9, 100_000, L1, L2)
    assert spent(huge, 100_000, 1e-9) <= 1e-4
    # so little sensitivity that the least positive float is enough noise
    assert calibrate(10.0, 1e-5, 1, 5e-324, 0.0) == 5e-324


def test_calibrate_refuses_a_budget_no_finite_variance_reaches() -> None:
    with pytest.raises(ValueError, match="no finite variance"):
        calibrate(1e-3, 1e-5, 1, 1e200, 1e200)


def test_out_of_range_arithmetic_is_infinite_cost_never_nan() -> None:
    """Overflow is read as no privacy (inf), never as NaN, which dp-accounting reads as 0."""
    assert skellam_rdp([2], 5e-324, 1.0, 1.0)[0] == math.inf
    assert skellam_rdp([2], 1.0, 1e300, 1e300)[0] == math.inf
    assert skellam_rdp([2], 1e308, 1e300, 1e154)[0] == pytest.approx(1.0)
    assert skellam_rdp([2], 1e-200, 1e-300, 0.0)[0] == pytest.approx(1.5e-100)


@pytest.mark.parametrize("curve", [[math.nan], [-0.1]])
def test_epsilon_of_refuses_a_curve_that_is_no_divergence(curve: list[float]) -> None:
    with pytest.raises(ValueError, match="RDP curve"):
        epsilon_of(curve, [2], 1e-5)


@pytest.mark.parametrize("z", [0.0, -1.0, math.nan, True])
def test_gaussian_epsilon_refuses_a_noise_multiplier_that_is_not_positive(z: float) -> None:
    with pytest.raises(ValueError, match="noise_multiplier"):
        gaussian_epsilon(z, 1, 1e-5)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"epsilon": math.inf}, "epsilon"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"rounds": 0}, "rounds"),
        ({"rounds": 2.0}, "rounds"),
        ({"l1": -1.0}, "l1"),
        ({"l2": math.nan}, "l2"),
    ],
)
def test_calibrate_refuses_impossible_inputs(kwargs: dict[str, float], field: str) -> None:
    args = {"epsilon": 1.0, "delta": 1e-5, "rounds": 10, "l1": L1, "l2": L2} | kwargs
    with pytest.raises(ValueError, match=field):
        calibrate(**args)  # type: ignore[arg-type]


# -- the ledger ------------------------------------------------------------


def test_a_ledger_starts_at_zero_and_grows_with_every_round() -> None:
    ledger = PrivacyLedger(1e-6)
    assert (ledger.rounds, ledger.epsilon()) == (0, 0.0)
    seen = [0.0]
    for _ in range(20):
        ledger.spend(4 * L2 * L2, L1, L2)
        seen.append(ledger.epsilon())
    assert ledger.rounds == 20
    assert all(a < b for a, b in itertools.pairwise(seen))
    assert ledger.epsilon() == pytest.approx(spent(4 * L2 * L2, 20, 1e-6), rel=1e-12)


@FAST
@given(variances=st.lists(st.floats(1.0, 1e6), min_size=0, max_size=8), after=st.floats(1.0, 1e6))
def test_epsilon_if_predicts_the_next_spend_exactly(variances: list[float], after: float) -> None:
    ledger = PrivacyLedger(1e-5)
    for v in variances:
        ledger.spend(v * L2 * L2, L1, L2)
    predicted = ledger.epsilon_if(after * L2 * L2, L1, L2)
    assert ledger.rounds == len(variances)  # a prediction spends nothing
    ledger.spend(after * L2 * L2, L1, L2)
    assert ledger.epsilon() == predicted


def test_a_round_with_dropouts_costs_more_than_a_full_one() -> None:
    full, dropped = PrivacyLedger(1e-5), PrivacyLedger(1e-5)
    per_contributor, planned, included = L2 * L2 / 10, 10, 7
    full.spend(per_contributor * planned, L1, L2)
    dropped.spend(per_contributor * included, L1, L2)
    assert dropped.epsilon() > full.epsilon()


def test_the_calibrated_variance_lasts_exactly_the_planned_rounds() -> None:
    epsilon, delta, rounds = 2.0, 1e-5, 20
    variance = calibrate(epsilon, delta, rounds, L1, L2)
    ledger = PrivacyLedger(delta)
    for _ in range(rounds):
        ledger.spend(variance, L1, L2)
    assert ledger.epsilon() <= epsilon < ledger.epsilon_if(variance, L1, L2)


def test_a_ledger_keeps_its_curve_to_itself() -> None:
    ledger = PrivacyLedger(1e-5, orders=[2, 4, 8])
    ledger.spend(L2 * L2, L1, L2)
    curve = ledger.rdp
    curve[:] = 0
    assert ledger.rdp.shape == (3,) and ledger.rdp.all()
    assert ledger.orders == (2, 4, 8)


@pytest.mark.parametrize(
    ("delta", "orders", "field"), [(0.0, DEFAULT_ORDERS, "delta"), (1e-5, [1.5, 2], "orders")]
)
def test_a_ledger_refuses_a_bad_delta_or_orders(
    delta: float, orders: list[float], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        PrivacyLedger(delta, orders)

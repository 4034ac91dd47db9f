"""The Skellam mechanism: noise that sums to the planned variance, and sensitivity after rounding.

The statistical tests draw from fixed seeds over examples Hypothesis picks
deterministically (``derandomize=True``), so each run repeats the same draws;
their tolerances (6 standard errors, p-values above 1e-6) would also hold for
almost every other seed, and a control shows the same tests catch noise of
the wrong variance.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from tessera.crypto import Ring, encode
from tessera.privacy import sensitivity, skellam_noise

SEED = 20211011  # fixed: the draws below are the same on every run
DRAWS = 40_000  # coordinates per sample: one model-sized vector of noise
STATISTICAL = settings(max_examples=20, deadline=None, derandomize=True, database=None)
VARIANCES = st.floats(min_value=0.5, max_value=2_000.0)


def summed_noise(variance: float, planned: int, included: int, seed: int) -> npt.NDArray[np.int64]:
    """What the decoded total holds: ``included`` contributors' ``Sk(variance / planned)``."""
    rng = np.random.default_rng([seed, planned, included])
    total = np.zeros(DRAWS, dtype=np.int64)
    for _ in range(included):
        total += skellam_noise(rng, variance / planned, DRAWS)
    return total


def assert_moments(sample: npt.NDArray[np.int64], variance: float) -> None:
    """Mean 0 and variance ``variance``, each within 6 standard errors.

    The symmetric Skellam of variance ``v`` has every even cumulant ``v``, so
    its fourth central moment is ``3 v**2 + v`` and the sample variance has
    standard error ``sqrt((2 v**2 + v) / n)``.
    """
    n = sample.shape[0]
    assert abs(float(sample.mean())) <= 6 * math.sqrt(variance / n)
    spread = 6 * math.sqrt((2 * variance**2 + variance) / n)
    assert abs(float(sample.var(ddof=1)) - variance) <= spread


def skellam_fit(sample: npt.NDArray[np.int64], variance: float) -> float:
    """Chi-square p-value of ``sample`` against the exact ``Sk(variance)`` (scipy's pmf).

    Bins are single integers where at least 20 draws are expected, and the two
    tails pooled beyond them, so every bin expects enough for the chi-square.
    """
    exact = stats.skellam(variance / 2, variance / 2)
    n = sample.shape[0]
    reach = math.ceil(5 * math.sqrt(variance))
    while n * exact.pmf(reach) < 20:
        reach -= 1
    edges = np.arange(-reach, reach + 1)
    observed = [np.sum(sample < -reach), *(np.sum(sample == k) for k in edges)]
    observed.append(np.sum(sample > reach))
    expected = [exact.cdf(-reach - 1), *exact.pmf(edges), exact.sf(reach)]
    chi2 = stats.chisquare(np.array(observed), n * np.array(expected) / sum(expected))
    return float(chi2.pvalue)


# -- the noise -------------------------------------------------------------


@STATISTICAL
@given(variance=VARIANCES, planned=st.integers(1, 12))
def test_contributors_noise_sums_to_the_planned_variance(variance: float, planned: int) -> None:
    assert_moments(summed_noise(variance, planned, planned, SEED), variance)


@STATISTICAL
@given(variance=VARIANCES, planned=st.integers(2, 12))
def test_contributors_noise_sums_to_one_skellam_of_the_total(variance: float, planned: int) -> None:
    total = summed_noise(variance, planned, planned, SEED)
    alone = skellam_noise(np.random.default_rng([SEED, 0]), variance, DRAWS)
    assert stats.ks_2samp(total, alone).pvalue > 1e-6
    assert skellam_fit(total, variance) > 1e-6


@STATISTICAL
@given(variance=VARIANCES, planned=st.integers(2, 12), data=st.data())
def test_dropouts_leave_a_skellam_of_the_included_share(
    variance: float, planned: int, data: st.DataObject
) -> None:
    included = data.draw(st.integers(1, planned - 1), label="included")
    total = summed_noise(variance, planned, included, SEED)
    left = variance * included / planned
    assert_moments(total, left)
    assert skellam_fit(total, left) > 1e-6


def test_the_statistical_checks_catch_noise_of_the_wrong_variance() -> None:
    """A control: 10% too much noise fails the moments and the fit; 25% fails the KS test."""
    total = summed_noise(400.0, 8, 8, SEED)
    with pytest.raises(AssertionError):
        assert_moments(total, 440.0)
    assert skellam_fit(total, 440.0) < 1e-6
    too_much = skellam_noise(np.random.default_rng([SEED, 1]), 500.0, DRAWS)
    assert stats.ks_2samp(total, too_much).pvalue < 1e-6


def test_noise_is_int64_and_repeats_with_its_seed() -> None:
    one = skellam_noise(np.random.default_rng(SEED), 50.0, 1000)
    again = skellam_noise(np.random.default_rng(SEED), 50.0, 1000)
    assert one.dtype == np.int64 and one.shape == (1000,)
    assert np.array_equal(one, again)
    assert skellam_noise(np.random.default_rng(SEED), 50.0, 0).shape == (0,)


def test_no_variance_is_no_noise() -> None:
    zeros = skellam_noise(np.random.default_rng(SEED), 0.0, 7)
    assert zeros.dtype == np.int64 and not zeros.any()


@pytest.mark.parametrize("variance", [-1.0, math.nan, math.inf, True, "1"])
def test_a_variance_that_is_not_finite_and_non_negative_is_refused(variance: object) -> None:
    with pytest.raises(ValueError, match="variance"):
        skellam_noise(np.random.default_rng(SEED), variance, 3)  # type: ignore[arg-type]


def test_a_bad_size_or_generator_is_refused() -> None:
    with pytest.raises(ValueError, match="size"):
        skellam_noise(np.random.default_rng(SEED), 1.0, -1)
    with pytest.raises(TypeError, match="Generator"):
        skellam_noise(np.random.RandomState(SEED), 1.0, 3)  # type: ignore[arg-type]


# -- sensitivity -----------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    dim=st.integers(1, 300),
    clip=st.floats(0.0, 50.0),
    frac_bits=st.integers(0, 20),
    fill=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_bounds_hold_after_stochastic_rounding(
    dim: int, clip: float, frac_bits: int, fill: float, seed: int
) -> None:
    """A random vector of norm ``<= clip``, encoded as a contributor encodes it."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(dim)
    norm = float(np.linalg.norm(v))
    v *= clip * fill / norm if norm > 0 else 0.0
    assert float(np.linalg.norm(v)) <= clip * (1 + 1e-12)
    ring = Ring(bits=64, frac_bits=frac_bits)
    x = encode(v, ring, rng).view(np.int64)
    l1, l2 = sensitivity(clip * (1 + 1e-12), 2.0**frac_bits, dim)
    assert float(np.linalg.norm(x)) <= l2
    assert float(np.abs(x).sum()) <= l1


def test_the_l1_bound_is_attained_when_every_coordinate_rounds_up() -> None:
    """Every coordinate a hair above 3 rounding up to 4: ``||x||_1`` meets the bound."""
    dim, scale = 16, 1.0
    y = np.full(dim, 3 + 1e-9)
    l1, l2 = sensitivity(float(np.linalg.norm(y)), scale, dim)
    x = np.ceil(y)  # one possible outcome of stochastic rounding
    assert float(np.abs(x).sum()) == pytest.approx(l1, rel=1e-8)
    assert float(np.linalg.norm(x)) <= l2


@given(clip=st.floats(0.0, 1e6), scale=st.floats(1.0, 2.0**40), dim=st.integers(1, 10**8))
def test_the_integer_l1_bound_never_beats_cauchy_schwarz_here(
    clip: float, scale: float, dim: int
) -> None:
    """Why ``sensitivity`` drops ``L2**2`` from the min: this L2 is at least ``sqrt(dim)``."""
    l1, l2 = sensitivity(clip, scale, dim)
    assert l2 >= math.sqrt(dim)
    assert l1 == math.sqrt(dim) * l2 <= l2 * l2 * (1 + 1e-12)


def test_sensitivity_of_a_known_case() -> None:
    assert sensitivity(1.0, 2.0**4, 100) == (10 * 26.0, 26.0)


@pytest.mark.parametrize(
    ("clip", "scale", "dim", "field"),
    [
        (-1.0, 1.0, 1, "clip"),
        (math.inf, 1.0, 1, "clip"),
        (1.0, 0.0, 1, "scale"),
        (1.0, math.nan, 1, "scale"),
        (1.0, 1.0, 0, "dim"),
        (1.0, 1.0, 2.0, "dim"),
        (1.0, 1.0, True, "dim"),
    ],
)
def test_sensitivity_refuses_what_bounds_nothing(
    clip: float, scale: float, dim: int, field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        sensitivity(clip, scale, dim)

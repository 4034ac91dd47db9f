"""A private job's statistics rounds are releases like its training rounds: each node
scales its statistics vector down to the job's bounds and adds its share of the noise;
the total, scaled back, is the sum of the (scaled-down) vectors plus Skellam noise of
the included nodes' summed variance; the round is spent in the job's ledger."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tessera.data.statistics import StatisticsPlan
from tessera.privacy import calibrate, sensitivity, skellam_noise
from tessera.protocol.noise import PrivacyParams, private_statistics
from tessera.runtime.sim.statistics import secure_vector_totals

CLIP, BOUND, N = 5.0, 200.0, 60


def params(epsilon: float = 3.0, rounds: int = 10) -> PrivacyParams:
    l1, l2 = sensitivity(math.sqrt(CLIP**2 + 3), 2.0**16, 64)
    return PrivacyParams(
        epsilon=epsilon,
        delta=1e-5,
        variance=calibrate(epsilon, 1e-5, rounds, l1, l2),
        frac_bits=16,
        l1=l1,
        l2=l2,
        statistics_clip=BOUND,
    )


@pytest.fixture(scope="module")
def tables() -> list[pd.DataFrame]:
    rng = np.random.default_rng(5)
    return [
        pd.DataFrame({"score": rng.normal(6, 1, size=int(rng.integers(3, 12)))}) for _ in range(N)
    ]


def test_a_private_statistics_total_is_the_scaled_sum_plus_the_included_noise(
    tables: list[pd.DataFrame],
) -> None:
    plan = StatisticsPlan.of(pd.concat(tables), numeric=["score"])
    vectors = np.stack([plan.vector(t) for t in tables])
    privacy = params()
    out = secure_vector_totals(plan, vectors, privacy=privacy, clip=CLIP, seed=3)
    assert len(out.included) == N
    # What each node shares, scaled back: its vector, or that scaled down to BOUND.
    shared = np.stack([private_statistics(v, bound=BOUND, clip=CLIP) for v in vectors])
    expected = shared.sum(axis=0) * (BOUND / CLIP)
    assert any(np.linalg.norm(v) > BOUND for v in vectors)  # some nodes were scaled down
    assert all(np.linalg.norm(s) <= CLIP for s in shared)
    noise = (out.total - expected) * (CLIP / BOUND) * 2.0**16  # in ring units
    variance = privacy.share(N) * N
    assert noise.var() == pytest.approx(variance, rel=0.5)  # few words: a loose check
    reference = skellam_noise(np.random.default_rng(1), variance, 5000)
    assert stats.ks_2samp(np.rint(noise), reference).pvalue > 1e-3
    assert out.spent == (pytest.approx(variance),)  # the job's ledger counts this round
    # The noise's scale in the totals' units: BOUND / CLIP times a training total's.
    std = math.sqrt(variance) / 2.0**16 * (BOUND / CLIP)
    counted = out.totals.numeric["score"]
    true_count = sum(len(t) for t in tables)
    assert abs(counted.count - shared_count(plan, shared)) < 6 * std
    assert counted.count >= 0 and true_count > 0


def shared_count(plan: StatisticsPlan, shared: np.ndarray) -> float:
    """The count word of the scaled-down vectors' sum, in the totals' units."""
    return float(plan.totals(shared.sum(axis=0) * (BOUND / CLIP)).numeric["score"].count)


def test_without_privacy_the_total_is_exact(tables: list[pd.DataFrame]) -> None:
    plan = StatisticsPlan.of(pd.concat(tables), numeric=["score"])
    vectors = np.stack([plan.vector(t) for t in tables])
    out = secure_vector_totals(plan, vectors, seed=3)
    assert out.totals.numeric["score"].count == sum(len(t) for t in tables)
    assert out.spent == ()


def test_noise_never_reads_as_negative_counts() -> None:
    plan = StatisticsPlan(numeric=("score",), categorical=(("g", ("a", "b")),))
    noisy = np.full(plan.length, -3.0)
    totals = plan.totals(noisy)
    assert totals.numeric["score"].count == 0 and totals.numeric["score"].missing == 0
    assert totals.categorical["g"].counts == {"a": 0, "b": 0}


def test_tessera_runs_fit_releases_noised_statistics_and_its_ledger_counts_them() -> None:
    from tessera.config import PrivacySection
    from tessera.jobs.prepared import prepare_job
    from tessera.runtime.sim.job import simulate
    from tessera.runtime.sim.statistics import totals_for
    from tessera.testing import example_config

    base = example_config("exam.toml")  # 65 schools: statistics rounds over every node
    cfg = base.model_copy(
        update={
            "privacy": PrivacySection(epsilon=8.0),
            "federation": base.federation.model_copy(update={"rounds": 3}),
            "baseline": base.baseline.model_copy(update={"enabled": False}),
        }
    )
    job = prepare_job(cfg, totals_of=totals_for(cfg, secure=True))
    assert job.statistics is not None and job.statistics.rounds >= 1
    assert len(job.statistics_lengths) == len(job.statistics_spent) == job.statistics.rounds
    exact = cfg.model_copy(update={"privacy": PrivacySection(epsilon=8.0, statistics=False)})
    plain = prepare_job(exact, totals_of=totals_for(exact, secure=True))
    assert plain.statistics_lengths == () and plain.statistics_spent == ()
    noised = simulate(job, secure=True)
    released = simulate(plain, secure=True)
    # The same three training rounds cost more after the statistics rounds' releases,
    # and the whole job stays within its budget.
    assert noised.rounds[0].epsilon > released.rounds[0].epsilon
    assert noised.rounds[-1].epsilon <= 8.0

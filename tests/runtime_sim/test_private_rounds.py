"""Distributed differential privacy in secure rounds: the noise the contributors add sums to
the intended Skellam distribution, dropouts included, and the budget is spent as counted."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from tessera.crypto.fixedpoint import Ring, decode, encode
from tessera.crypto.keys import NodeKeys
from tessera.ids import JobId, NodeId
from tessera.privacy import PrivacyLedger, calibrate, sensitivity, skellam_noise
from tessera.protocol import RoundParams, make_strategy
from tessera.protocol.noise import PrivacyParams, contributor_noise, noise_rng, noisy
from tessera.protocol.secure_coordinator import SecureParams
from tessera.protocol.topology import TreeParams
from tessera.runtime.sim import DeviceModel, RoundStats, Simulation
from tessera.runtime.sim.secure import build_secure
from tessera.testing import TableTrainer

P = 5
CLIP = 10.0


def privacy(
    epsilon: float, rounds: int, *, stop: bool = True, margin: float = 0.1
) -> PrivacyParams:
    l1, l2 = sensitivity(math.sqrt(CLIP**2 + 3), 2.0**16, P + 3)
    return PrivacyParams(
        epsilon=epsilon,
        delta=1e-5,
        variance=calibrate(epsilon, 1e-5, rounds, l1, l2),
        frac_bits=16,
        l1=l1,
        l2=l2,
        dropout_margin=margin,
        stop=stop,
    )


@pytest.mark.parametrize("bits", [32, 64])
def test_the_included_contributors_noise_sums_to_skellam_of_their_variance(bits: int) -> None:
    """50 contributors each add their share to a zero vector in the ring; 40 are included
    (10 dropped): the decoded total is Skellam of 40 shares' variance, word for word."""
    params = privacy(3.0, 10)
    cohort, included, words = 50, 40, 4000
    ring = Ring(bits=bits, frac_bits=16, terms=cohort)
    assert params.ring(bound=CLIP, cohort=cohort).bits == 32  # the smallest that holds it
    total = np.zeros(words, ring.dtype)
    for i in range(included):
        rng = noise_rng(NodeKeys.from_seed(bytes([i]) * 32), "j", 0)
        zero = encode(np.zeros(words), ring, np.random.default_rng(i))
        total = total + noisy(zero, ring, contributor_noise(params, cohort, rng, words))
    noise = np.rint(decode(total, ring) * 2.0**ring.frac_bits).astype(np.int64)  # ring units
    variance = params.share(cohort) * included
    reference = skellam_noise(np.random.default_rng(99), variance, words)
    assert stats.ks_2samp(noise, reference).pvalue > 1e-3
    assert noise.var() == pytest.approx(variance, rel=0.1)
    assert abs(noise.mean()) < 5 * math.sqrt(variance / words)


def test_a_contributors_noise_is_its_own_secret_and_repeatable() -> None:
    params = privacy(3.0, 10)
    a, b = NodeKeys.from_seed(bytes(32)), NodeKeys.from_seed(bytes([1]) * 32)
    draw = lambda keys, round: contributor_noise(params, 20, noise_rng(keys, "j", round), 8)  # noqa: E731
    assert np.array_equal(draw(a, 0), draw(a, 0))  # the simulator's replay adds the same
    assert not np.array_equal(draw(a, 0), draw(b, 0))
    assert not np.array_equal(draw(a, 0), draw(a, 1))


def run_private(
    n: int, rounds: int, params: PrivacyParams, dropout: float = 0.0
) -> list[RoundStats]:
    samples = np.random.default_rng(1).integers(1, 30, size=n).astype(np.int64)
    nodes = [NodeId(f"node-{i:06d}") for i in range(n)]
    coordinator, machines = build_secure(
        nodes,
        params=RoundParams(job_id=JobId("dp"), rounds=rounds, round_timeout=1e4),
        secure=SecureParams(
            tree=TreeParams(k=3, group_size=5, fan_in=3, min_group=1, backups=1),
            clip=CLIP,
            max_weight=float(samples.max()),
            privacy=params,
        ),
        initial_weights=np.zeros(P, np.float32),
        strategy=make_strategy("fedavg"),
        seed=0,
    )
    out: list[RoundStats] = []
    Simulation(
        coordinator,
        nodes,
        TableTrainer(samples, dim=P, seed=0),
        DeviceModel.sample(n, dropout=dropout, speed_sigma=0.0, samples_per_second=50, seed=0),
        samples,
        local_epochs=1,
        seed=0,
        on_round=out.append,
        machines=machines,
    ).run()
    return out


def test_a_private_job_spends_its_budget_round_by_round_and_no_more() -> None:
    """Every contributor in: each round releases more noise than provisioned, so the
    job runs its rounds and ends under its budget, epsilon growing as the ledger says."""
    params = privacy(8.0, 3)
    rounds = run_private(30, 3, params)
    spent = [r.closed.epsilon for r in rounds]
    assert len(spent) == 3 and all(e is not None for e in spent)
    assert spent == sorted(spent) and spent[-1] <= 8.0
    ledger = PrivacyLedger(1e-5)
    for r in rounds:
        ledger.spend(params.share(30) * r.closed.participants, params.l1, params.l2)
    assert spent[-1] == pytest.approx(ledger.epsilon())


def test_a_job_whose_contributors_drop_out_stops_before_overspending() -> None:
    """Half of each cohort gone, past the provisioned margin: each round holds less noise
    than planned, so the budget runs out before the job's rounds; the job stops without
    releasing a round past it ("warn" releases them, and says what they spent)."""
    params = privacy(4.0, 6, margin=0.0)
    rounds = run_private(30, 6, params, dropout=0.5)
    assert len(rounds) < 6
    released = [r.closed.epsilon for r in rounds if r.closed.epsilon is not None]
    assert max(released) <= 4.0
    warned = run_private(30, 6, privacy(4.0, 6, margin=0.0, stop=False), dropout=0.5)
    assert len(warned) == 6 and warned[-1].closed.epsilon > 4.0


def test_a_private_round_averages_over_the_exact_count_of_contributors() -> None:
    """Each contributor weighs 1 and the total is divided by how many are included (the
    committed groups say it exactly), not by the noisy weight word: the model moves by
    the contributors' mean update plus noise of the calibrated size."""
    n, params = 200, privacy(50.0, 1)
    rounds = run_private(n, 1, params)
    closed = rounds[0].closed
    assert closed.participants == n and closed.num_samples == 0  # weights are not counted
    trainer = TableTrainer(np.random.default_rng(1).integers(1, 30, size=n), dim=P, seed=0)
    clipped = trainer.table  # norms are under CLIP: nothing clipped
    expected = clipped.mean(axis=0)
    noise = math.sqrt(params.share(n) * n) / 2.0**16 / n  # per word of the mean
    assert np.all(np.abs(closed.weights - expected) < 6 * noise + 1e-3)

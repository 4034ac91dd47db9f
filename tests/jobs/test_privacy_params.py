"""A private job's calibration spans its statistics rounds too: each is a release like a
training round's, unless the job releases its statistics exact."""

from __future__ import annotations

import pytest

from tessera.config import PrivacySection
from tessera.jobs.privacy import privacy_params_of
from tessera.privacy import PrivacyLedger
from tessera.testing import example_config


def test_statistics_rounds_are_budgeted_as_training_rounds() -> None:
    cfg = example_config().model_copy(update={"privacy": PrivacySection(epsilon=3.0)})
    rounds = cfg.federation.rounds
    without = privacy_params_of(cfg, clip_norm=5.0, n_weights=200)
    with_two = privacy_params_of(cfg, clip_norm=5.0, n_weights=200, statistics=(300, 500))
    assert without is not None and with_two is not None
    assert without.statistics_clip is None and with_two.statistics_clip == 100.0
    assert with_two.variance > without.variance  # two more releases: more noise each
    ledger = PrivacyLedger(1e-5)  # every release, statistics first, spends within epsilon
    for _ in range(rounds + 2):
        ledger.spend(with_two.variance, with_two.l1, with_two.l2)
    assert ledger.epsilon() == pytest.approx(3.0, rel=0.01)
    assert ledger.epsilon() <= 3.0
    # Longer statistics vectors than the model: the sensitivity bounds them too.
    assert with_two.l1 > without.l1


def test_exact_statistics_leave_the_calibration_alone() -> None:
    privacy = PrivacySection(epsilon=3.0, statistics=False)
    cfg = example_config().model_copy(update={"privacy": privacy})
    exact = privacy_params_of(cfg, clip_norm=5.0, n_weights=200, statistics=(300,))
    plain = privacy_params_of(cfg, clip_norm=5.0, n_weights=200)
    assert exact == plain and exact is not None and exact.statistics_clip is None

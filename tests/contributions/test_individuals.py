"""Individuals scored from the intersections of their groups, on known contributions."""

from __future__ import annotations

import numpy as np

from tessera.contributions.individuals import ContributionLedger


def simulate(
    n: int, bad: set[int], rounds: int, group_size: int, noise: float, seed: int
) -> ContributionLedger:
    """Each round: random groups; a group's value is its members' true contributions
    (1 each, -2 for a bad one) plus noise."""
    rng = np.random.default_rng(seed)
    truth = np.where(np.isin(np.arange(n), list(bad)), -2.0, 1.0)
    ledger = ContributionLedger()
    for _ in range(rounds):
        order = rng.permutation(n)
        groups = {f"g{k}": order[k : k + group_size] for k in range(0, n, group_size)}
        values = {g: float(truth[m].sum() + rng.normal(0, noise)) for g, m in groups.items()}
        ledger.add_round(values, {g: [f"n{i}" for i in m] for g, m in groups.items()})
    return ledger


def test_harmful_contributors_are_found_from_their_groups_alone() -> None:
    bad = set(range(0, 100, 5))  # 20 of 100
    ledger = simulate(100, bad, rounds=40, group_size=8, noise=1.0, seed=0)
    flagged = ledger.flagged(min_evidence=10, threshold=2.0)
    found = {int(n[1:]) for n in flagged}
    precision = len(found & bad) / max(len(found), 1)
    recall = len(found & bad) / len(bad)
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)
    scores = ledger.scores()
    assert np.mean([scores[f"n{i}"] for i in bad]) < np.mean(
        [scores[f"n{i}"] for i in range(100) if i not in bad]
    )


def test_no_contributor_is_flagged_without_enough_evidence() -> None:
    ledger = simulate(100, set(range(0, 100, 5)), rounds=3, group_size=8, noise=1.0, seed=1)
    assert ledger.flagged(min_evidence=10, threshold=2.0) == {}


def test_an_honest_federation_flags_almost_nobody() -> None:
    ledger = simulate(100, set(), rounds=40, group_size=8, noise=1.0, seed=2)
    assert len(ledger.flagged(min_evidence=10, threshold=3.0)) <= 2

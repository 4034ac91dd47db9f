"""Distributed differential privacy: the Skellam mechanism and its accountant (pure math).

What is protected: one contributor's whole update in a round, against
whoever sees the decoded total. Neighbouring inputs add or remove one
contributor (contributor-level DP, not record-level): the sum moves by that
contributor's quantized vector, whose sensitivity ``sensitivity`` bounds.
Every round is counted for every contributor, as if each took part in all.

What is not: no amplification by sampling. Cohorts are drawn from a public
seed, so who is in a round is no secret and subsampling buys nothing; the
ledger composes each round's full cost. Nor does the noise protect a
contributor from parties that learn its noise or its vector otherwise: the
guarantee assumes the secure aggregation hides each vector and that the
included contributors really added their noise.

Dropouts reduce the noise: each contributor adds ``Sk(variance / n)`` for the
``n`` it expects, and only the ``m`` included reach the total, which then
holds exactly ``Sk(variance * m / n)``. The caller accounts with the noise
actually included, ``variance_per_contributor * included``, never with the
plan.

``skellam_noise`` and ``sensitivity`` (``skellam``) are the mechanism;
``skellam_rdp``, ``epsilon_of``, ``PrivacyLedger`` and ``calibrate``
(``accountant``) are its cost, in Rényi DP converted to ``(epsilon, delta)``
by dp-accounting; ``gaussian_epsilon`` is dp-accounting's own answer for the
continuous Gaussian mechanism, to report beside ours.
"""

from tessera.privacy.accountant import (
    DEFAULT_ORDERS,
    PrivacyLedger,
    calibrate,
    epsilon_of,
    gaussian_epsilon,
    skellam_rdp,
)
from tessera.privacy.skellam import sensitivity, skellam_noise

__all__ = [
    "DEFAULT_ORDERS",
    "PrivacyLedger",
    "calibrate",
    "epsilon_of",
    "gaussian_epsilon",
    "sensitivity",
    "skellam_noise",
    "skellam_rdp",
]

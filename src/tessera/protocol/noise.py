"""Distributed differential privacy inside secure aggregation: who adds what noise, and
what the coordinator counts.

A job with ``[privacy]`` (``SecureParams.privacy``) has each contributor add
integer Skellam noise to its quantized vector, after rounding and before
splitting it into shares (``noisy``): masking randomness cancels in the total,
this noise does not. A sum of Skellam variables is Skellam with the summed
variance, so the total carries exactly the noise of the contributors it
includes. Each adds ``share(cohort)``: the round's variance over the cohort
less the share of it the job provisions to drop out, so a round that keeps
at least that share releases at least ``variance``.

The noise lives in ring units at a fixed scale (``frac_bits``), which the
signed job fixes: a coordinator choosing a finer scale would shrink the noise
in real units, so a contributor refuses any other. Each contributor derives
its share from the round's public cohort, never from the coordinator's word,
and draws it from coins keyed by its own key (``noise_seed``): secret, and
repeatable in the simulator's replay. The coordinator's ``Budget`` spends the
noise each released round actually held (fewer included contributors, less
noise) with ``tessera.privacy``'s accountant, and stops the job before a round
would spend past the budget (or only reports it: ``stop`` false).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from tessera.crypto.fixedpoint import Ring, Words, choose_ring
from tessera.crypto.keys import NodeKeys
from tessera.errors import ConfigError
from tessera.privacy import PrivacyLedger, skellam_noise

#: How many standard deviations of its noise a contributor's words are given room for:
#: a Skellam word past 12 of them has probability under 1e-32.
NOISE_TAILS = 12.0


@dataclass(frozen=True, kw_only=True, slots=True)
class PrivacyParams:
    """A job's distributed differential privacy (``[privacy]``, calibrated when prepared).

    ``variance``: the Skellam variance of a round's total per word, in ring units
    at ``frac_bits``, when the provisioned share of the cohort is included;
    ``l1``, ``l2``: one contributor's sensitivity in those units; ``stop``: stop
    the job before a round that would spend past ``epsilon`` (else report it).
    """

    epsilon: float
    delta: float
    variance: float
    frac_bits: int
    l1: float
    l2: float
    dropout_margin: float = 0.1
    stop: bool = True
    # The L2 bound on a node's statistics vector in a statistics round (``[privacy]
    # statistics_clip``); None: the job has no statistics rounds to make private.
    statistics_clip: float | None = None

    def __post_init__(self) -> None:
        if not (self.epsilon > 0 and 0 < self.delta < 1):
            raise ConfigError("privacy", "epsilon must be positive and delta in (0, 1)")
        if not (self.variance > 0 and math.isfinite(self.variance)):
            raise ConfigError("privacy", "the noise variance must be positive and finite")
        if not 0 <= self.dropout_margin < 1:
            raise ConfigError("privacy.dropout_margin", "must be in [0, 1)")
        if self.statistics_clip is not None and not self.statistics_clip > 0:
            raise ConfigError("privacy.statistics_clip", "must be positive")

    def share(self, cohort: int) -> float:
        """The noise variance each of ``cohort`` contributors adds."""
        return self.variance / max(cohort * (1 - self.dropout_margin), 1.0)

    def ring(self, *, bound: float, cohort: int) -> Ring:
        """A ring whose ``cohort`` terms, each at most ``bound`` plus its noise, cannot
        overflow, at the job's fixed scale."""
        room = NOISE_TAILS * math.sqrt(self.share(cohort)) / 2.0**self.frac_bits
        ring = choose_ring(bound=bound + room, terms=cohort, min_frac_bits=self.frac_bits)
        return Ring(bits=ring.bits, frac_bits=self.frac_bits, terms=ring.terms)


def private_statistics(
    vector: npt.NDArray[np.float64], *, bound: float, clip: float
) -> npt.NDArray[np.float64]:
    """A node's statistics vector as a private job shares it: scaled down to L2 norm
    ``bound`` if longer, then by ``clip / bound``, so its norm is at most the update's
    ``clip`` and its noise and cost are a training round's. The total, times
    ``bound / clip``, is then the sum of the (scaled-down) vectors plus noise."""
    norm = float(np.sqrt(np.dot(vector, vector)))
    factor = clip / bound
    if norm > bound:
        factor *= bound * (1 - 1e-9) / norm
    out: npt.NDArray[np.float64] = vector * factor
    return out


def noise_seed(keys: NodeKeys, job_id: str, round: int) -> int:
    """The seed of a contributor's noise coins in ``round``: secret (keyed by its own
    key), repeatable."""
    context = b"dp-noise\x00" + job_id.encode() + b"\x00" + str(round).encode()
    return int.from_bytes(keys.draw(context), "big")


def noise_rng(keys: NodeKeys, job_id: str, round: int) -> np.random.Generator:
    """A contributor's noise coins in ``round`` as one generator (``noise_seed``)."""
    return np.random.default_rng(noise_seed(keys, job_id, round))


def noisy(words: Words, ring: Ring, noise: npt.NDArray[np.int64]) -> Words:
    """``words`` plus integer ``noise``, in the ring (wrapping, as shares add)."""
    # Two's complement is the residue mod 2^64; a narrower cast keeps it mod 2^b.
    as_ring: Words = noise.astype(np.int64).view(np.uint64).astype(ring.dtype)
    out: Words = words + as_ring  # unsigned words wrap modulo 2^b
    return out


def contributor_noise(
    privacy: PrivacyParams, cohort: int, rng: np.random.Generator, size: int
) -> npt.NDArray[np.int64]:
    """One contributor's noise for a round of ``cohort`` contributors."""
    return skellam_noise(rng, privacy.share(cohort), size)


@dataclass
class Budget:
    """The coordinator's privacy ledger: the noise of every released round, spent."""

    privacy: PrivacyParams
    spent: list[float] = field(default_factory=list)  # each released round's variance

    def __post_init__(self) -> None:
        self._ledger = PrivacyLedger(self.privacy.delta)
        for variance in self.spent:
            self._ledger.spend(variance, self.privacy.l1, self.privacy.l2)

    def spend(self, cohort: int, included: int) -> float:
        """A round of ``cohort`` released with ``included`` contributors' noise; epsilon now."""
        variance = self.privacy.share(cohort) * included
        self.spent.append(variance)
        self._ledger.spend(variance, self.privacy.l1, self.privacy.l2)
        return self._ledger.epsilon()

    @property
    def epsilon(self) -> float:
        return self._ledger.epsilon() if self.spent else 0.0

    def spent_by_next(self) -> float:
        """Epsilon after one more round that releases the provisioned noise."""
        return self._ledger.epsilon_if(self.privacy.variance, self.privacy.l1, self.privacy.l2)

    def refusal(self, cohort: int, included: int) -> str | None:
        """Why a round of ``cohort`` holding ``included`` contributors' noise may not be
        released (it would spend past the budget, fewer contributors adding less noise),
        or None; a budget that only warns refuses nothing."""
        if not self.privacy.stop:
            return None
        variance = self.privacy.share(cohort) * included
        after = (
            self._ledger.epsilon_if(variance, self.privacy.l1, self.privacy.l2)
            if included
            else math.inf
        )
        if after <= self.privacy.epsilon:
            return None
        return (
            f"privacy budget: a round of {included} of {cohort} contributors would spend "
            f"epsilon {after:.3g} > {self.privacy.epsilon:g}; stopped at {self.epsilon:.3g}"
        )

    def exhausted(self) -> str | None:
        """Why the next round may not run (it would spend past the budget), or None."""
        if not self.privacy.stop:
            return None
        after = self.spent_by_next()
        if after <= self.privacy.epsilon:
            return None
        return (
            f"privacy budget: one more round would spend epsilon {after:.3g} "
            f"> {self.privacy.epsilon:g} (delta {self.privacy.delta:g}); "
            f"stopped at epsilon {self.epsilon:.3g}"
        )

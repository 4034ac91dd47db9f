"""What each group of a round brought: leave-one-group-out and a Shapley estimate over
group sums, never over an individual update.

A round's disclosed leaf-group sums (each the weighted sum of at least the
job's floor of contributors' updates) are the players; a coalition's update
is the weighted mean of its groups' sums, applied to the model the round
started from, and its utility is the AI provider's validation score of the
result (``utility``: injected, so any metric and any strategy fit). With
``U(S)`` that score:

- leave-one-group-out: ``U(all) - U(all without g)``;
- Shapley, by truncated Monte Carlo over permutations (Ghorbani & Zou 2019;
  in federated rounds, Liu et al., "GTG-Shapley", 2022): each permutation
  adds the groups one by one and credits each with its marginal gain; once
  a prefix is within ``truncation`` of ``U(all)`` the rest of that
  permutation is credited nothing (its groups barely move the score), which
  is what makes it affordable; and each permutation is paired with its
  reverse (antithetic sampling), halving the variance for the same cost.

Both are exact on what they are given, and cost ``1 + G`` and about
``permutations * G`` utility calls for ``G`` groups.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: A coalition's mean update -> the validation score of the model it moves to.
Utility = Callable[[npt.NDArray[np.float64] | None], float]


@dataclass(frozen=True)
class GroupUpdate:
    """One disclosed group sum: its name, members, summed weighted update and weight."""

    group: str
    members: tuple[str, ...]
    total: npt.NDArray[np.float64]  # the sum of the members' weighted updates
    weight: float  # the sum of their weights

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"group {self.group}: a disclosed sum has a positive weight")


class _Coalitions:
    """U(S) for sets of groups, each set's score computed once."""

    def __init__(self, groups: Sequence[GroupUpdate], utility: Utility) -> None:
        self.groups, self.utility = groups, utility
        self.calls = 0
        self._seen: dict[frozenset[int], float] = {}

    def __call__(self, members: frozenset[int]) -> float:
        if members not in self._seen:
            self.calls += 1
            if not members:
                self._seen[members] = self.utility(None)
            else:
                total = sum(self.groups[i].total for i in members)
                weight = sum(self.groups[i].weight for i in members)
                self._seen[members] = self.utility(np.asarray(total) / weight)
        return self._seen[members]


def leave_one_out(groups: Sequence[GroupUpdate], utility: Utility) -> dict[str, float]:
    """Each group's ``U(all) - U(all but it)``."""
    u = _Coalitions(groups, utility)
    everyone = frozenset(range(len(groups)))
    full = u(everyone)
    return {g.group: full - u(everyone - {i}) for i, g in enumerate(groups)}


def shapley(
    groups: Sequence[GroupUpdate],
    utility: Utility,
    *,
    permutations: int = 16,
    truncation: float = 0.0,
    rng: np.random.Generator,
) -> dict[str, float]:
    """Each group's Shapley value, estimated from ``permutations`` (antithetic pairs)
    truncated once a prefix is within ``truncation`` of ``U(all)``."""
    if permutations < 1:
        raise ValueError("a Shapley estimate needs at least one permutation")
    u = _Coalitions(groups, utility)
    n = len(groups)
    full = u(frozenset(range(n)))
    credit = np.zeros(n)
    drawn = 0
    while drawn < permutations:
        order = rng.permutation(n)
        for walk in (order, order[::-1])[: min(2, permutations - drawn)]:
            prefix: frozenset[int] = frozenset()
            before = u(prefix)
            for i in walk:
                if abs(full - before) <= truncation and prefix:
                    break  # the rest of this walk moves the score by less than that
                prefix = prefix | {int(i)}
                after = u(prefix)
                credit[i] += after - before
                before = after
            drawn += 1
    return {g.group: float(credit[i] / drawn) for i, g in enumerate(groups)}

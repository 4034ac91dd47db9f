"""From groups' values to each contributor's: what the intersections of their groups say.

Every round reshuffles the leaf groups, so a contributor shares a group with
different others each time. Model a group's value in a round as the sum of its
members' own contributions (plus noise): ``v[g, r] ~ sum(c[i] for i in g)``.
Over many rounds the groups overlap in many ways, and the least-squares
solution of those equations (ridge-damped, so a contributor seen little is
pulled to 0 rather than guessed) scores each contributor, never from its own
update, only from sums of at least the job's floor of contributors. Values of
different rounds are put on one scale first (each round's divided by the
spread of its groups' values), since a round late in training moves the score
less than an early one.

A contributor is flagged once it has been in at least ``min_evidence`` valued
groups and its score lies more than ``threshold`` robust deviations (median
absolute deviation, scaled to a standard deviation) below the median score.
Its weight factor (reputation-weighted aggregation) falls with the same
deviations: 1 at or above the median, linearly down to ``MIN_RATING`` at the
flagging threshold; a contributor with less evidence keeps 1, since a few
rounds of noisy group values would otherwise decide who counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.linalg import lsqr

#: A median absolute deviation of normal scores is 0.6745 of their standard deviation.
_MAD_TO_STD = 1.4826
#: The weight factor of a contributor at the flagging threshold (not flagged yet).
MIN_RATING = 0.05


@dataclass
class ContributionLedger:
    """Every valued group of every round, and each contributor's score from them."""

    damping: float = 0.1
    rows: list[tuple[tuple[str, ...], float]] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)  # valued groups each was in

    def add_round(self, values: Mapping[str, float], members: Mapping[str, Sequence[str]]) -> None:
        """One round's group values (``group -> value``) and each group's members."""
        if not values:
            return
        spread = float(np.std(list(values.values())))
        scale = spread if spread > 0 else 1.0
        for group, value in values.items():
            who = tuple(members[group])
            self.rows.append((who, value / scale))
            for node in who:
                self.seen[node] = self.seen.get(node, 0) + 1

    def scores(self) -> dict[str, float]:
        """Each contributor's estimated contribution (the damped least-squares solution)."""
        nodes = sorted(self.seen)
        if not nodes:
            return {}
        column = {n: j for j, n in enumerate(nodes)}
        rows, cols, vals = [], [], []
        for i, (who, _) in enumerate(self.rows):
            for node in who:
                rows.append(i)
                cols.append(column[node])
                vals.append(1.0)
        a = csr_matrix((vals, (rows, cols)), shape=(len(self.rows), len(nodes)))
        b = np.array([v for _, v in self.rows])
        solution = lsqr(a, b, damp=self.damping)[0]
        return {n: float(solution[column[n]]) for n in nodes}

    def deviations(self) -> dict[str, tuple[float, float]]:
        """Each contributor's (score, robust deviations from the median score); empty
        while fewer than three are scored or the scores do not spread."""
        scores = self.scores()
        if len(scores) < 3:
            return {}
        values = np.array(list(scores.values()))
        median = float(np.median(values))
        spread = _MAD_TO_STD * float(np.median(np.abs(values - median)))
        if spread == 0:
            return {}
        return {node: (score, (score - median) / spread) for node, score in scores.items()}

    def ratings(self, *, min_evidence: int, threshold: float) -> dict[str, float]:
        """Each scored contributor's weight factor in [``MIN_RATING``, 1] (module docstring)."""
        out = {}
        for node, (_, deviations) in self.deviations().items():
            below = min(max(-deviations / threshold, 0.0), 1.0)
            enough = self.seen[node] >= min_evidence
            out[node] = 1.0 - (1.0 - MIN_RATING) * below if enough else 1.0
        return out

    def flagged(self, *, min_evidence: int, threshold: float) -> dict[str, str]:
        """Contributors whose score shows harm, with why: seen in at least
        ``min_evidence`` valued groups, and ``threshold`` robust deviations below the median."""
        out = {}
        for node, (score, deviations) in self.deviations().items():
            if self.seen[node] >= min_evidence and deviations < -threshold:
                out[node] = (
                    f"contribution score {score:.3g}: {-deviations:.1f} robust deviations below "
                    f"the median over {self.seen[node]} valued groups"
                )
        return out

"""The simulator's contribution indicator: each round's disclosed group sums valued on the
AI provider's validation data, each contributor scored from its groups over rounds.

It watches rounds (``simulate(on_groups=...)``), answers each with the
policy's verdicts (``ContributorsRated``: who is left out, how much the rest
weigh), and never sees an individual
update: only the leaf groups' sums the coordinator decoded (each of at least
the job's floor of contributors). A coalition of groups is worth the
validation loss of the model its mean update moves the round's starting model
to (``start + mean``: the server's plain step; a momentum or adaptive
strategy's own state is left out of the valuation), so an indicator needs no
strategy internals. Losses, not accuracies: they move with every update, where
an accuracy moves only when a prediction flips.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from tessera.contributions import ContributionLedger, GroupUpdate, leave_one_out, shapley
from tessera.ids import NodeId, Task
from tessera.jobs.prepared import PreparedJob
from tessera.protocol.effects import GroupSum
from tessera.protocol.events import ContributorsRated
from tessera.training.evaluate import predict
from tessera.weights import Vector

#: Validation rows a utility call scores at most (drawn once, from the job's seed).
MAX_VALIDATION_ROWS = 1000


def validation_loss(
    job: PreparedJob, x: npt.NDArray[np.float32], y: npt.NDArray[np.generic], weights: Vector
) -> float:
    """The model's mean loss on (x, y): cross-entropy for a classifier, else squared error."""
    out = predict(job.spec, weights, x).astype(np.float64)
    if job.task is Task.CLASSIFICATION:
        shifted = out - out.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return float(-log_p[np.arange(len(y)), np.asarray(y, np.int64)].mean())
    return float(
        ((out.reshape(len(y), -1) - np.asarray(y, np.float64).reshape(len(y), -1)) ** 2).mean()
    )


@dataclass
class GroupValuer:
    """Values every round's groups (``method``), keeps each contributor's score and,
    by ``policy`` (``[contributions]``'s), answers each round with its verdicts."""

    job: PreparedJob
    method: str = "shapley"
    permutations: int = 8
    policy: str = "report"
    ledger: ContributionLedger = field(default_factory=ContributionLedger)
    rounds: list[dict[str, float]] = field(default_factory=list)  # each round's group values
    # node -> (the round whose valuation excluded it, why)
    excluded: dict[str, tuple[int, str]] = field(default_factory=dict)
    ratings: dict[str, float] = field(default_factory=dict)  # the last factors sent

    def __post_init__(self) -> None:
        rng = np.random.default_rng([self.job.config.job.seed, 0xC0])
        test = self.job.test
        rows = rng.permutation(len(test.y))[:MAX_VALIDATION_ROWS]
        self._x, self._y = test.x[rows], test.y[rows]
        self._rng = rng

    def __call__(
        self, round: int, groups: Sequence[GroupSum], start: Vector
    ) -> ContributorsRated | None:
        """Value ``round``'s groups; the verdicts the policy draws from all rounds so far
        (None: nothing new), for the coordinator to apply from the next round opened."""
        self._value(groups, start)
        return self._verdicts(round)

    def _value(self, groups: Sequence[GroupSum], start: Vector) -> None:
        updates = [
            GroupUpdate(g.group, g.members, g.update(len(start)), g.weight)
            for g in groups
            if g.weight > 0
        ]
        if len(updates) < 2:  # one group is the total itself: nothing to tell apart
            self.rounds.append({})
            return
        base = start.astype(np.float64)

        def utility(mean: npt.NDArray[np.float64] | None) -> float:
            weights = base if mean is None else base + mean
            return -validation_loss(self.job, self._x, self._y, weights.astype(np.float32))

        if self.method == "leave_one_out":
            values = leave_one_out(updates, utility)
        else:
            values = shapley(updates, utility, permutations=self.permutations, rng=self._rng)
        self.rounds.append(values)
        self.ledger.add_round(values, {u.group: u.members for u in updates})

    def _verdicts(self, round: int) -> ContributorsRated | None:
        if self.policy == "report":
            return None
        c = self.job.config.contributions
        assert c is not None
        evidence, threshold = c.min_evidence, c.threshold
        new = {
            NodeId(node): why
            for node, why in self.ledger.flagged(min_evidence=evidence, threshold=threshold).items()
            if node not in self.excluded
        }
        self.excluded |= {node: (round, why) for node, why in new.items()}
        changed: dict[NodeId, float] = {}
        if self.policy == "reputation":
            ratings = self.ledger.ratings(min_evidence=evidence, threshold=threshold)
            for node, factor in ratings.items():
                if node not in self.excluded and self.ratings.get(node, 1.0) != factor:
                    changed[NodeId(node)] = self.ratings[node] = factor
        if not new and not changed:
            return None
        return ContributorsRated(excluded=new, weights=changed)

    def entry(self) -> dict[str, object]:
        """metrics.json's ``contributions``: the method, every contributor's score, those
        flagged and why; with simulated poison (the truth), the precision and recall of
        the flags against the corrupted and scaled nodes."""
        c = self.job.config.contributions
        assert c is not None
        flagged = self.ledger.flagged(min_evidence=c.min_evidence, threshold=c.threshold)
        entry: dict[str, object] = {
            "method": self.method,
            "rounds_valued": sum(1 for r in self.rounds if r),
            "scores": {n: round(s, 6) for n, s in sorted(self.ledger.scores().items())},
            "evidence": dict(sorted(self.ledger.seen.items())),
            "flagged": flagged,
            "policy": self.policy,
            "excluded": {  # the verdict came after that round's valuation
                node: {"after_round": first, "reason": why}
                for node, (first, why) in sorted(self.excluded.items())
            },
        }
        if self.policy == "reputation":
            entry["ratings"] = {n: round(f, 4) for n, f in sorted(self.ratings.items())}
        job = self.job
        truth = {job.node_ids[i] for i in (*job.corrupted, *job.scaled)}
        if truth:  # of the exclusions, or of the flags when the policy only reports
            judged = set(flagged) if self.policy == "report" else set(self.excluded)
            hits = len(truth & judged)
            entry["judged"] = "flagged" if self.policy == "report" else "excluded"
            entry["precision"] = hits / len(judged) if judged else None
            entry["recall"] = hits / len(truth)
        return entry

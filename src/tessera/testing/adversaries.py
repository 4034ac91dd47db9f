"""Adversaries for tests and drills: real machines that misbehave on purpose."""

from __future__ import annotations

import numpy as np

from tessera.crypto.fixedpoint import Words
from tessera.crypto.sharing import Share
from tessera.protocol.aggregator import Aggregator, AggregatorRole


class TamperingAggregator(Aggregator):
    """Adds ``offset`` (in ring units) to the first coordinate of every sum it passes on,
    for the groups in ``targets`` (all of its groups when empty)."""

    def __init__(self, *args: object, offset: int = 12345, targets: tuple[str, ...] = ()) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.offset = offset
        self.targets = targets

    def partial_sum(self, role: AggregatorRole, shares: list[Share]) -> Words:
        words = super().partial_sum(role, shares)
        if not self.targets or role.request.group in self.targets:
            words = words.copy()
            words[0] += words.dtype.type(self.offset)
        return np.asarray(words)

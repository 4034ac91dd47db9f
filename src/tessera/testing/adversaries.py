"""Adversaries for tests and drills: real machines that misbehave on purpose, no mocks.

Each is the honest machine with one thing changed, so a test shows that the
honest parties around it catch or refuse exactly that:

- ``TamperingAggregator`` adds an offset to the sums it passes on (audits name it);
- ``SilentAggregator`` takes its seats and never answers (a backup replaces it);
- ``TruncatingContributor`` sends updates of the wrong length (the coordinator refuses them);
- ``replay`` delivers a captured message again (replay guards refuse it).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tessera.crypto.fixedpoint import Words
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.crypto.sharing import Share
from tessera.ids import JobId, NodeId
from tessera.protocol.aggregator import Aggregator, AggregatorRole
from tessera.protocol.contributor import Contributor
from tessera.protocol.effects import Effect
from tessera.protocol.events import Event, LocalUpdateReady
from tessera.protocol.treecheck import TreeCheck
from tessera.testing.federation import MiniFederation
from tessera.testing.network import Wire


class TamperingAggregator(Aggregator):
    """Adds ``offset`` (in ring units) to the first coordinate of every sum it passes on,
    for the groups in ``targets`` (all of its groups when empty)."""

    def __init__(
        self,
        node: NodeId,
        job_id: JobId,
        keys: NodeKeys,
        directory: Mapping[NodeId, PublicKeys],
        tree_check: TreeCheck | None = None,
        *,
        offset: int = 12345,
        targets: tuple[str, ...] = (),
    ) -> None:
        super().__init__(node, job_id, keys, directory, tree_check)
        self.offset = offset
        self.targets = targets

    def partial_sum(self, role: AggregatorRole, shares: list[Share]) -> Words:
        words = super().partial_sum(role, shares)
        if not self.targets or role.request.group in self.targets:
            words = words.copy()
            words[0] += words.dtype.type(self.offset)
        return np.asarray(words)


class SilentAggregator(Aggregator):
    """Accepts nothing and answers nothing: a crashed or withholding aggregator."""

    def handle(self, event: Event, now: float) -> list[Effect]:  # noqa: ARG002
        return []


class TruncatingContributor(Contributor):
    """Sends every update one coordinate short."""

    def handle(self, event: Event, now: float) -> list[Effect]:
        if isinstance(event, LocalUpdateReady):
            event = LocalUpdateReady(
                round=event.round,
                delta=event.delta[:-1].copy(),
                num_samples=event.num_samples,
                loss=event.loss,
            )
        return super().handle(event, now)


def replay(fed: MiniFederation, wire: Wire, *, to: NodeId | None = None) -> list[Effect]:
    """Deliver a captured message again (to its recipient, or to ``to``)."""
    return fed.deliver(Wire(wire.sender, to or wire.recipient, wire.message))

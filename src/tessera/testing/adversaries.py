"""Adversaries for tests and drills: real machines that misbehave on purpose, no mocks.

Each is the honest machine with one thing changed, so a test shows that the
honest parties around it catch or refuse exactly that:

- ``TamperingAggregator`` adds an offset to the sums it passes on (audits name it),
  or to the group sums it discloses to the coordinator only (the coordinator's
  consistency check withholds the round's group sums);
- ``SilentAggregator`` takes its seats and never answers (a backup replaces it);
- ``TruncatingContributor`` sends updates of the wrong length (the plaintext
  coordinator, or in a secure round every aggregator, refuses them);
- ``UnclippedContributor`` skips its clip (the coordinator sees the sum break an
  honest sum's bound: it drops that group's sum, or the round);
- ``Replaying`` wraps any machine and sends each of its messages again
  (the coordinator's answered set, or the aggregators' replay guards, refuse
  the copies);
- ``replay`` delivers one captured message again, at any later moment.

    fed = plaintext_federation(nodes=3)
    fed.hosts[NodeId("node-001")].machine = Replaying(fed.nodes[NodeId("node-001")])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from tessera.crypto.fixedpoint import Words
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.crypto.sharing import Share
from tessera.ids import JobId, NodeId
from tessera.protocol.aggregator import Aggregator, AggregatorRole
from tessera.protocol.contributor import Contributor
from tessera.protocol.effects import Effect, Send
from tessera.protocol.events import Event, LocalUpdateReady
from tessera.protocol.messages import SecureAssignment
from tessera.protocol.treecheck import TreeCheck
from tessera.runtime.host import Machine
from tessera.testing.federation import MiniFederation
from tessera.testing.network import Wire


class TamperingAggregator(Aggregator):
    """Adds ``offset`` (in ring units) to the first coordinate of every sum it passes on,
    for the groups in ``targets`` (all of its groups when empty); with ``disclosed``, to
    the group sums it tells the coordinator instead, passing the honest sum up."""

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
        disclosed: bool = False,
    ) -> None:
        super().__init__(node, job_id, keys, directory, tree_check)
        self.offset = offset
        self.targets = targets
        self.disclosed_only = disclosed

    def partial_sum(self, role: AggregatorRole, shares: list[Share]) -> Words:
        words = super().partial_sum(role, shares)
        return words if self.disclosed_only else self._tampered(role, words)

    def disclosed_words(self, role: AggregatorRole, words: Words) -> Words:
        return self._tampered(role, words) if self.disclosed_only else words

    def _tampered(self, role: AggregatorRole, words: Words) -> Words:
        if not self.targets or role.request.group in self.targets:
            words = words.copy()
            words[0] += words.dtype.type(self.offset)
        return np.asarray(words)


class SilentAggregator(Aggregator):
    """Accepts nothing and answers nothing: a crashed or withholding aggregator."""

    def handle(self, event: Event, now: float) -> list[Effect]:  # noqa: ARG002
        return []


class UnclippedContributor(Contributor):
    """Skips its clip: shares its update at the norm its training gave (each coordinate
    still within the ring's bound, or it could not be encoded at all)."""

    def _clip(self, a: SecureAssignment) -> float:  # noqa: ARG002
        return math.inf


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


class Replaying:
    """Any machine whose messages (those ``match`` accepts) go out ``copies`` more times."""

    def __init__(
        self,
        machine: Machine,
        match: Callable[[Send], bool] | None = None,
        *,
        copies: int = 1,
    ) -> None:
        self.machine = machine
        self.match = match
        self.copies = copies

    def handle(self, event: Event, now: float) -> list[Effect]:
        out: list[Effect] = []
        for effect in self.machine.handle(event, now):
            out.append(effect)
            if isinstance(effect, Send) and (self.match is None or self.match(effect)):
                out += [effect] * self.copies
        return out


def replay(fed: MiniFederation, wire: Wire, *, to: NodeId | None = None) -> list[Effect]:
    """Deliver a captured message again (to its recipient, or to ``to``)."""
    return fed.deliver(Wire(wire.sender, to or wire.recipient, wire.message))

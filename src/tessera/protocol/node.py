"""A node's machines behind one ``handle``: it contributes and may aggregate.

Routing is by what arrives: train requests and local training results go to
the contributor; role assignments, sealed shares, sums, commitments and the
aggregator's timers go to the aggregator.
"""

from __future__ import annotations

from tessera.protocol.aggregator import Aggregator
from tessera.protocol.contributor import Contributor
from tessera.protocol.effects import Effect
from tessera.protocol.events import Event, LocalTrainingFailed, LocalUpdateReady, MessageReceived
from tessera.protocol.messages import TrainRequest


class Node:
    __slots__ = ("aggregator", "contributor")

    def __init__(self, contributor: Contributor, aggregator: Aggregator | None) -> None:
        self.contributor = contributor
        self.aggregator = aggregator

    def handle(self, event: Event, now: float) -> list[Effect]:
        to_contributor = isinstance(event, LocalUpdateReady | LocalTrainingFailed) or (
            isinstance(event, MessageReceived) and isinstance(event.message, TrainRequest)
        )
        if to_contributor or self.aggregator is None:
            return self.contributor.handle(event, now)
        return self.aggregator.handle(event, now)

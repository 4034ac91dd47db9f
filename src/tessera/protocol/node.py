"""A node's machines behind one ``handle``: it contributes and may aggregate.

Routing is by what arrives: train requests and local training results go to
the contributor; role assignments, sealed shares, sums, commitments and the
aggregator's timers go to the aggregator.
"""

from __future__ import annotations

from tessera.crypto.envelope import peek
from tessera.errors import InvalidEnvelope
from tessera.protocol.aggregator import Aggregator
from tessera.protocol.contributor import Contributor
from tessera.protocol.effects import Effect
from tessera.protocol.events import (
    Event,
    LocalStatisticsReady,
    LocalTrainingFailed,
    LocalUpdateReady,
    MessageReceived,
)
from tessera.protocol.kinds import Kind
from tessera.protocol.messages import Message, Sealed, TrainRequest


class Node:
    __slots__ = ("aggregator", "contributor")

    def __init__(self, contributor: Contributor, aggregator: Aggregator | None) -> None:
        self.contributor = contributor
        self.aggregator = aggregator

    def handle(self, event: Event, now: float) -> list[Effect]:
        if self.aggregator is None or not self.for_aggregator(event):
            return self.contributor.handle(event, now)
        return self.aggregator.handle(event, now)

    @staticmethod
    def for_aggregator(event: Event) -> bool:
        """Whether ``event`` concerns the node's aggregator (else its contributor)."""
        if isinstance(event, LocalUpdateReady | LocalStatisticsReady | LocalTrainingFailed):
            return False
        return not (isinstance(event, MessageReceived) and _for_contributor(event.message))


def _for_contributor(message: Message) -> bool:
    if isinstance(message, TrainRequest):
        return True
    if isinstance(message, Sealed):
        try:
            return peek(message.data).kind == Kind.RESEND_SHARE
        except InvalidEnvelope:
            return False  # the aggregator refuses it with a reason
    return False

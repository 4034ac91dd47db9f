"""An in-memory network: the hosts' ``Outbox``, a FIFO of wires the test delivers as it likes.

Every ``Send`` becomes a ``Wire`` (sender, recipient, message) in ``queue``,
in the order sent. Two optional rules disturb it: ``drop`` loses a wire
(loss, a ``partition``), ``delay`` holds it back in ``held`` until the test
calls ``release`` (late or reordered delivery). ``sent`` keeps everything,
lost or not, so a test can replay or inspect any message.

    net = InMemoryNetwork(drop=partition({COORDINATOR}, {NodeId("node-001")}))
    net = InMemoryNetwork(delay=lambda w: w.recipient == COORDINATOR)
    ...
    net.release()      # the held wires join the back of the queue
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tessera.crypto.envelope import peek
from tessera.errors import InvalidEnvelope
from tessera.ids import NodeId
from tessera.protocol.effects import Send
from tessera.protocol.messages import Message, Sealed


@dataclass(frozen=True)
class Wire:
    """A message in flight, as the transport saw it."""

    sender: NodeId
    recipient: NodeId
    message: Message

    @property
    def data(self) -> bytes:
        """The envelope's bytes (sealed messages only)."""
        if not isinstance(self.message, Sealed):
            raise TypeError(f"a {type(self.message).__name__} carries no envelope")
        return self.message.data

    @property
    def kind(self) -> int | None:
        """The envelope's kind, or None for an in-process message or unreadable bytes."""
        if not isinstance(self.message, Sealed):
            return None
        try:
            return peek(self.message.data).kind
        except InvalidEnvelope:
            return None


@dataclass
class InMemoryNetwork:
    """Every ``Send`` joins ``queue``, unless ``drop`` loses it or ``delay`` holds it back."""

    drop: Callable[[Wire], bool] | None = None
    delay: Callable[[Wire], bool] | None = None
    queue: deque[Wire] = field(default_factory=deque)
    sent: list[Wire] = field(default_factory=list)  # everything ever sent, dropped or not
    dropped: list[Wire] = field(default_factory=list)
    held: list[Wire] = field(default_factory=list)  # delayed, in the order sent

    def send(self, sender: NodeId, effect: Send) -> None:
        wire = Wire(sender, effect.recipient, effect.message)
        self.sent.append(wire)
        if self.drop is not None and self.drop(wire):
            self.dropped.append(wire)
        elif self.delay is not None and self.delay(wire):
            self.held.append(wire)
        else:
            self.queue.append(wire)

    def release(self, match: Callable[[Wire], bool] | None = None) -> int:
        """Queue the held wires (those ``match`` accepts), after everything queued; how many."""
        going = [match is None or match(w) for w in self.held]
        self.queue.extend(w for w, go in zip(self.held, going, strict=True) if go)
        self.held = [w for w, go in zip(self.held, going, strict=True) if not go]
        return sum(going)

    def take(self, match: Callable[[Wire], bool]) -> Wire:
        """Remove and return the first queued wire that ``match`` accepts."""
        for i, wire in enumerate(self.queue):
            if match(wire):
                del self.queue[i]
                return wire
        raise LookupError("no queued message matches")


def partition(*groups: set[NodeId]) -> Callable[[Wire], bool]:
    """A ``drop`` rule: messages between different groups are lost (a node in none is free)."""

    def side(node: NodeId) -> int | None:
        return next((i for i, g in enumerate(groups) if node in g), None)

    def drop(wire: Wire) -> bool:
        a, b = side(wire.sender), side(wire.recipient)
        return a is not None and b is not None and a != b

    return drop

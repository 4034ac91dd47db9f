"""A clock the test moves: the hosts' ``Clock``, with no time passing on its own."""

from __future__ import annotations

from tessera.ids import NodeId


class ManualClock:
    """``now()`` is ``time`` until the test changes it; wakes are recorded, compute is free."""

    def __init__(self, time: float = 0.0) -> None:
        self.time = time
        self.wakes: list[tuple[NodeId, float]] = []  # (actor, at) for every timer set

    def now(self) -> float:
        return self.time

    def wake(self, actor: NodeId, at: float) -> None:
        self.wakes.append((actor, at))

    def charge(self, actor: NodeId, seconds: float) -> None:
        """A manual clock does not move with compute: tests decide when time passes."""

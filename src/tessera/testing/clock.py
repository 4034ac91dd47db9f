"""A clock the test moves: the hosts' ``Clock``, with no time passing on its own.

``now()`` answers ``time`` until the test moves it; every timer a host sets
is recorded in ``wakes`` as (actor, deadline), and compute costs nothing. A
``MiniFederation`` owns one and moves it in ``advance``, firing every host's
due timers in deadline order; on its own it is a plain settable clock:

    clock = ManualClock(100.0)
    clock.advance(130.0)        # never backwards
"""

from __future__ import annotations

from tessera.ids import NodeId


class ManualClock:
    """``now()`` is ``time`` until the test changes it; wakes are recorded, compute is free."""

    def __init__(self, time: float = 0.0) -> None:
        self.time = time
        self.wakes: list[tuple[NodeId, float]] = []  # (actor, at) for every timer set

    def now(self) -> float:
        return self.time

    def advance(self, to: float) -> None:
        """Move the clock to ``to``; moving it back is refused (no host expects that)."""
        if to < self.time:
            raise ValueError(f"time runs forward: the clock reads {self.time}, not before {to}")
        self.time = to

    def wake(self, actor: NodeId, at: float) -> None:
        self.wakes.append((actor, at))

    def charge(self, actor: NodeId, seconds: float) -> None:
        """A manual clock does not move with compute: tests decide when time passes."""

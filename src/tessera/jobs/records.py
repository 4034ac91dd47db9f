"""What a job's rounds produce, in every runtime: round records and results.

A ``RoundRecord`` is one closed round as the AI provider sees it: the
protocol's ``RoundClosed`` summary, the evaluation on its own held-out data,
and what the runtime measured (time, bytes). The simulator and ``tessera
up`` both write them, so the two can be compared round by round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tessera.weights import Vector


@dataclass(frozen=True)
class RoundRecord:
    round: int
    value: float
    participants: int
    selected: int
    dropped: int
    late: int
    skipped: bool
    train_loss: float
    seconds: float  # wall-clock time the round took to simulate
    virtual_seconds: float  # virtual time at which the round closed, counted from the job's start
    bytes_up: int
    bytes_down: int
    bytes_aggregation: int
    aggregators_failed: int = 0
    blamed: tuple[str, ...] = ()  # aggregators whose sums failed an audit, and why
    included: tuple[str, ...] = ()  # contributors whose updates are in this round's model
    virtual_round_seconds: float = 0.0  # from the round's requests going out to its close
    cpu_seconds: float = 0.0  # protocol compute charged to all actors (charge_compute only)
    coordinator_cpu_seconds: float = 0.0


@dataclass
class SimulationResult:
    rounds: list[RoundRecord]
    weights: Vector
    seconds: float
    secure: bool

    @property
    def final_value(self) -> float:
        return self.rounds[-1].value


@dataclass
class BaselineResult:
    value: float
    epochs: int
    curve: list[tuple[float, float]] = field(default_factory=list)  # (round-equivalent, value)
    weights: Vector | None = None

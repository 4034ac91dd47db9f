"""Protocol parameters: frozen and validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tessera.errors import ConfigError
from tessera.ids import JobId


@dataclass(frozen=True, kw_only=True, slots=True)
class RoundParams:
    """How a plaintext job's rounds run.

    ``fraction`` of the consented nodes (at least ``min_participants``) are
    selected each round; a round aggregates if at least ``min_updates``
    updates arrive before ``round_timeout`` (virtual or wall seconds, as the
    runtime's clock counts), otherwise it is skipped and the job goes on.
    ``fednova``: the mean update is FedNova's, normalised by each contributor's
    local steps (docs/architecture.md, "Deadline rounds"); off, FedAvg's.
    ``reweight_availability``: each contributor's weight is divided by how often
    its updates made it into a round when it was asked (``Coordinator.answer_rate``),
    so a node online one round in five counts over the job as much as one always
    online (docs/architecture.md, "Availability").
    ``buffer``: a buffered asynchronous job (``protocol.buffering``): a round's
    training phase closes once ``buffer`` updates are in, and an update up to
    ``max_staleness`` rounds old is taken, down-weighted; None: synchronous rounds.
    ``report_after``: secure rounds whose nodes stop local work at a deadline
    (``[deadline]``): the seconds after a round opens at which its leaf seats are
    told to report what they hold (the deadline and a transfer margin); None: at
    their report time, as always.
    """

    job_id: JobId
    rounds: int
    fraction: float = 1.0
    min_participants: int = 1
    min_updates: int = 1
    round_timeout: float = 60.0
    seed: int = 0
    fednova: bool = False
    reweight_availability: bool = False
    buffer: int | None = None
    max_staleness: int = 4
    report_after: float | None = None

    def __post_init__(self) -> None:
        if self.buffer is not None and self.buffer < 1:
            raise ConfigError("strategy.buffer", "must be at least 1")
        if self.max_staleness < 0:
            raise ConfigError("strategy.max_staleness", "must be at least 0")
        if self.report_after is not None and not (
            self.report_after > 0 and math.isfinite(self.report_after)
        ):
            raise ConfigError("deadline.seconds", "must be a positive number of seconds")
        if self.rounds < 1:
            raise ConfigError("federation.rounds", "must be at least 1")
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError("federation.fraction", "must be in (0, 1]")
        if self.min_participants < 1:
            raise ConfigError("federation.min_participants", "must be at least 1")
        if self.min_updates < 1:
            raise ConfigError("federation.min_updates", "must be at least 1")
        if not (self.round_timeout > 0 and math.isfinite(self.round_timeout)):
            raise ConfigError("federation.round_timeout", "must be a positive number of seconds")

    def cohort_size(self, available: int) -> int:
        """How many of ``available`` nodes one round selects."""
        wanted = max(self.min_participants, math.ceil(self.fraction * available))
        return min(wanted, available)


@dataclass(frozen=True, kw_only=True, slots=True)
class StatisticsRound:
    """A secure job's first rounds: every node's statistics vector, totalled up the tree.

    ``lengths[r]`` words per node in statistics round ``r`` (more than one when a
    derived column needs a statistic before the plan's columns can be counted),
    each word at most ``bound`` in size (public: the ring is sized for it). With
    it, training rounds are numbered ``rounds`` to ``rounds`` + R - 1; ``only``
    ends the job once the last total is in.
    """

    lengths: tuple[int, ...]
    bound: float
    only: bool = False

    def __post_init__(self) -> None:
        if not self.lengths:
            raise ConfigError("statistics", "a statistics round counts something")
        if min(self.lengths) < 1:
            raise ConfigError("statistics", "a statistics vector needs at least one word")
        if not (self.bound >= 1 and math.isfinite(self.bound)):
            raise ConfigError("statistics", "the bound on statistics must be finite and >= 1")

    @property
    def rounds(self) -> int:
        """How many statistics rounds open the job (rounds 0 .. rounds - 1)."""
        return len(self.lengths)

"""Outputs of the role machines: what the runtime must do next."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tessera.ids import NodeId
from tessera.protocol.limits import TAIL
from tessera.protocol.messages import Message
from tessera.protocol.quality import RoundQuality
from tessera.protocol.timers import Timer
from tessera.protocol.topology import Tree
from tessera.weights import Vector


@dataclass(frozen=True, kw_only=True, slots=True)
class Send:
    recipient: NodeId
    message: Message


@dataclass(frozen=True, kw_only=True, slots=True)
class StartTimer:
    timer: Timer
    at: float


@dataclass(frozen=True, kw_only=True, slots=True)
class CancelTimer:
    timer: Timer


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestLocalTraining:
    """Train on the node's own data from ``weights``; answer LocalUpdateReady.

    ``schedule_round``: which training round of the job this is (``round`` less
    the statistics rounds before it), what a learning-rate schedule counts, so a
    job's schedule is the same with or without statistics rounds; None: ``round``.
    """

    round: int
    weights: Vector
    config: Mapping[str, float]
    schedule_round: int | None = None
    quality: bool = False  # measure the records' quality too (``protocol.quality``)


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestLocalStatistics:
    """Count the node's own records by the job's statistics plan; answer
    LocalStatisticsReady (or LocalTrainingFailed)."""

    round: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Rejected:
    """A peer's message was refused; state is unchanged. For logs and blame."""

    sender: NodeId
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class GroupSum:
    """One leaf group's sum, disclosed to the coordinator (``SecureParams.group_sums``).

    ``total`` is the decoded weighted sum of ``members``' vectors (the committed
    contributors, at least the job's floor of them): the summed updates, then a
    job's quality words (``protocol.quality``), then the ``TAIL`` words, the last
    the group's weight. Never an individual's: see ``protocol.groups``.
    """

    group: str
    members: tuple[str, ...]
    total: npt.NDArray[np.float64]

    @property
    def weight(self) -> float:
        return float(self.total[-1])

    def update(self, size: int) -> npt.NDArray[np.float64]:
        """The members' weighted sum of updates, of a model of ``size`` weights."""
        return self.total[:size]

    def quality_words(self, size: int) -> npt.NDArray[np.float64]:
        """The members' summed quality words (empty when the job asks for none)."""
        return self.total[size:-TAIL]


@dataclass(frozen=True, kw_only=True, slots=True)
class RoundClosed:
    """A round ended; ``weights`` is the new global model (unchanged if skipped)."""

    round: int
    weights: Vector
    selected: int
    participants: int
    num_samples: int
    mean_loss: float
    skipped: bool
    closed_at: float
    blamed: tuple[str, ...] = ()  # aggregators whose sums failed their audit, with reasons
    included: tuple[str, ...] = ()  # the contributors whose updates are in the new model
    capped: int = 0  # secure rounds: contributors whose loss was over secure.loss_cap
    epsilon: float | None = None  # a private job's privacy spent so far (at its delta)
    # A job that discloses group sums: each included leaf group's (model-sized: kept out
    # of round records), and why none was disclosed when the round's are withheld.
    group_sums: tuple[GroupSum, ...] = ()
    groups_withheld: str | None = None
    # Contributors left out from this round on (``ContributorsRated``), with why.
    excluded: tuple[tuple[str, str], ...] = ()
    # The included contributors' data-quality statistics, summed (a job that asks).
    quality: RoundQuality | None = None
    # A buffered job's: each included contributor's staleness (rounds behind the model
    # it trained from), in the order of ``included``; empty in synchronous rounds.
    staleness: tuple[int, ...] = ()
    skip_reason: str | None = None  # a skipped round: why (too few updates, by when)
    # Selected contributors that declined the round (``TrainingDeclined``), with why.
    declined: tuple[tuple[str, str], ...] = ()
    # A secure round's execution tree (its shape goes to the round's record); None in
    # a plaintext round.
    tree: Tree | None = None
    # A secure round's aggregators whose seat was silent at a commit deadline (handed to
    # a backup, or its group left without it).
    silent_aggregators: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class StatisticsClosed:
    """The statistics round's total (coordinator only): the sum of every included
    node's statistics vector, decoded; no node's own vector is ever seen."""

    round: int
    total: npt.NDArray[np.float64]
    included: tuple[str, ...]
    closed_at: float
    blamed: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class JobFinished:
    weights: Vector
    rounds: int
    error: str | None = None  # the job stopped early, and why (training diverged)
    stopped: str | None = None  # it ended before its rounds, not failing: why (the budget)


Effect = (
    Send
    | StartTimer
    | CancelTimer
    | RequestLocalTraining
    | RequestLocalStatistics
    | Rejected
    | RoundClosed
    | StatisticsClosed
    | JobFinished
)

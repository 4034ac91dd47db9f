"""Inputs to the role machines: what happened. Time arrives beside them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from tessera.ids import NodeId
from tessera.protocol.messages import Message
from tessera.protocol.quality import LocalQuality
from tessera.protocol.timers import Timer
from tessera.weights import Vector

if TYPE_CHECKING:  # only named here; sharing_job imports the wire, which imports effects
    from tessera.protocol.sharing_job import SharedUpdate


@dataclass(frozen=True, kw_only=True, slots=True)
class JobStarted:
    """The runtime starts the job (coordinator only)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MessageReceived:
    sender: NodeId
    message: Message


@dataclass(frozen=True, kw_only=True, slots=True)
class TimerFired:
    timer: Timer


@dataclass(frozen=True, kw_only=True, slots=True)
class LocalUpdateReady:
    """The runtime finished the local training a contributor asked for."""

    round: int
    delta: Vector
    num_samples: int
    loss: float
    quality: LocalQuality | None = None  # asked by a job with quality words only
    steps: int = 0  # the local optimizer steps taken (FedNova normalises by them); 0: unknown
    # The sharing step done ahead by the runtime (``protocol.sharing_job``); the
    # contributor uses it only if it was made for exactly the job it would run.
    shared: SharedUpdate | None = field(default=None, repr=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class LocalStatisticsReady:
    """The runtime counted the node's records as the statistics round asked."""

    round: int
    vector: npt.NDArray[np.float64]


@dataclass(frozen=True, kw_only=True, slots=True)
class LocalTrainingFailed:
    round: int
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ParticipantWithdrawn:
    """A user revoked consent (coordinator only): never ask their node to train again.

    Takes effect from the next round opened; the round in flight is not
    touched (its shares may already be summed). The tree is still derived
    from the consented set of the job's start, so every node can recompute
    it; a withdrawn contributor is simply absent, as a dropped one is.
    """

    node: NodeId


@dataclass(frozen=True, kw_only=True, slots=True)
class ContributorsRated:
    """The job's contribution policy judged contributors from their indicators
    (coordinator only; see ``tessera.contributions``).

    ``excluded`` (node -> why) hold no seat and train no more, as a withdrawn
    node, from the next round opened; that round's record names them with the
    reason. ``weights`` (node -> factor in (0, 1]) multiply a contributor's
    aggregation weight from the next round opened; one not named keeps its
    factor. Secure rounds carry the factor to the contributor, which shares
    ``w * factor * update`` and ``w * factor``: no update is ever seen.
    """

    excluded: Mapping[NodeId, str] = field(default_factory=lambda: MappingProxyType({}))
    weights: Mapping[NodeId, float] = field(default_factory=lambda: MappingProxyType({}))


Event = (
    JobStarted
    | MessageReceived
    | TimerFired
    | LocalUpdateReady
    | LocalStatisticsReady
    | LocalTrainingFailed
    | ParticipantWithdrawn
    | ContributorsRated
)

"""Typed payloads exchanged between roles, one frozen dataclass per kind.

Messages are validated on construction so an invalid one cannot exist; a
peer's bad payload surfaces as ``RemoteProtocolError`` at the boundary that
builds it. Weights travel as flat float32 vectors in the job's ``Layout``
order; in the simulator they are shared read-only arrays, never copied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from tessera.errors import RemoteProtocolError
from tessera.ids import JobId, NodeId
from tessera.protocol.quality import MAX_QUALITY_WORDS, QUALITY_HEAD
from tessera.weights import Vector

#: Fixed per-message overhead counted by the simulator (ids, round, lengths).
HEADER_BYTES = 64


def _check_vector(name: str, v: Vector) -> None:
    if not isinstance(v, np.ndarray) or v.dtype != np.float32 or v.ndim != 1:
        raise RemoteProtocolError(f"{name} must be a 1-D float32 vector")


@dataclass(frozen=True, kw_only=True, slots=True)
class SecureAssignment:
    """Where a contributor's shares go this round, and how to encode them.

    ``aggregators[j]`` receives share j; ``full_position`` is the one that
    gets the full-size share (the rest get 32-byte seeds). Weights are
    ``min(samples, max_weight) / max_weight`` so every term is bounded, times
    ``weight``: the job's rating of this contributor (``ContributorsRated``).
    """

    group: str
    aggregators: tuple[NodeId, ...]
    backups: tuple[NodeId, ...]  # the tree's spares: the only legal replacements
    full_position: int
    ring_bits: int
    frac_bits: int
    ring_terms: int  # the ring is sized for this many contributors' terms
    clip: float
    max_weight: float
    loss_cap: float
    tree_digest: str
    weight: float = 1.0  # in (0, 1]: 1 unless the contribution policy lowered it
    quality: int = 0  # data-quality words after the update (``protocol.quality``); 0: none
    # FedNova: the job's public bound on local steps, the scale of the steps word after
    # the quality words (``weighted_vector``); 0: no steps word, the update as trained.
    steps: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.weight <= 1:
            raise RemoteProtocolError("a contributor's weight factor must be in (0, 1]")
        if not (self.quality == 0 or QUALITY_HEAD <= self.quality <= MAX_QUALITY_WORDS):
            raise RemoteProtocolError(
                f"quality words are 0 or {QUALITY_HEAD} to {MAX_QUALITY_WORDS}"
            )
        if not 0 <= self.full_position < len(self.aggregators):
            raise RemoteProtocolError("full_position is not an aggregator position")
        if len(set(self.aggregators)) != len(self.aggregators) or len(self.aggregators) < 2:
            raise RemoteProtocolError("a group needs at least two distinct aggregators")
        if min(self.max_weight, self.loss_cap, self.clip) <= 0:
            raise RemoteProtocolError("clip, max_weight and loss_cap must be positive")
        if not (self.steps == 0 or 1 <= self.steps < float("inf")):
            raise RemoteProtocolError("the bound on local steps is 0 (none) or at least 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class AggregateRequest:
    """Coordinator -> aggregator: serve ``position`` of ``group`` this round.

    ``inputs`` are the expected senders' ids: contributors for a leaf group,
    child group ids for an upper group. ``parent`` is the aggregator (or the
    coordinator, at the root) that receives this position's partial sum.
    """

    job_id: JobId
    round: int
    group: str
    position: int
    inputs: tuple[str, ...]
    senders: tuple[NodeId, ...]  # who must send each input (same order)
    leaf: bool
    parent: NodeId
    parent_group: str
    report_at: float
    ring_bits: int
    frac_bits: int
    ring_terms: int
    length: int
    tree_digest: str
    # For upper groups: what each child group must have summed, to audit its sum:
    # child id -> (child is a leaf, {input id: the node that must have sent it}).
    audit: Mapping[str, tuple[bool, Mapping[str, NodeId]]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    audit_fraction: float = 1.0  # the share of child sums we audit, drawn as each arrives
    send_evidence: bool = False  # whether our sums go with evidence for our parent
    evidence_on_request: bool = False  # keep evidence until our auditor asks for it
    # Leaf inputs the coordinator did not ask to train (their consent was withdrawn):
    # not waited for, and their shares are not taken.
    absent: tuple[str, ...] = ()
    # A leaf seat of a job that discloses its groups' sums (``SecureParams.group_sums``):
    # the fewest committed contributors whose sum it also sends the coordinator, once;
    # a smaller commitment it refuses. 0: it discloses nothing (every other seat).
    group_sums: int = 0

    @property
    def nbytes(self) -> int:
        return HEADER_BYTES + 96 + sum(len(i) + 1 for i in self.inputs)


@dataclass(frozen=True, slots=True)
class Sealed:
    """A signed (and, for shares and sums, encrypted) envelope on the wire."""

    data: bytes

    @property
    def nbytes(self) -> int:
        return len(self.data)


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainRequest:
    """Coordinator -> contributor: train round ``round`` from ``weights``."""

    job_id: JobId
    round: int
    weights: Vector
    deadline: float
    config: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    secure: SecureAssignment | None = None
    # A statistics round (the first rounds of a job that has them): count, do not train.
    statistics: bool = False
    # A buffered job (``protocol.buffering``): the most rounds an update may be stale and
    # still be sent in this round; None: synchronous rounds (a newer request supersedes).
    max_staleness: int | None = None

    def __post_init__(self) -> None:
        if self.round < 0:
            raise RemoteProtocolError("round must be >= 0")
        if self.max_staleness is not None and self.max_staleness < 0:
            raise RemoteProtocolError("max_staleness must be >= 0")
        _check_vector("weights", self.weights)
        if self.statistics and (self.secure is None or self.weights.shape[0] != 0):
            raise RemoteProtocolError("a statistics request is secure and carries no weights")

    @property
    def nbytes(self) -> int:
        return HEADER_BYTES + self.weights.nbytes + 16 * len(self.config)


@dataclass(frozen=True, kw_only=True, slots=True)
class UpdateSubmission:
    """Contributor -> coordinator: a plaintext update (local minus global)."""

    job_id: JobId
    round: int
    delta: Vector
    num_samples: int
    loss: float
    steps: int = 0  # the local optimizer steps behind ``delta`` (FedNova); 0: not counted
    # A buffered job's: ``delta`` was trained from round ``round - staleness``'s model.
    staleness: int = 0

    def __post_init__(self) -> None:
        if self.round < 0:
            raise RemoteProtocolError("round must be >= 0")
        if not 0 <= self.staleness <= self.round:
            raise RemoteProtocolError("staleness must be in [0, round]")
        if self.num_samples <= 0:
            raise RemoteProtocolError("num_samples must be positive")
        if self.steps < 0:
            raise RemoteProtocolError("steps must be >= 0")
        _check_vector("delta", self.delta)
        if not np.isfinite(self.delta).all():
            raise RemoteProtocolError("delta contains NaN or infinity")

    @property
    def nbytes(self) -> int:
        return HEADER_BYTES + self.delta.nbytes + 12


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainingDeclined:
    """Contributor -> coordinator: will not take part in this round."""

    job_id: JobId
    round: int
    reason: str

    @property
    def nbytes(self) -> int:
        return HEADER_BYTES + len(self.reason.encode())


Message = TrainRequest | UpdateSubmission | TrainingDeclined | AggregateRequest | Sealed

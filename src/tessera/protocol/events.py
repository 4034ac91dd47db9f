"""Inputs to the role machines: what happened. Time arrives beside them."""

from __future__ import annotations

from dataclasses import dataclass

from tessera.ids import NodeId
from tessera.protocol.messages import Message
from tessera.weights import Vector


@dataclass(frozen=True, kw_only=True, slots=True)
class JobStarted:
    """The runtime starts the job (coordinator only)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MessageReceived:
    sender: NodeId
    message: Message


@dataclass(frozen=True, kw_only=True, slots=True)
class TimerFired:
    timer: str


@dataclass(frozen=True, kw_only=True, slots=True)
class LocalUpdateReady:
    """The runtime finished the local training a contributor asked for."""

    round: int
    delta: Vector
    num_samples: int
    loss: float


@dataclass(frozen=True, kw_only=True, slots=True)
class LocalTrainingFailed:
    round: int
    reason: str


Event = JobStarted | MessageReceived | TimerFired | LocalUpdateReady | LocalTrainingFailed

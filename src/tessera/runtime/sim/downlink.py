"""What a model broadcast costs on the simulated wire: the weights, or their delta.

``[simulation] downlink = "full"`` (the default) charges a train request its
float32 weights as they are (``TrainRequest.nbytes``). ``"delta"`` charges
the compressed XOR delta from the last global model the node is known to
hold (``weights.delta_bytes``, exact: the node rebuilds the model bit for
bit), or the compressed model itself for a node that holds none. The sizes
are the real compressed lengths, computed once per (round, base round) pair.

A node is known to hold a round's model only once it has uploaded an update
or a share in that round: a node that was sent a model but went away
before using it may not have received it, so it is charged from its last
used model, never from one it may have missed.
"""

from __future__ import annotations

from typing import Literal

from tessera.ids import NodeId
from tessera.protocol.messages import TrainRequest
from tessera.weights import Vector, delta_bytes

Mode = Literal["full", "delta"]


class Downlink:
    """Bytes of each train request on the wire, under ``mode``."""

    __slots__ = ("_held", "_sent", "_sizes", "mode")

    def __init__(self, mode: Mode = "full") -> None:
        if mode not in ("full", "delta"):
            raise ValueError(f"downlink must be 'full' or 'delta', got {mode!r}")
        self.mode = mode
        self._sent: dict[NodeId, tuple[int, Vector]] = {}  # the last model sent
        self._held: dict[NodeId, tuple[int, Vector]] = {}  # the last model used
        self._sizes: dict[tuple[int, int], int] = {}  # (round, base round or -1) -> bytes

    def size(self, recipient: NodeId, request: TrainRequest) -> int:
        """The bytes ``request`` takes to reach ``recipient``."""
        weights = request.weights
        if self.mode == "full" or weights.shape[0] == 0:  # statistics requests carry none
            return request.nbytes
        self._sent[recipient] = (request.round, weights)
        base, old = self._held.get(recipient, (-1, None))
        key = (request.round, base)
        if key not in self._sizes:
            self._sizes[key] = len(delta_bytes(weights, old))
        return request.nbytes - weights.nbytes + self._sizes[key]

    def used(self, sender: NodeId) -> None:
        """``sender`` uploaded this round's update: it holds the model it was sent."""
        if sender in self._sent:
            self._held[sender] = self._sent[sender]

"""Nodes that send scaled updates (``[simulation.poison] scaled_fraction``), simulated.

The simulator's trainer is wrapped: what it returns for the named nodes is
multiplied by ``scale`` before the node's protocol machine sees it, as a
hostile node would send it (clipping then bounds its norm as anyone's).
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import numpy.typing as npt

from tessera.training import BatchedTrainer
from tessera.training.batched import TrainResult
from tessera.weights import Vector


class ScaledUpdates:
    """``trainer``, with the updates of ``nodes`` multiplied by ``scale``."""

    def __init__(self, trainer: BatchedTrainer, nodes: Collection[int], scale: float) -> None:
        self.trainer = trainer
        self.nodes = np.array(sorted(nodes), np.int64)
        self.scale = scale

    def train(
        self,
        global_weights: Vector,
        nodes: npt.ArrayLike,
        seed: int,
        *,
        prox_mu: float | None = None,
        round: int = 0,
        quality: bool = False,
        max_steps: npt.ArrayLike | None = None,
    ) -> TrainResult:
        result = self.trainer.train(
            global_weights,
            nodes,
            seed,
            prox_mu=prox_mu,
            round=round,
            quality=quality,
            max_steps=max_steps,
        )
        hostile = np.isin(np.asarray(nodes, np.int64), self.nodes)
        if hostile.any():
            result.deltas[hostile] *= np.float32(self.scale)
            if result.norm is not None:  # what the hostile node's own trainer would measure
                result.norm[hostile] *= np.float32(abs(self.scale))
        return result

"""What every runtime supplies to the protocol machines: the local trainer.

The simulator and (later) the network node agent both answer the
contributor's ``RequestLocalTraining`` effect through this interface.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from tessera.weights import Vector


def train_seed(job_seed: int, round: int) -> int:
    """The seed of every node's local training in ``round``: public, the same in every runtime.

    A node's shuffles then depend only on this, its data and its shuffle id, so a
    deployed node reproduces the simulator's result for the same node.
    """
    return int(np.random.default_rng([job_seed, 0x7A, round]).integers(2**31))


class TrainOutput(Protocol):
    deltas: npt.NDArray[np.float32]  # (nodes, P)
    num_samples: npt.NDArray[np.int64]
    loss: npt.NDArray[np.float32]


class LocalTrainer(Protocol):
    def train(
        self,
        global_weights: Vector,
        nodes: npt.NDArray[np.int64],
        seed: int,
        *,
        prox_mu: float | None = None,
    ) -> TrainOutput:
        """Train ``nodes`` from ``global_weights``; ``prox_mu`` overrides the recipe's."""
        ...

"""Simulated device heterogeneity and dropout, deterministic for a seed.

Real federations have slow phones next to fast laptops, and nodes that go
away mid-round. Each node gets a fixed speed factor (log-normal, median 1);
each (node, round) independently drops with probability ``dropout``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class DeviceModel:
    speed: npt.NDArray[np.float64]  # relative compute speed per node
    dropout: float
    samples_per_second: float
    seed: int
    aggregator_failure: float = 0.0

    @classmethod
    def sample(
        cls,
        n_nodes: int,
        *,
        dropout: float,
        speed_sigma: float,
        samples_per_second: float,
        seed: int,
        aggregator_failure: float = 0.0,
    ) -> DeviceModel:
        rng = np.random.default_rng([seed, 0xD5])
        speed = rng.lognormal(mean=0.0, sigma=speed_sigma, size=n_nodes) if speed_sigma else None
        return cls(
            speed=speed if speed is not None else np.ones(n_nodes),
            dropout=dropout,
            samples_per_second=samples_per_second,
            seed=seed,
            aggregator_failure=aggregator_failure,
        )

    def aggregator_failed(self, round: int) -> npt.NDArray[np.bool_]:
        """Which nodes' aggregator roles go silent during ``round``."""
        rng = np.random.default_rng([self.seed, 0xA6, round])
        failed: npt.NDArray[np.bool_] = (
            rng.random(size=(self.speed.shape[0],)) < self.aggregator_failure
        )
        return failed

    def dropped(self, round: int) -> npt.NDArray[np.bool_]:
        """Which nodes go away during ``round`` (one draw per node and round)."""
        rng = np.random.default_rng([self.seed, 0xD0, round])
        dropped: npt.NDArray[np.bool_] = rng.random(size=(self.speed.shape[0],)) < self.dropout
        return dropped

    def training_seconds(self, node: int, samples: int, epochs: int) -> float:
        """Virtual time node ``node`` needs to train ``epochs`` over ``samples``."""
        return 0.2 + samples * epochs / (self.samples_per_second * float(self.speed[node]))

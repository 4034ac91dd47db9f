"""Simulated device heterogeneity and dropout, deterministic for a seed.

Real federations have slow phones next to fast laptops, and nodes that go
away mid-round. Each node gets a fixed speed factor (log-normal, median 1);
each (node, round) independently drops with probability ``dropout`` (one
number, or one per node). A device profile (``runtime.sim.profiles``) adds
each node's own up- and downlink rates and its ``Availability`` over the
virtual day; without one, every node's link is the simulation's and every
node is always online.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Availability:
    """When each node is online: a window of ``hours`` opening at hour ``opens``
    of every virtual day (``day_seconds`` long; virtual time 0 is ``start_hour``)."""

    opens: npt.NDArray[np.float64]  # hour of the day each node's window opens, in [0, 24)
    hours: npt.NDArray[np.float64]  # each window's length, in (0, 24]; 24: always online
    day_seconds: float = 86400.0
    start_hour: float = 0.0

    def hour(self, at: float) -> float:
        """The hour of the day at virtual time ``at``."""
        return self.start_hour + 24.0 * at / self.day_seconds

    def online(self, at: float) -> npt.NDArray[np.bool_]:
        """Which nodes are online at virtual time ``at``."""
        inside: npt.NDArray[np.bool_] = (self.hour(at) - self.opens) % 24.0 < self.hours
        return inside

    def node_online(self, node: int, at: float) -> bool:
        """Whether node ``node`` is online at virtual time ``at`` (one node: no array)."""
        return (self.hour(at) - float(self.opens[node])) % 24.0 < float(self.hours[node])


@dataclass(frozen=True)
class DeviceModel:
    speed: npt.NDArray[np.float64]  # relative compute speed per node
    dropout: float | npt.NDArray[np.float64]  # per (node, round): one for all, or one per node
    samples_per_second: float
    seed: int
    aggregator_failure: float = 0.0
    up_rate: npt.NDArray[np.float64] | None = None  # bytes/s per node; None: the simulation's
    down_rate: npt.NDArray[np.float64] | None = None
    availability: Availability | None = None  # None: always online

    def online(self, node: int, at: float) -> bool:
        """Whether node ``node`` is online at virtual time ``at``."""
        return self.availability is None or self.availability.node_online(node, at)

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
        return 0.2 + samples * epochs / self.records_per_second(node)

    def records_per_second(self, node: int) -> float:
        """The records node ``node`` trains on per virtual second (after a fixed start)."""
        return self.samples_per_second * float(self.speed[node])

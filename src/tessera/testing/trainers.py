"""Trainers for the simulator whose every aggregate a test can compute by hand.

``runtime.sim.Simulation`` asks a batched ``LocalTrainer`` for many nodes'
updates at once. ``TableTrainer`` answers node ``i`` with row ``i`` of a
fixed random table (its samples and loss fixed too), so whatever the
simulator drops, delays or reorders, a round's result must be the weighted
mean of exactly the rows of the nodes it included:

    trainer = TableTrainer(samples, dim=4, seed=0)
    weights = Simulation(coordinator, nodes, trainer, devices, samples, ...).run()
    np.testing.assert_allclose(weights, trainer.mean(np.ones(len(samples), bool)), rtol=1e-5)

``QuadraticTrainer`` gives node ``i`` the objective ``|x - c_i|^2 / 2`` and
``steps[i]`` local gradient steps of rate ``eta`` (fewer where the simulator
caps them, as a deadline does): its update from ``x`` is
``(1 - (1 - eta)^tau_i) (c_i - x)``, so fixed points of FedAvg, FedNova,
buffered or reweighted rounds follow in closed form. It keeps every delta it
made, by (the round it trained from, node).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tessera.weights import Vector


@dataclass(frozen=True, kw_only=True)
class TableRows:
    """The requested nodes' rows, in the order asked (the simulator's ``TrainOutput``)."""

    deltas: npt.NDArray[np.float32]
    num_samples: npt.NDArray[np.int64]
    loss: npt.NDArray[np.float32]
    loss_before: npt.NDArray[np.float32] | None = None  # a table measures no quality
    norm: npt.NDArray[np.float32] | None = None
    labels: npt.NDArray[np.int64] | None = None
    steps: npt.NDArray[np.int64] | None = None  # local steps taken (FedNova, deadlines)


class TableTrainer:
    """Node ``i``'s update is ``table[i]`` (uniform in ``±scale``); records each batch's size."""

    def __init__(
        self, samples: npt.ArrayLike, *, dim: int, seed: int = 0, scale: float = 1.0
    ) -> None:
        self.samples = np.asarray(samples, np.int64)
        rng = np.random.default_rng(seed)
        n = len(self.samples)
        self.table = rng.uniform(-scale, scale, size=(n, dim)).astype(np.float32)
        self.loss = rng.uniform(0, 3, size=n).astype(np.float32)
        self.calls: list[int] = []  # how many nodes each call trained

    def train(
        self,
        global_weights: Vector,  # noqa: ARG002 (the table ignores the model)
        nodes: npt.NDArray[np.int64],
        seed: int,  # noqa: ARG002
        *,
        prox_mu: float | None = None,  # noqa: ARG002
        round: int = 0,  # noqa: ARG002 (the table's rows are the same every round)
        quality: bool = False,  # noqa: ARG002
    ) -> TableRows:
        self.calls.append(len(nodes))
        return TableRows(
            deltas=self.table[nodes], num_samples=self.samples[nodes], loss=self.loss[nodes]
        )

    def mean(self, included: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
        """The sample-weighted mean update of the ``included`` nodes (a boolean mask)."""
        w = self.samples[included].astype(np.float64)
        mean: npt.NDArray[np.float64] = (self.table[included] * w[:, None]).sum(0) / w.sum()
        return mean


class QuadraticTrainer:
    """Node ``i``: optimum ``optima[i]``, ``steps[i]`` gradient steps of rate ``eta``."""

    def __init__(
        self,
        optima: npt.ArrayLike,
        *,
        samples: npt.ArrayLike,
        steps: npt.ArrayLike | None = None,
        eta: float = 0.01,
    ) -> None:
        self.optima = np.asarray(optima, np.float64)
        self.samples = np.asarray(samples, np.int64)
        n = self.samples.shape[0]
        self.steps = np.ones(n, np.int64) if steps is None else np.asarray(steps, np.int64)
        self.eta = eta
        self.caps: list[npt.NDArray[np.int64] | None] = []  # each call's ``max_steps``
        self.deltas: dict[tuple[int, int], npt.NDArray[np.float32]] = {}  # (round, node)
        self.bases: dict[int, list[int]] = {}  # node -> the rounds it trained from

    def train(
        self,
        global_weights: Vector,
        nodes: npt.NDArray[np.int64],
        seed: int,  # noqa: ARG002 (deterministic)
        *,
        prox_mu: float | None = None,  # noqa: ARG002
        round: int = 0,
        quality: bool = False,  # noqa: ARG002
        max_steps: npt.NDArray[np.int64] | None = None,
    ) -> TableRows:
        self.caps.append(max_steps)
        tau = self.steps[nodes] if max_steps is None else np.minimum(self.steps[nodes], max_steps)
        x = global_weights.astype(np.float64)
        shrink = 1.0 - (1.0 - self.eta) ** tau
        deltas = (shrink[:, None] * (self.optima[nodes] - x)).astype(np.float32)
        for row, node in enumerate(nodes):
            self.deltas[(round, int(node))] = deltas[row]
            self.bases.setdefault(int(node), []).append(round)
        loss = 0.5 * ((self.optima[nodes] - x) ** 2).sum(1)
        return TableRows(
            deltas=deltas,
            num_samples=self.samples[nodes],
            loss=loss.astype(np.float32),
            steps=tau.astype(np.int64),
        )

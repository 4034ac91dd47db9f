"""Secure rounds over a ``TableTrainer`` in the simulator, in one call: what a test of
the coordinator's arithmetic (a policy, a bound, a robust combination) needs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tessera.ids import JobId, NodeId
from tessera.protocol import RoundParams, make_strategy
from tessera.protocol.node import Node
from tessera.protocol.secure_coordinator import SecureCoordinator, SecureParams
from tessera.runtime.sim import DeviceModel, RoundStats, Simulation
from tessera.runtime.sim.secure import build_secure
from tessera.testing.trainers import TableTrainer


def table_rounds(
    trainer: TableTrainer,
    secure: SecureParams,
    *,
    rounds: int = 1,
    job_id: str = "table",
    before: Callable[[SecureCoordinator, list[Node]], None] | None = None,
) -> list[RoundStats]:
    """Run ``rounds`` secure rounds of node ``i`` sending ``trainer.table[i]`` (ids
    ``node-000000`` on, every node every round, none dropping); ``before`` sees the
    coordinator and the nodes' machines first (to rate contributors, or to swap an
    adversary in). ``job_id`` seeds the trees. Each round's stats, in order."""
    n = len(trainer.samples)
    nodes = [NodeId(f"node-{i:06d}") for i in range(n)]
    coordinator, machines = build_secure(
        nodes,
        params=RoundParams(job_id=JobId(job_id), rounds=rounds, round_timeout=1e4),
        secure=secure,
        initial_weights=np.zeros(trainer.table.shape[1], np.float32),
        strategy=make_strategy("fedavg"),
        seed=0,
    )
    if before is not None:
        before(coordinator, machines)
    stats: list[RoundStats] = []
    Simulation(
        coordinator,
        nodes,
        trainer,
        DeviceModel.sample(n, dropout=0.0, speed_sigma=0.0, samples_per_second=50, seed=0),
        trainer.samples,
        local_epochs=1,
        seed=0,
        on_round=stats.append,
        machines=machines,
    ).run()
    return stats

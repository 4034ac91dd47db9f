"""A disturbed deployment against an undisturbed run: the simulator replaying who took part.

A fault test records every round the deployment closed and the model after it;
the simulator, told exactly which contributors were in each round and whose
aggregator seats were silent, is the run of the same seed that nothing
disturbed (when nobody missed a round, it is that run itself). Both run the
same machines in the same ``runtime.host.Host``, so the models must be equal
bit for bit: each node holds the simulator's keys (``simulation_keyed``, which
secure rounds need: a node's rounding coins into the ring are keyed by them),
and each node trains alone (``chunk_elements = 1``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tessera.config import JobConfig, load_config
from tessera.deploy.local import Deployment
from tessera.jobs.records import RoundRecord
from tessera.runtime.sim.devices import DeviceModel
from tessera.runtime.sim.job import simulate
from tessera.runtime.sim.secure import simulation_keys
from tessera.storage.keyfile import load_keys, save_keys
from tessera.weights import Vector

EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "tessera" / "examples"


@dataclass(frozen=True)
class Replay(DeviceModel):
    """The deployment's rounds replayed: exactly who was in each round, whose seats fell silent."""

    included: tuple[frozenset[str], ...] = ()
    node_ids: tuple[str, ...] = ()
    silent: Mapping[int, frozenset[str]] = field(default_factory=dict)  # round -> nodes

    def dropped(self, round: int) -> npt.NDArray[np.bool_]:
        return np.array([n not in self.included[round] for n in self.node_ids])

    def aggregator_failed(self, round: int) -> npt.NDArray[np.bool_]:
        quiet = self.silent.get(round, frozenset())
        return np.array([n in quiet for n in self.node_ids])

    def training_seconds(self, node: int, samples: int, epochs: int) -> float:
        return 0.01


def replay(
    dep: Deployment,
    included: Sequence[frozenset[str]],
    *,
    job_id: str,
    secure: bool,
    beacon: bytes | None = None,
    silent: Mapping[int, frozenset[str]] | None = None,
) -> tuple[list[RoundRecord], list[Vector], Vector]:
    """The simulator's training rounds, its model after each, and its final model.

    ``included`` holds the training rounds' contributors (records' ``included``);
    ``silent`` is keyed by the protocol's round (a record's ``round``), which counts
    the job's statistics rounds first."""
    nodes = tuple(dep.node_id(i) for i in range(dep.n_nodes))
    everyone = frozenset(nodes)  # the statistics rounds, before any fault goes in
    included = [*(everyone,) * dep.statistics_rounds, *included]
    devices = Replay(
        speed=np.ones(len(nodes)),
        dropout=0.0,
        samples_per_second=1.0,
        seed=0,
        included=tuple(included),
        node_ids=nodes,
        silent=dict(silent or {}),
    )
    # The same job id (and beacon) in every tree seed, envelope and rounding coin.
    job = replace(dep.job, job_id=job_id)
    if beacon is not None:
        job = replace(job, beacon=beacon)
    models: list[Vector] = []
    sim = simulate(job, secure=secure, devices=devices, on_round=lambda _, w: models.append(w))
    return list(sim.rounds), models, sim.weights


def assert_replayed(
    dep: Deployment,
    records: Sequence[RoundRecord],
    models: Sequence[Vector],
    final: Vector,
    *,
    job_id: str,
    secure: bool,
    beacon: bytes | None = None,
    silent: Mapping[int, frozenset[str]] | None = None,
) -> list[RoundRecord]:
    """Every round's model and the final one equal the replay's, bit for bit; its rounds."""
    rounds, simulated, weights = replay(
        dep,
        [frozenset(r.included) for r in records],
        job_id=job_id,
        secure=secure,
        beacon=beacon,
        silent=silent,
    )
    assert [r.included for r in rounds] == [r.included for r in records]
    for r, (ours, theirs) in enumerate(zip(models, simulated, strict=True)):
        assert np.array_equal(ours, theirs), f"round {r}: max diff {np.abs(ours - theirs).max()}"
    assert np.array_equal(final, weights)
    return rounds


def replayable_job(
    *, rounds: int, secure: bool, round_timeout: float, group_size: int = 4
) -> JobConfig:
    """Chem97 for a fault test: every node in every round, no baseline, and each node
    training alone, so the replay is exact."""
    cfg = load_config(EXAMPLES / "chem97.toml")
    return cfg.model_copy(
        update={
            "federation": cfg.federation.model_copy(
                update={
                    "rounds": rounds,
                    "fraction": 1.0,
                    "min_participants": 1,
                    "round_timeout": round_timeout,
                }
            ),
            "secure": cfg.secure.model_copy(
                update={"enabled": secure, "phase_timeout": 3.0, "group_size": group_size}
            ),
            "baseline": cfg.baseline.model_copy(update={"enabled": False}),
            # One node per training call: bit-identical to a node training alone.
            "simulation": cfg.simulation.model_copy(update={"chunk_elements": 1}),
        }
    )


def simulation_keyed(dep: Deployment) -> None:
    """Give every node the keys the simulator derives for it (in place of fresh ones)."""
    for i in range(dep.n_nodes):
        path = dep.out / "nodes" / f"{i:06d}" / "node.key"
        save_keys(simulation_keys(dep.config.job.seed, dep.node_id(i)), path, overwrite=True)
    dep._node_keys = [
        load_keys(dep.out / "nodes" / f"{i:06d}" / "node.key") for i in range(dep.n_nodes)
    ]

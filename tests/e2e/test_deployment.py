"""A real deployment on loopback: coordinator, provider and 20 node processes.

Three secure rounds on Chem97 schools over TLS; a node is killed (SIGKILL) in
round 2 and the coordinator is killed and restarted in round 3. The final
model must equal the simulator's for the same survivors and seed: the
deployment drives the same machines, only the carriers differ.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from tessera.config import JobConfig, load_config
from tessera.deploy.local import Deployment
from tessera.deploy.up import run_job
from tessera.jobs.prepared import round_params_of, secure_params_of
from tessera.jobs.records import RoundRecord
from tessera.protocol import TreeCheck
from tessera.runtime.sim.devices import DeviceModel
from tessera.runtime.sim.job import simulate
from tessera.weights import Vector

NODES = 20
EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "tessera" / "examples"


def e2e_config() -> JobConfig:
    cfg = load_config(EXAMPLES / "chem97.toml")
    return cfg.model_copy(
        update={
            "federation": cfg.federation.model_copy(
                update={"rounds": 3, "fraction": 1.0, "min_participants": 1, "round_timeout": 10.0}
            ),
            "secure": cfg.secure.model_copy(update={"phase_timeout": 1.5, "group_size": 10}),
            "baseline": cfg.baseline.model_copy(update={"enabled": False}),
        }
    )


@dataclass(frozen=True)
class Replay(DeviceModel):
    """The deployment's rounds replayed: exactly who was in each round."""

    included: tuple[frozenset[str], ...] = ()
    node_ids: tuple[str, ...] = ()
    dead: int = -1  # the killed node: its aggregator seats are silent from round 3 on

    def dropped(self, round: int) -> npt.NDArray[np.bool_]:
        return np.array([n not in self.included[round] for n in self.node_ids])

    def aggregator_failed(self, round: int) -> npt.NDArray[np.bool_]:
        failed = np.zeros(len(self.node_ids), bool)
        failed[self.dead] = round >= 2
        return failed

    def training_seconds(self, node: int, samples: int, epochs: int) -> float:
        return 0.01


def only_contributes(dep: Deployment, rounds: range) -> int:
    """A node that holds no aggregator seat (nor a backup) in ``rounds``.

    Killed mid-round, it then has one effect to replay: whether its update
    made it in, which the coordinator records. In later rounds it is dead
    from the start, as an aggregator too, which the replay knows.
    """
    cfg = dep.config
    nodes = [dep.node_id(i) for i in range(NODES)]
    orgs = dict(zip(nodes, dep.job.organisations or [None] * NODES, strict=True))
    check = TreeCheck(
        round_params_of(cfg), nodes, secure_params_of(cfg, clip_norm=1.0, max_weight=1.0).tree, orgs
    )
    seated = {n for r in rounds for g in check.tree(r).groups for n in (*g.aggregators, *g.backups)}
    return next(i for i, n in enumerate(nodes) if n not in seated)


# Both backends on one worker, one after the other: two deployments at once on 2 cores
# slow the rounds past the moments the test kills a node and the coordinator.
@pytest.mark.xdist_group("deployment")
def test_deployment_survives_kills_and_equals_the_simulator(tmp_path: Path, db_url: str) -> None:
    dep = Deployment(e2e_config(), NODES, tmp_path / "up", tls=True, db_url=db_url)
    records: list[RoundRecord] = []
    killed_index = only_contributes(dep, range(1, 2))
    landed: list[bool] = []

    def on_round(rec: RoundRecord, _weights: Vector) -> None:
        records.append(rec)
        if rec.round == 0:
            # Freeze the node first, then look: if round 2 is still open, it vanished
            # mid-round 2 (its update may or may not have made it: the replay knows).
            victim = dep.processes[dep.node_id(killed_index)].popen
            victim.send_signal(signal.SIGSTOP)
            with dep.client() as client:
                landed.append(client.status(dep.config.job.name)["current_round"] == 1)
            dep.kill_node(killed_index)
        elif rec.round == 1:
            time.sleep(0.3)  # round 3 is in flight
            dep.stop_coordinator(kill=True)
            dep.start_coordinator()  # same database, same port: it resumes

    try:
        result = run_job(dep, on_round=on_round, timeout=240, poll=0.05)
    finally:
        dep.close()

    assert [r.round for r in records] == [0, 1, 2]
    assert all(not r.skipped for r in records)
    assert all(r.bytes_up > 0 and r.bytes_down > 0 for r in records)  # counted from the mailbox
    assert len(records[0].included) == NODES  # everyone alive in round 1
    killed = dep.node_id(killed_index)
    if landed == [True]:  # rounds are ~1 s: under load the kill may come a round late
        assert killed not in records[2].included  # dead by round 3
    assert records[2].participants >= NODES - 2

    replay = Replay(
        speed=np.ones(NODES),
        dropout=0.0,
        samples_per_second=1.0,
        seed=0,
        included=tuple(frozenset(r.included) for r in records),
        node_ids=tuple(dep.node_id(i) for i in range(NODES)),
        dead=killed_index,
    )
    sim = simulate(dep.job, secure=True, devices=replay)
    assert [r.included for r in sim.rounds] == [r.included for r in records]
    # Equal up to stochastic rounding into the ring (2^-frac_bits per term).
    np.testing.assert_allclose(result.weights, sim.weights, atol=1e-4)
    assert not np.allclose(result.weights, dep.job.initial_weights)
    logs = "".join(p.log.read_text() for p in dep.processes.values())
    assert "Traceback" not in logs


@pytest.fixture
def db_url(store_url: str) -> str:
    """The coordinator's database: SQLite, then a real PostgreSQL server."""
    return store_url

"""Fault injection: the coordinator's PostgreSQL server restarts under a deployed job.

A plaintext Chem97 job over three node processes runs with the coordinator's
store on a private PostgreSQL server (``private_postgres``). A seeded thread
stops the server twice at random moments of the job, fast (sessions ended,
a checkpoint) or immediate (a crash: WAL replayed at the start), and starts it
again a moment later. The job must end, every round recorded once, a skipped
round saying why; the model after every round must be the one the simulator
makes replaying who took part (when nobody missed a round, an undisturbed
run's); the coordinator's log must hold no traceback (the outage is a
warning, not an error storm); and no process may be left behind.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Literal

import pytest

from tessera.deploy.local import Deployment
from tessera.deploy.up import run_job
from tessera.jobs.records import RoundRecord
from tessera.testing.postgres import PostgresCluster
from tessera.weights import Vector

from .replay import assert_replayed
from .test_faults_chaos import chaos_config

NODES = 3
ROUNDS = 30  # the two outages land well before the end
OUTAGES = 2

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("one_deployment_at_a_time")]


class Outages(threading.Thread):
    """Stops the server at seeded random moments once the job runs, and starts it again."""

    def __init__(self, pg: PostgresCluster, mode: Literal["fast", "immediate"], seed: int) -> None:
        super().__init__(daemon=True)
        self.pg, self.mode = pg, mode
        self.rng = random.Random(seed)
        self.running = threading.Event()  # set at the first round's close: the job runs
        self.stop = threading.Event()
        self.done = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.running.wait(0.1):
                if self.stop.is_set():
                    return
            for _ in range(OUTAGES):
                if self.stop.wait(self.rng.uniform(0.5, 2.0)):
                    return
                self.pg.stop(self.mode)
                self.stop.wait(self.rng.uniform(1.0, 3.0))  # down a while, even when told to stop
                self.pg.start()
                self.done += 1
        except BaseException as exc:  # the test reports it
            self.error = exc


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_database_restart_leaves_the_model_of_an_undisturbed_run(
    tmp_path: Path, private_postgres: PostgresCluster, mode: Literal["fast", "immediate"]
) -> None:
    cfg = chaos_config()
    cfg = cfg.model_copy(
        update={"federation": cfg.federation.model_copy(update={"rounds": ROUNDS})}
    )
    dep = Deployment(cfg, NODES, tmp_path / "up", tls=True, db_url=private_postgres.url)
    records: list[RoundRecord] = []
    deployed: list[Vector] = []
    outages = Outages(private_postgres, mode, seed=7)
    outages.start()

    def on_round(rec: RoundRecord, weights: Vector) -> None:
        records.append(rec)
        deployed.append(weights.copy())
        outages.running.set()

    try:
        result = run_job(dep, on_round=on_round, timeout=400, poll=0.1)
    finally:
        outages.stop.set()
        outages.join(60)
        report = dep.close()
    assert outages.error is None, outages.error
    assert report.killed == (), report.line()
    assert all(not p.alive() for p in dep.processes.values())
    assert outages.done == OUTAGES, f"the job ended before the outages: {outages.done}"

    assert [r.round for r in records] == list(range(ROUNDS))
    for r in records:  # a round lost to the outage says which (this one) and why
        assert r.skipped == (r.skip_reason is not None), r
    assert_replayed(dep, records, deployed, result.weights, job_id=result.job_id, secure=False)
    log = (dep.out / "logs" / "coordinator.log").read_text()
    assert "Traceback" not in log, log[log.index("Traceback") :][:3000]

"""Fault injection: every party SIGKILLed at random points of a deployed job, restarted.

A plaintext Chem97 job over four node processes runs while a seeded chaos
thread kills (SIGKILL: no cleanup) the coordinator, the data provider or a
node at random moments, several times, and restarts each on the same state
(database, key and state folder, port). The job must end, every round
recorded once, a skipped round saying why; and the model after every round
must be the very one an undisturbed run of the same seed makes with the
same participants: the simulator, replaying who was in each round, is that
run (when nobody missed a round, it is the undisturbed run itself). No
process may be left behind.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import pytest

from tessera.config import JobConfig
from tessera.deploy.local import Deployment
from tessera.deploy.up import run_job
from tessera.jobs.records import RoundRecord
from tessera.weights import Vector

from .replay import assert_replayed, replayable_job

NODES = 4
ROUNDS = 100  # enough that the four kills land before the end, on a quiet machine too

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("one_deployment_at_a_time")]


def chaos_config() -> JobConfig:
    return replayable_job(rounds=ROUNDS, secure=False, round_timeout=15.0)


class Chaos(threading.Thread):
    """Kills the coordinator, the provider and two random nodes, in a seeded random order
    and at seeded random moments while the job runs; restarts each."""

    def __init__(self, dep: Deployment, *, seed: int) -> None:
        super().__init__(daemon=True)
        self.dep = dep
        self.rng = random.Random(seed)
        nodes = self.rng.sample(range(NODES), 2)
        self.victims = ["coordinator", "provider", *(dep.node_id(i) for i in nodes)]
        self.rng.shuffle(self.victims)
        self.job_id = ""
        self.running = threading.Event()  # set at the first round's close: the job runs
        self.stop = threading.Event()
        self.done: list[str] = []

    def run(self) -> None:
        while not self.running.wait(0.1):  # the start has its own checks (StartFailed)
            if self.stop.is_set():
                return
        for victim in self.victims:
            if self.stop.wait(self.rng.uniform(0.3, 1.5)):
                return
            self.dep.processes[victim].popen.send_signal(signal.SIGKILL)
            self.dep.processes[victim].popen.wait(10)
            time.sleep(self.rng.uniform(0.2, 2.0))
            if victim == "coordinator":
                self.dep.start_coordinator()  # same database, same port
            elif victim == "provider":
                self.dep.start_provider()  # same database (nonces, revocations), same port
            else:
                self.dep.start_node(self.dep.job.node_ids.index(victim), self.job_id)
            self.done.append(victim)


@pytest.mark.parametrize("seed", [1, 2])
def test_random_kills_leave_the_model_of_an_undisturbed_run(tmp_path: Path, seed: int) -> None:
    dep = Deployment(chaos_config(), NODES, tmp_path / "up", tls=True)
    records: list[RoundRecord] = []
    deployed: list[Vector] = []
    chaos = Chaos(dep, seed=seed)
    chaos.start()

    def on_round(rec: RoundRecord, weights: Vector) -> None:
        records.append(rec)
        deployed.append(weights.copy())
        chaos.running.set()

    try:
        result = run_job(
            dep,
            on_round=on_round,
            on_started=lambda job_id: setattr(chaos, "job_id", job_id),
            timeout=400,
            poll=0.1,
        )
    finally:
        chaos.stop.set()
        chaos.join(30)
        report = dep.close()
    assert report.killed == (), report.line()
    assert all(not p.alive() for p in dep.processes.values())
    assert chaos.done == chaos.victims, f"the job ended before the chaos: {chaos.done}"

    assert [r.round for r in records] == list(range(ROUNDS))
    for r in records:  # a round lost to a kill says which (this one) and why
        assert r.skipped == (r.skip_reason is not None), r
    assert_replayed(dep, records, deployed, result.weights, job_id=result.job_id, secure=False)

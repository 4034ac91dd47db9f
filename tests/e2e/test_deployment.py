"""A real deployment on loopback equals the simulator, round by round, bit for bit.

Two statistics rounds, then three secure training rounds on Chem97 schools
over TLS: round 0 totals the sketch a derived column's median needs, round 1
(each node deriving that column with round 0's median) every node's
statistics, and every node (and the AI provider) refits the job's encoding
from those totals; then a FedProx recipe, a step learning-rate schedule, a
tanh activation, dropout and distributed differential privacy: a node is
killed (SIGKILL) in round 3 (the second to train), so it drops out, and in
round 4 its aggregator seat is silent (a failing
aggregator, replaced from the backups); the coordinator is killed and
restarted in round 4. The simulator, replaying
who took part, must produce the very same global model after every round:
both run the same machines in the same ``runtime.host.Host``, only the
adapters differ. Two things make that exact rather than close: each node
holds the same keys in both (its rounding coins into the ring are keyed by
them), and the simulator trains one node at a time (batched matrix products
over many nodes round their last bits differently from a node alone).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tessera.config import DeriveEntry, JobConfig, MissingSection, PrivacySection, load_config
from tessera.deploy.local import Deployment
from tessera.deploy.up import run_job
from tessera.jobs.prepared import round_params_of, secure_params_of
from tessera.jobs.records import RoundRecord
from tessera.protocol import TreeCheck
from tessera.runtime.transport.client import ServiceRefused
from tessera.weights import Vector

from .replay import assert_replayed, simulation_keyed

NODES = 20
#: Rounds 0 and 1 count statistics (a median, then the plan); training is 2 to 4.
FIRST = 2
EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "tessera" / "examples"


def e2e_config() -> JobConfig:
    cfg = load_config(EXAMPLES / "chem97.toml")
    return cfg.model_copy(
        update={
            "federation": cfg.federation.model_copy(
                update={"rounds": 3, "fraction": 1.0, "min_participants": 1, "round_timeout": 20.0}
            ),
            # Round 3 has a silent seat to replace and a coordinator restart: phases long
            # enough that a loaded machine does not also drop a whole group on a deadline.
            "secure": cfg.secure.model_copy(update={"phase_timeout": 3.0, "group_size": 10}),
            "baseline": cfg.baseline.model_copy(update={"enabled": False}),
            # FedProx: the recipe's proximal term, which every runtime must honour; a
            # learning rate that changes every round, which every node must follow.
            "recipe": cfg.recipe.model_copy(
                update={"prox_mu": 0.5, "lr_schedule": "step", "lr_step_every": 1, "lr_gamma": 0.7}
            ),
            # Model options: a tanh activation and dropout, seeded alike everywhere.
            "model": cfg.model.model_copy(update={"activation": "tanh", "dropout": 0.2}),
            # Derived features and imputation: the encoding starts from the provider's
            # catalogue (no aggregates asked), each node derives and fills its own
            # records the same way, every number refitted from the statistics rounds
            # (the median first: "above" cannot be counted before it is known).
            "data": cfg.data.model_copy(
                update={
                    "features": [*cfg.data.features, "strong", "above"],
                    "derive": [
                        DeriveEntry(name="strong", expr="bin(gcsescore, 5, 6, 7)"),
                        DeriveEntry(name="above", expr="gcsescore > median(gcsescore)"),
                    ],
                    "missing": MissingSection(default="impute"),
                }
            ),
            # Distributed DP: every node adds its share of noise, keyed by its own key, so
            # the replay (the same keys) adds the very same noise. The statistics rounds
            # are released exact here: the median checked below is the nodes' own (their
            # noised release is tests/runtime_sim/test_private_statistics.py's).
            # Provisioned for a fifth of a round missing (the killed node, and nodes a loaded
            # CI machine makes late): no round is refused for spending past the budget.
            "privacy": PrivacySection(epsilon=50.0, statistics=False, dropout_margin=0.2),
            # One node per training call: bit-identical to a node training alone.
            "simulation": cfg.simulation.model_copy(update={"chunk_elements": 1}),
        }
    )


class KillWhenOpen(threading.Thread):
    """Freezes the ``victim`` (SIGSTOP) the moment the coordinator opens ``round``, then
    kills it. The victim depends on the trees, which depend on the job's beacon: it is
    chosen once the participants' reveals have fixed it."""

    def __init__(self, dep: Deployment, *, round: int) -> None:
        super().__init__(daemon=True)
        self.dep, self.round = dep, round
        self.stop = threading.Event()
        self.index = -1
        self.job_id = ""  # derived from the job's document: known once it is submitted
        self.beacon = b""
        self.frozen_in: int | None = None  # the round that was open when it froze

    def run(self) -> None:
        while not (self.job_id and len(self.dep.processes) > NODES):
            if self.stop.wait(0.05):
                return
        with self.dep.client(patience=5) as client:
            while not self.stop.wait(0.02):
                try:
                    status = client.status(self.job_id)
                except ServiceRefused:  # not submitted yet
                    continue
                if self.index < 0 and status.get("beacon"):
                    self.beacon = bytes.fromhex(status["beacon"])
                    self.index = victim(self.dep, self.job_id, self.beacon)
                current = status.get("current_round") if self.index >= 0 else None
                if current is not None and current >= self.round:
                    name = self.dep.node_id(self.index)
                    self.dep.processes[name].popen.send_signal(signal.SIGSTOP)
                    self.frozen_in = current
                    self.dep.kill_node(self.index)
                    return


def victim(dep: Deployment, job_id: str, beacon: bytes) -> int:
    """A node with no seat (nor a backup's) in the second training round and an
    aggregator's seat in the third.

    Killed mid-round, it then has one effect to replay: whether its update
    made it in, which the coordinator records. In the next it is dead from the
    start: a dropped contributor, and an aggregator whose seat a backup takes.
    The beacon is the nodes' fresh secrets: for about one in fifty, no node
    holds a seat in the third round after none in the second; then the victim
    is one with no seat in either, a dropped contributor only (a seat's
    replacement is also tests/e2e/test_faults_network.py's).
    """
    cfg = dep.config
    nodes = [dep.node_id(i) for i in range(NODES)]
    orgs = dict(zip(nodes, dep.job.organisations or [None] * NODES, strict=True))
    tree = secure_params_of(cfg, clip_norm=1.0, max_weight=1.0, classes=2).tree
    check = TreeCheck(round_params_of(cfg, job_id=job_id), nodes, tree, orgs, beacon=beacon)
    seated = {n for g in check.tree(FIRST + 1).groups for n in (*g.aggregators, *g.backups)}
    serving = {n for g in check.tree(FIRST + 2).groups for n in g.aggregators}
    free = [i for i, n in enumerate(nodes) if n not in seated]
    return next((i for i in free if nodes[i] in serving), free[0])


# One deployment at a time: two at once on 2 cores slow the rounds past the moments the
# test kills a node and the coordinator.
# In the fault group (pytest -m faults, run by CI after the default suite): a node and the
# coordinator are killed mid-job.
@pytest.mark.faults
@pytest.mark.usefixtures("one_deployment_at_a_time")
def test_deployment_survives_kills_and_equals_the_simulator(tmp_path: Path, db_url: str) -> None:
    dep = Deployment(e2e_config(), NODES, tmp_path / "up", tls=True, db_url=db_url)
    simulation_keyed(dep)
    records: list[RoundRecord] = []
    deployed: list[Vector] = []
    # Watch the coordinator itself, not the AI provider's evaluated rounds (which
    # lag): the victim is frozen within a poll of its round opening, killed after.
    killer = KillWhenOpen(dep, round=FIRST + 1)  # the second round to train
    killer.start()

    def on_round(rec: RoundRecord, weights: Vector) -> None:
        records.append(rec)
        deployed.append(weights.copy())
        if rec.round == FIRST + 1:
            time.sleep(0.3)  # the last round is in flight
            dep.stop_coordinator(kill=True)
            dep.start_coordinator()  # same database, same port: it resumes

    try:
        result = run_job(
            dep,
            on_round=on_round,
            on_started=lambda job_id: setattr(killer, "job_id", job_id),
            timeout=240,
            poll=0.05,
        )
    finally:
        killer.stop.set()
        killer.join(10)
        dep.close()

    assert [r.round for r in records] == [FIRST, FIRST + 1, FIRST + 2]
    # The signed job holds no statistic of anyone: the schema's categories and classes,
    # placeholder numbers, which every party refitted from the statistics rounds' totals.
    body = json.loads((dep.out / "run" / "job.json").read_text())["body"]
    assert body["statistics"] is True
    assert {(c["mean"], c["std"]) for c in body["preprocessing"]["columns"] if "mean" in c} == {
        (0.0, 1.0)
    }
    assert body["preprocessing"]["derive"][1]["statistics"] == {"median(gcsescore)": 0.0}
    refit = dep.job.preprocessor  # the AI provider's, from the totals
    assert refit is not None
    # Chem97 misses no gcsescore: the nodes' encoded column, unscaled, is every value.
    gcse = next(c for c in refit.columns if c.name == "gcsescore")
    column = refit.feature_names.index("gcsescore")
    values = dep.job.x[:, column].astype(np.float64) * gcse.std + gcse.mean
    median = dict(refit.derive[1].statistics)[("median", "gcsescore")]
    assert median == pytest.approx(float(np.median(values)), rel=0.01)
    seen = [(r.round, r.participants, r.skipped, r.blamed, r.epsilon) for r in records]
    assert all(not r.skipped for r in records), seen
    epsilons = [r.epsilon for r in records]  # the budget spent round by round, under 50
    assert epsilons == sorted(epsilons) and 0 < epsilons[-1] <= 50.0
    assert all(r.bytes_up > 0 and r.bytes_down > 0 for r in records)  # counted from the mailbox
    # The driver records each round's tree shape, as the simulator does (the report's tree).
    for r in records:  # (members, leaf groups of that size) pairs: every selected node seated
        pairs = r.tree_leaf_sizes
        seated = sum(a * b for a, b in zip(pairs[::2], pairs[1::2], strict=True))
        assert r.tree_levels and seated == r.selected
    assert len(records[0].included) == NODES  # everyone alive in the first training round
    assert killer.frozen_in == FIRST + 1, "the victim was not frozen in its round"
    killed_index = killer.index
    assert dep.node_id(killed_index) not in records[2].included  # dead by the last round
    assert records[2].participants >= NODES - 2

    # The simulator replays the deployment's trees: the same job id and beacon in every
    # tree seed (and the job id in every envelope and rounding coin). The victim is dead
    # from the start of the last round: its aggregator seat there is silent.
    sim_rounds = assert_replayed(
        dep,
        records,
        deployed,
        result.weights,
        job_id=killer.job_id,
        secure=True,
        beacon=killer.beacon,
        silent={FIRST + 2: frozenset({dep.node_id(killed_index)})},
    )
    assert sim_rounds[2].aggregators_failed == 1  # the victim, dead in the last round
    assert not np.allclose(result.weights, dep.job.initial_weights)
    logs = "".join(p.log.read_text() for p in dep.processes.values())
    assert "Traceback" not in logs


@pytest.fixture
def db_url(postgres_store_url: str) -> str:
    """The coordinator's database: a real PostgreSQL server, the production one.

    Skipped where no server answers, except under ``CI=true``, where it fails
    (tests/conftest.py). SQLite under a whole deployment is exercised by the
    other deployments (tests/e2e/test_contributions_up.py,
    tests/security/test_secrets_at_rest.py), and a coordinator's restart from
    SQLite by tests/coordinator/test_restart.py: running this 2.5-minute scenario
    on both kept the suite over its 10-minute budget.
    """
    return postgres_store_url

"""Run a prepared job in the simulator, and its centralized baseline.

The AI provider's side lives here too: after every round it evaluates the
new global model on its own held-out test set. Nodes never see that set.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from tessera.ids import COORDINATOR
from tessera.jobs.prepared import PreparedJob
from tessera.jobs.records import (
    BaselineResult,
    RoundRecord,
    SimulationResult,
    quality_fields,
    tree_fields,
)
from tessera.jobs.secure import secure_params
from tessera.protocol import Coordinator
from tessera.protocol.effects import GroupSum
from tessera.protocol.events import ContributorsRated
from tessera.protocol.node import Node
from tessera.protocol.noise import Budget
from tessera.runtime.sim import profiles
from tessera.runtime.sim.backends import Backend
from tessera.runtime.sim.deadline import Deadline
from tessera.runtime.sim.devices import DeviceModel
from tessera.runtime.sim.poison import ScaledUpdates
from tessera.runtime.sim.secure import build_secure
from tessera.runtime.sim.simulator import RoundStats, Simulation
from tessera.training import BatchedTrainer
from tessera.training.evaluate import Scores, scores
from tessera.weights import Vector


def holdout_scores(job: PreparedJob, weights: Vector) -> Scores:
    """The AI provider scores a model on its own test set (NaN when it has none):
    accuracy or R², and a regression's RMSE and MAE on the target's own scale."""
    if len(job.test.y) == 0:
        return Scores(float("nan"))
    pre = job.preprocessor
    return scores(
        job.spec,
        weights,
        job.test.x,
        job.test.y,
        job.task,
        to_target=None if pre is None else pre.target_from_model,
    )


def job_devices(job: PreparedJob) -> DeviceModel:
    """The simulated devices ``[simulation]`` names: a device profile's, or one
    log-normal speed distribution and one dropout for all (no ``profile``)."""
    sim_cfg, seed = job.config.simulation, job.config.job.seed
    if sim_cfg.profile is not None:
        return profiles.from_config(job.n_nodes, sim_cfg, seed)
    return DeviceModel.sample(
        job.n_nodes,
        dropout=sim_cfg.dropout,
        speed_sigma=sim_cfg.speed_sigma,
        samples_per_second=sim_cfg.samples_per_second,
        seed=seed,
        aggregator_failure=sim_cfg.aggregator_failure,
    )


def job_deadline(job: PreparedJob) -> Deadline | None:
    """The job's deadline rounds (``[deadline]``), or None: every node does all its work."""
    d = job.config.deadline
    if d is None:
        return None
    return Deadline(d.seconds, job.recipe.batch_size, partial_work=d.partial_work)


def simulate(
    job: PreparedJob,
    on_round: Callable[[RoundRecord, Vector], None] | None = None,
    *,
    secure: bool | None = None,
    devices: DeviceModel | None = None,
    charge_compute: bool = False,
    on_groups: Callable[[int, tuple[GroupSum, ...], Vector], ContributorsRated | None]
    | None = None,
    backend: Backend | None = None,
) -> SimulationResult:
    """Run the job; ``on_round`` sees each round's record and new global weights.

    ``on_groups`` sees, before ``on_round``, each round's number, the leaf groups'
    sums it disclosed (a job with ``[contributions]``; else none) and the global
    model that round started from: what group-level valuation needs. What it
    returns (the contribution policy's verdicts) reaches the coordinator at once,
    so it holds from the next round opened.

    ``devices`` replaces the config's simulated devices (``job_devices``), e.g.
    to replay exactly who took part in each round of a deployment.
    ``charge_compute`` spends each node's and the coordinator's measured protocol
    CPU time on the virtual clock (see ``Simulation``).
    ``backend`` does the nodes' sharing and opening on other cores
    (``runtime.sim.backends``; None: all on this thread); same results.
    """
    cfg = job.config
    sim_cfg = cfg.simulation
    batched = BatchedTrainer(
        job.spec, job.recipe, job.x, job.y, job.offsets, max_chunk_elements=sim_cfg.chunk_elements
    )
    trainer: BatchedTrainer | ScaledUpdates = batched
    if job.scaled:  # [simulation.poison]: these nodes send their update scaled
        trainer = ScaledUpdates(batched, job.scaled, sim_cfg.poison.scale)
    secure = cfg.secure.enabled if secure is None else secure
    vectors = job.statistics_vectors
    machines: list[Node] | None = None
    coordinator: Coordinator
    if secure:
        coordinator, machines = build_secure(
            job.node_ids,
            params=job.round_params(),
            secure=secure_params(job),
            initial_weights=job.initial_weights,
            strategy=job.strategy(),
            seed=cfg.job.seed,
            organisations=job.organisations,
        )
        if job.statistics_spent and coordinator.budget is not None:
            # The fit's noised statistics rounds were releases: the ledger starts with them.
            coordinator.budget = Budget(coordinator.budget.privacy, list(job.statistics_spent))
    else:
        coordinator = Coordinator(
            job.round_params(), job.node_ids, job.initial_weights, job.strategy()
        )
    devices = devices or job_devices(job)
    records: list[RoundRecord] = []
    started_from = [job.initial_weights]  # the global model the open round trains from

    def record(stats: RoundStats) -> None:
        closed = stats.closed
        if on_groups is not None:
            verdicts = on_groups(closed.round, stats.group_sums, started_from[0])
            if verdicts is not None:
                sim.tell(COORDINATOR, verdicts)
        started_from[0] = closed.weights
        score = holdout_scores(job, closed.weights)
        rec = RoundRecord(
            round=closed.round,
            value=score.value,
            rmse=score.rmse,
            mae=score.mae,
            participants=closed.participants,
            selected=closed.selected,
            num_samples=closed.num_samples,
            dropped=stats.dropped,
            late=stats.late,
            stragglers=stats.stragglers,
            partial=stats.partial,
            mean_steps=stats.mean_steps,
            skipped=closed.skipped,
            skip_reason=closed.skip_reason,
            train_loss=closed.mean_loss,
            closed_at=closed.closed_at,
            seconds=stats.seconds,
            virtual_seconds=stats.closed_at,
            bytes_up=stats.bytes_up,
            bytes_down=stats.bytes_down,
            bytes_aggregation=stats.bytes_aggregation,
            aggregators_failed=stats.aggregators_failed,
            blamed=closed.blamed,
            excluded=tuple(f"{node} ({why})" for node, why in closed.excluded),
            declined=tuple(f"{node} ({why})" for node, why in closed.declined),
            capped=closed.capped,
            epsilon=math.nan if closed.epsilon is None else closed.epsilon,
            included=closed.included,
            staleness=closed.staleness,
            **quality_fields(closed.quality),
            **tree_fields(closed.tree),
            virtual_round_seconds=stats.virtual_round_seconds,
            cpu_seconds=stats.cpu_seconds,
            coordinator_cpu_seconds=stats.coordinator_cpu_seconds,
        )
        records.append(rec)
        if on_round is not None:
            on_round(rec, closed.weights)

    sim = Simulation(
        coordinator,
        job.node_ids,
        trainer,
        devices,
        job.node_samples,
        local_epochs=job.recipe.local_epochs,
        seed=cfg.job.seed,
        latency=sim_cfg.latency,
        bandwidth_bytes_per_s=sim_cfg.bandwidth_mbps * 1e6 / 8,
        coordinator_bandwidth_bytes_per_s=sim_cfg.coordinator_bandwidth_mbps * 1e6 / 8,
        contention=sim_cfg.contention,
        downlink=sim_cfg.downlink,
        chunk=max(1, sim_cfg.chunk_elements // max(1, 4 * job.layout.size)),
        on_round=record,
        machines=machines,
        charge_compute=charge_compute,
        backend=backend,
        deadline=job_deadline(job),
        # A deployment's replay opens with its statistics round, as the deployment did.
        statistics=(
            None
            if vectors is None or not secure
            else lambda node, round: np.asarray(vectors[round][node])
        ),
    )
    start = time.perf_counter()
    weights = sim.run()
    elapsed = time.perf_counter() - start
    return SimulationResult(
        rounds=records,
        weights=weights,
        seconds=elapsed,
        secure=secure,
        error=sim.error,
        stopped=sim.stopped,
    )


def baseline_epochs(job: PreparedJob) -> int:
    """A budget comparable to the federation's: the same expected passes over each record."""
    if job.config.baseline.epochs is not None:
        return job.config.baseline.epochs
    fed = job.config.federation
    cohort = job.round_params().cohort_size(job.n_nodes)
    passes = fed.rounds * job.recipe.local_epochs * cohort / job.n_nodes
    return max(1, math.ceil(passes))


def centralized(
    job: PreparedJob, on_epoch: Callable[[int, int, float], None] | None = None
) -> BaselineResult:
    """Train the same model and recipe on the union of the nodes' records.

    A learning-rate schedule follows the federation's rounds: epoch ``e`` of
    ``E`` trains at the rate of round ``e * rounds // E``.
    """
    epochs = baseline_epochs(job)
    one_epoch = replace(job.recipe, local_epochs=1, prox_mu=0.0, clip_norm=None)
    offsets = np.array([0, len(job.y)], dtype=np.int64)
    trainer = BatchedTrainer(job.spec, one_epoch, job.x, job.y, offsets)
    weights = job.initial_weights.copy()
    rounds = job.config.federation.rounds
    result = BaselineResult(value=float("nan"), epochs=epochs)
    for epoch in range(epochs):
        out = trainer.train(
            weights,
            np.zeros(1, np.int64),
            seed=job.config.job.seed * 7919 + epoch,
            round=epoch * rounds // epochs,
        )
        weights = (weights + out.deltas[0]).astype(np.float32)
        score = holdout_scores(job, weights)
        result.curve.append(((epoch + 1) / epochs * rounds, score.value))
        if on_epoch is not None:
            on_epoch(epoch, epochs, score.value)
    result.value = result.curve[-1][1]
    result.rmse, result.mae = score.rmse, score.mae
    result.weights = weights
    return result

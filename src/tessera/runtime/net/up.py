"""``tessera up``: run a job through a real local deployment, end to end.

The AI provider's part happens here: it asks the data provider for the
feature encoding, signs and submits the job, then watches the rounds and
scores each aggregated model on its own held-out data, writing the same
DIR/metrics.json, model.safetensors and curves.png as ``tessera run``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tessera.config import JobConfig
from tessera.runtime.net.agent import load_or_create_keys
from tessera.runtime.net.ai_provider import build_job, fetch_preprocessing, submit, watch
from tessera.runtime.net.deployment import PROVIDER_DATASET, Deployment
from tessera.runtime.net.jobspec import JobSpec, check_tree_feasible
from tessera.runtime.sim.job import BaselineResult, RoundRecord
from tessera.training import evaluate
from tessera.weights import Vector


def with_declared_weight(cfg: JobConfig, max_weight: float) -> JobConfig:
    """A deployed secure job must declare where node weights saturate (nodes can't know)."""
    if cfg.secure.max_weight is not None:
        return cfg
    secure = cfg.secure.model_copy(update={"max_weight": max_weight})
    return cfg.model_copy(update={"secure": secure})


@dataclass
class UpResult:
    job_id: str
    rounds: list[RoundRecord]
    weights: Vector
    seconds: float


def run_job(
    dep: Deployment,
    *,
    on_round: Callable[[RoundRecord, Vector], None] | None = None,
    on_started: Callable[[str], None] | None = None,
    timeout: float | None = None,
    poll: float = 0.5,
) -> UpResult:
    """Start the services, submit the job, start the nodes, and watch it to its end."""
    t0 = time.monotonic()
    cfg = with_declared_weight(dep.config, float(dep.job.node_samples.max()))
    dep.config = cfg
    dep.start_coordinator()
    dep.start_provider()
    keys = load_or_create_keys(dep.out / "keys" / "ai-provider.key", None)
    preprocessing = fetch_preprocessing(cfg, dep.provider_url, PROVIDER_DATASET, verify=dep.verify)
    column = cfg.partition.column
    assert column is not None  # Deployment checked it
    doc, weights = build_job(
        cfg,
        keys,
        provider=dep.provider_url,
        dataset=PROVIDER_DATASET,
        user_field=column,
        preprocessing=preprocessing,
        min_consents=dep.n_nodes,
        purpose=f"train {cfg.job.name}: {cfg.job.task} of {cfg.data.target}",
    )
    # The signed job, kept beside the run: what the model's provenance points to.
    (dep.out / "run" / "job.json").write_text(json.dumps(doc.to_json(), indent=1))
    check_tree_feasible(JobSpec.from_document(doc), dep.n_nodes)  # before any node starts
    if len(dep.job.test.y):  # load the evaluation path (torch) now, not as round 1 closes
        evaluate(
            dep.job.spec, dep.job.initial_weights, dep.job.test.x, dep.job.test.y, dep.job.task
        )
    with dep.client() as client:
        job_id = submit(client, doc, weights)["job_id"]
        for i in range(dep.n_nodes):
            dep.start_node(i, job_id)
        if on_started is not None:
            on_started(job_id)
        records: list[RoundRecord] = []
        last = time.monotonic()
        final = dep.job.initial_weights
        for result in watch(client, job_id, timeout=timeout, poll=poll):
            now = time.monotonic()
            rec = result.record
            value = (
                evaluate(dep.job.spec, result.weights, dep.job.test.x, dep.job.test.y, dep.job.task)
                if len(dep.job.test.y)
                else float("nan")
            )
            record = RoundRecord(
                round=rec["round"],
                value=value,
                participants=rec["participants"],
                selected=rec["selected"],
                dropped=0,
                late=rec["selected"] - rec["participants"],
                skipped=rec["skipped"],
                train_loss=float("nan") if rec["train_loss"] is None else rec["train_loss"],
                seconds=now - last,
                virtual_seconds=now - last,
                bytes_up=0,
                bytes_down=0,
                bytes_aggregation=0,
                blamed=tuple(rec["blamed"]),
                included=tuple(rec["included"]),
            )
            last, final = now, result.weights
            records.append(record)
            if on_round is not None:
                on_round(record, result.weights)
    return UpResult(job_id, records, final, time.monotonic() - t0)


def baseline_of(dep: Deployment) -> BaselineResult | None:
    if not dep.config.baseline.enabled:
        return None
    from tessera.runtime.sim.job import centralized

    return centralized(dep.job)


def default_out(config: Path) -> Path:
    return Path("runs") / f"up-{config.stem}"

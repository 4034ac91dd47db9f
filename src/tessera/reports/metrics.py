"""DIR/metrics.json: the output contract later tools read.

Stable keys: ``task``, ``metric``, ``rounds`` (each with ``round``, ``value``,
``participants``, ``seconds``), ``final.value``, ``centralized.value``,
``nodes``, ``config``. Fields are only ever added, never removed or renamed.
Accuracy is a fraction in [0, 1]; regression reports R^2.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tessera import __version__
from tessera.jobs.prepared import PreparedJob
from tessera.jobs.records import BaselineResult, RoundRecord
from tessera.jobs.secure import SecureSummary
from tessera.training import metric_name


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def build_metrics(
    job: PreparedJob,
    rounds: list[RoundRecord],
    baseline: BaselineResult | None,
    *,
    status: str,
    model_digest: str | None = None,
    secure: SecureSummary | None = None,
) -> dict[str, Any]:
    sizes = job.node_samples
    contributions = sum(r.participants for r in rounds)
    requests = sum(r.selected for r in rounds)
    return {
        "tessera": __version__,
        "status": status,
        "job": job.config.job.name,
        "task": str(job.task),
        "metric": metric_name(job.task),
        "secure": secure is not None,
        "tree": (
            {"k": secure.k, "group_size": secure.group_size, "depth": secure.depth}
            if secure
            else None
        ),
        "ring_bits": secure.ring_bits if secure else None,
        "model_bytes_quantized": secure.model_bytes_quantized if secure else None,
        "rounds": [
            {
                **{k: v for k, v in asdict(r).items() if k != "included"},  # ids: too many
                "train_loss": _finite(r.train_loss),
                "value": _finite(r.value),
            }
            for r in rounds
        ],
        "final": {"value": _finite(rounds[-1].value) if rounds else None, "round": len(rounds)},
        "centralized": (
            {
                "value": _finite(baseline.value),
                "epochs": baseline.epochs,
                "curve": [{"round": x, "value": v} for x, v in baseline.curve],
            }
            if baseline is not None
            else None
        ),
        "nodes": job.n_nodes,
        "records": {"train": int(sizes.sum()), "test": len(job.test.y)},
        "node_sizes": {
            "min": int(sizes.min()),
            "median": float(sorted(sizes)[len(sizes) // 2]),
            "max": int(sizes.max()),
        },
        "features": list(job.feature_names),
        "model": {"kind": job.spec.kind, "parameters": job.layout.size, "digest": model_digest},
        "bytes_up_per_contributor": (
            sum(r.bytes_up for r in rounds) / contributions if contributions else None
        ),
        "bytes_down_per_contributor": (
            sum(r.bytes_down for r in rounds) / requests if requests else None
        ),
        "model_bytes_float32": job.layout.size * 4,
        "seconds_total": sum(r.seconds for r in rounds),
        "config": job.config.model_dump(mode="json"),
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically, so a crash never leaves a half-written report."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)

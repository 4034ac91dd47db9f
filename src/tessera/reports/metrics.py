"""DIR/metrics.json and DIR/rounds.jsonl: the output contract later tools read.

Stable keys of metrics.json: ``task``, ``metric``, ``rounds`` (each with
``round``, ``value``, ``participants``, ``seconds``, every other
``RoundRecord`` field, and ``included``: who contributed, as a bitset over
the nodes in index order, ``node-000000`` first, packed, zlib-compressed
and base64-encoded, ``decode_included`` reads it: at most N/8 bytes before
compression, 3.75 kB for 30,000 nodes and a few bytes when all or none of
them took part), ``final.value``,
``centralized.value``, ``nodes``, ``config``, ``missing`` (what the job's
missing-value policy did, see ``missing_entry``), ``statistics`` (how the
preprocessing was fitted: ``rounds`` of federated statistics over ``nodes``,
``secure`` or not, and ``columns``, what the nodes' totals say of each
column; null when fitted on pooled rows), ``privacy`` (a private job's
``epsilon`` spent by its last round at ``delta``, its ``budget``, the
``mechanism`` and each round's total ``noise_variance`` in ring units at
``scale``; null without ``[privacy]``), ``poison`` (the simulated truth of
``[simulation.poison]``: the ``corrupted`` and ``scaled`` nodes' ids, the
``kind`` and the ``scale``; null without), ``simulated_seconds`` (the
rounds' time on the job's clock, summed: the simulator's virtual clock, a
deployment's real one; each round has its own, from its requests going out
to its close, and its ``bytes_up_per_contributor`` and
``bytes_down_per_contributor``, as the job's totals). Fields are only ever added,
never removed or renamed. Accuracy is a fraction in [0, 1]; regression
reports R^2, and ``final`` and ``centralized`` (and each round) add ``rmse``
and ``mae``: its errors on the target's own scale (null for classification).
rounds.jsonl holds one line per round: the whole record,
contributor ids included (who was in each round, for audits).

One writer, ``MetricsWriter``, keeps both current round by round, so a
crash loses at most the round in flight; a new writer on the same DIR (a
new run) starts both afresh. Its cost per round does not grow
with the run: each round is serialised once, when it closes, and
metrics.json is rewritten from those pieces and a few running totals
(re-serialising every earlier round, with its thousands of contributor ids,
cost 3.7 s of CPU a round by round 200 of the per-student Chem97 run, which
slowed 2.3x by round 160; benchmarks/metrics_writer.py).
"""

from __future__ import annotations

import base64
import json
import math
import os
import secrets
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from tessera import __version__
from tessera.jobs.prepared import MissingCounts, PreparedJob
from tessera.jobs.records import BaselineResult, RoundRecord
from tessera.jobs.secure import SecureSummary
from tessera.training import metric_name


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def round_entry(record: RoundRecord, n_nodes: int) -> dict[str, Any]:
    """One round as metrics.json lists it: its contributors as a compressed bitset,
    its time on the job's clock and its bytes per node (see ``_per_node``)."""
    entry = record.to_json(with_included=False)
    entry["included"] = encode_included(record.included, n_nodes)
    entry["simulated_seconds"] = record.virtual_round_seconds
    entry.update(
        _per_node(record.bytes_up, record.participants, record.bytes_down, record.selected)
    )
    return entry


def _per_node(up: int, contributors: int, down: int, requests: int) -> dict[str, float | None]:
    """Bytes per node: uploaded per contributor (a participant), downloaded per
    request (every selected node is sent the model); null when there were none."""
    return {
        "bytes_up_per_contributor": up / contributors if contributors else None,
        "bytes_down_per_contributor": down / requests if requests else None,
    }


def _index(node: str) -> int:
    """``node-000123`` -> 123: the simulator's and ``tessera up``'s node ids (``ids.node_id``)."""
    prefix, _, digits = node.rpartition("-")
    if prefix != "node" or not digits.isdigit():
        raise ValueError(f"{node!r} is not a node id of the form node-NNNNNN")
    return int(digits)


def encode_included(included: Iterable[str], n_nodes: int) -> str:
    """Contributor ids as base64(zlib(packed bits)) over nodes ``0 .. n_nodes - 1``."""
    bits = np.zeros(n_nodes, dtype=bool)
    for node in included:
        index = _index(node)
        if not 0 <= index < n_nodes:
            raise ValueError(f"{node!r} is not one of the job's {n_nodes} nodes")
        bits[index] = True
    packed = np.packbits(bits).tobytes()
    return base64.b64encode(zlib.compress(packed, 9)).decode()


def decode_included(text: str, n_nodes: int) -> list[str]:
    """The contributor ids ``encode_included`` wrote, in node order."""
    packed = np.frombuffer(zlib.decompress(base64.b64decode(text, validate=True)), np.uint8)
    bits = np.unpackbits(packed)[:n_nodes]
    return [f"node-{i:06d}" for i in np.flatnonzero(bits)]


def encode_counts(counts: npt.ArrayLike) -> str:
    """One count per node as base64(zlib(uint32 little-endian)), node order.

    4 bytes a node before compression; mostly-zero counts compress to a few
    bytes, and 30,000 nodes of 0-3 imputed values each to ~10 kB.
    """
    values = np.asarray(counts, dtype=np.int64)
    if values.ndim != 1 or (values < 0).any() or (values > np.iinfo(np.uint32).max).any():
        raise ValueError("counts must be one non-negative 32-bit integer per node")
    return base64.b64encode(zlib.compress(values.astype("<u4").tobytes(), 9)).decode()


def decode_counts(text: str, n_nodes: int) -> list[int]:
    """The per-node counts ``encode_counts`` wrote."""
    raw = zlib.decompress(base64.b64decode(text, validate=True))
    values = np.frombuffer(raw, dtype="<u4")
    if len(values) != n_nodes:
        raise ValueError(f"{len(values)} counts for {n_nodes} nodes")
    return [int(v) for v in values]


def missing_entry(counts: MissingCounts | None) -> dict[str, Any] | None:
    """metrics.json's ``missing``: the policy and what it dropped and imputed.

    ``policy``: per column (target and features) ``drop``, ``impute`` or
    ``indicator``. ``train`` (the nodes' part) and ``test`` (the holdout)
    each give ``rows`` (as loaded), ``dropped`` (rows), ``dropped_by`` (per
    column, a row missing two columns counted in both), ``imputed`` (values
    per column) and ``imputed_values`` (their total). ``nodes``: how many
    nodes lost a row or had a value imputed, and per node in node order
    (``node-000000`` first) ``dropped`` and ``imputed`` as ``encode_counts``
    strings (``decode_counts`` reads them; ``dropped`` null unless the
    partition is natural: other schemes deal out kept rows only), and
    ``dropped_outside``: dropped rows no node holds (all of them then).
    """
    if counts is None:
        return None
    node_dropped, node_imputed = counts.node_dropped, counts.node_imputed
    return {
        "policy": dict(counts.policy),
        "train": {
            "rows": counts.rows,
            "dropped": counts.dropped_rows,
            "dropped_by": dict(counts.dropped),
            "imputed": dict(counts.imputed),
            "imputed_values": counts.imputed_values,
        },
        "test": {
            "rows": counts.test_rows,
            "dropped": counts.test_dropped_rows,
            "dropped_by": dict(counts.test_dropped),
            "imputed": dict(counts.test_imputed),
            "imputed_values": counts.test_imputed_values,
        },
        "nodes": {
            "with_dropped": None if node_dropped is None else int(np.count_nonzero(node_dropped)),
            "with_imputed": None if node_imputed is None else int(np.count_nonzero(node_imputed)),
            "dropped": None if node_dropped is None else encode_counts(node_dropped),
            "imputed": None if node_imputed is None else encode_counts(node_imputed),
            "dropped_outside": counts.dropped_outside,
        },
    }


@dataclass
class _Totals:
    rounds: int = 0
    contributions: int = 0
    requests: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    seconds: float = 0.0
    simulated_seconds: float = 0.0
    final: float = math.nan
    final_rmse: float = math.nan
    final_mae: float = math.nan
    epsilon: float = math.nan  # a private job's, after its last round

    def add(self, r: RoundRecord) -> None:
        self.rounds += 1
        self.contributions += r.participants
        self.requests += r.selected
        self.bytes_up += r.bytes_up
        self.bytes_down += r.bytes_down
        self.seconds += r.seconds
        self.simulated_seconds += r.virtual_round_seconds
        self.final, self.final_rmse, self.final_mae = r.value, r.rmse, r.mae
        if math.isfinite(r.epsilon):
            self.epsilon = r.epsilon


def _facts(
    job: PreparedJob, baseline: BaselineResult | None, secure: SecureSummary | None
) -> dict[str, Any]:
    """What metrics.json says of the job itself: the same every round, so worked out once.

    (The median of 27,911 node sizes alone took ~10 ms a round.)
    """
    sizes = job.node_samples
    return {
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
        "centralized": (
            {
                "value": _finite(baseline.value),
                "rmse": _finite(baseline.rmse),
                "mae": _finite(baseline.mae),
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
            "median": float(np.sort(sizes)[len(sizes) // 2]),
            "max": int(sizes.max()),
        },
        "features": list(job.feature_names),
        "missing": missing_entry(job.missing),
        "statistics": None if job.statistics is None else _statistics(job, secure),
        "privacy": _privacy(job, secure),
        "poison": _poison(job),
        "model_kind": job.spec.kind,
        "parameters": job.layout.size,
        "config": job.config.model_dump(mode="json"),
    }


def _statistics(job: PreparedJob, secure: SecureSummary | None) -> dict[str, Any]:
    """metrics.json's ``statistics``; ``noised``: the totals carry a private job's noise."""
    assert job.statistics is not None
    privacy = secure.privacy if secure is not None else None
    noised = privacy is not None and privacy.statistics_clip is not None
    return {**asdict(job.statistics), "noised": noised}


def _privacy(job: PreparedJob, secure: SecureSummary | None) -> dict[str, Any] | None:
    """metrics.json's ``privacy`` (but the epsilon spent, which each round moves)."""
    p = job.config.privacy
    if p is None or secure is None or secure.privacy is None:
        return None
    return {
        "delta": p.delta,
        "budget": p.epsilon,
        "on_budget": p.on_budget,
        "mechanism": "distributed Skellam (integer noise added by each contributor)",
        "noise_variance": secure.privacy.variance,
        "scale": 2.0**secure.privacy.frac_bits,
        "sensitivity_l2": secure.privacy.l2,
        "dropout_margin": p.dropout_margin,
    }


def _poison(job: PreparedJob) -> dict[str, Any] | None:
    """metrics.json's ``poison``: the simulated truth (``[simulation.poison]``), or null."""
    if not job.corrupted and not job.scaled:
        return None
    p = job.config.simulation.poison
    return {
        "kind": p.kind,
        "corrupted": [job.node_ids[i] for i in job.corrupted],
        "scaled": [job.node_ids[i] for i in job.scaled],
        "scale": p.scale,
    }


def _summary(
    facts: Mapping[str, Any],
    totals: _Totals,
    rounds: Any,
    *,
    status: str,
    model_digest: str | None,
) -> dict[str, Any]:
    """metrics.json's content, in the order the file lists it, with ``rounds`` as given."""
    return {
        "tessera": __version__,
        "status": status,
        **{k: facts[k] for k in ("job", "task", "metric", "secure", "tree", "ring_bits")},
        "model_bytes_quantized": facts["model_bytes_quantized"],
        "rounds": rounds,
        "final": {
            "value": _finite(totals.final),
            "round": totals.rounds,
            "rmse": _finite(totals.final_rmse),
            "mae": _finite(totals.final_mae),
        },
        **{
            k: facts[k]
            for k in (
                "centralized",
                "nodes",
                "records",
                "node_sizes",
                "features",
                "missing",
                "statistics",
                "poison",
            )
        },
        "privacy": (
            None
            if facts["privacy"] is None
            else {"epsilon": _finite(totals.epsilon), **facts["privacy"]}
        ),
        "model": {
            "kind": facts["model_kind"],
            "parameters": facts["parameters"],
            "digest": model_digest,
        },
        **_per_node(totals.bytes_up, totals.contributions, totals.bytes_down, totals.requests),
        "model_bytes_float32": facts["parameters"] * 4,
        "seconds_total": totals.seconds,
        "simulated_seconds": totals.simulated_seconds,
        "config": facts["config"],
    }


class MetricsWriter:
    """Writes DIR/metrics.json and appends to DIR/rounds.jsonl as rounds close."""

    def __init__(
        self,
        out: Path,
        job: PreparedJob,
        baseline: BaselineResult | None = None,
        *,
        secure: SecureSummary | None = None,
    ) -> None:
        self.path = out / "metrics.json"
        self.extra: dict[str, Any] = {}  # more top-level keys (e.g. ``deployment``)
        self._baseline, self._secure = baseline, secure
        self._facts = _facts(job, baseline, secure)
        self._n_nodes = job.n_nodes
        self._rounds: list[str] = []  # each round's JSON, made once
        self._totals = _Totals()
        # Where the cached rounds are spliced into the serialised summary: a
        # fresh random mark, so no job name or status can ever be taken for it.
        self._mark = f"tessera-rounds-{secrets.token_hex(16)}"
        out.mkdir(parents=True, exist_ok=True)
        self._log: IO[str] = (out / "rounds.jsonl").open("w", encoding="utf-8")

    def learned(self, job: PreparedJob, *, secure: SecureSummary | None = None) -> None:
        """The job as now known (a deployment's statistics rounds fitted its encoding and
        counted its missing values; its signed job's calibration, ``secure``): the next
        write says so."""
        if secure is not None:
            self._secure = secure
        self._facts = _facts(job, self._baseline, self._secure)

    def add_round(self, record: RoundRecord, *, model_digest: str | None = None) -> None:
        """Record a closed round and rewrite metrics.json with status "running"."""
        entry = round_entry(record, self._n_nodes)
        self._rounds.append(json.dumps(entry, allow_nan=False))
        self._totals.add(record)
        # Flushed before metrics.json names the round: a crash after this line
        # loses nothing an auditor needs.
        self._log.write(json.dumps(record.to_json(), allow_nan=False) + "\n")
        self._log.flush()
        self.write(status="running", model_digest=model_digest)

    def write(self, *, status: str, model_digest: str | None = None) -> str:
        """Rewrite metrics.json atomically from the cached rounds; returns its text."""
        head = _summary(
            self._facts, self._totals, self._mark, status=status, model_digest=model_digest
        )
        text = json.dumps({**head, **self.extra}, indent=2, allow_nan=False)
        rounds = "[" + ",\n    ".join(self._rounds) + "]"
        text = text.replace(json.dumps(self._mark), rounds, 1) + "\n"
        _write_text(self.path, text)
        return text

    def finish(
        self, *, status: str = "finished", model_digest: str | None = None
    ) -> dict[str, Any]:
        """The last write; returns metrics.json's content."""
        text = self.write(status=status, model_digest=model_digest)
        self._log.close()
        result: dict[str, Any] = json.loads(text)
        return result


def build_metrics(
    job: PreparedJob,
    rounds: Sequence[RoundRecord],
    baseline: BaselineResult | None,
    *,
    status: str,
    model_digest: str | None = None,
    secure: SecureSummary | None = None,
) -> dict[str, Any]:
    """metrics.json's content for ``rounds``, at once (``MetricsWriter`` keeps it as they close)."""
    totals = _Totals()
    for record in rounds:
        totals.add(record)
    entries = [round_entry(r, job.n_nodes) for r in rounds]
    facts = _facts(job, baseline, secure)
    return _summary(facts, totals, entries, status=status, model_digest=model_digest)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)

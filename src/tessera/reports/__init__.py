"""Read-only views over a finished (or running) job: metrics.json, rounds.jsonl, curves.png,
explanations.json, report.html."""

from pathlib import Path
from typing import Any

from tessera.reports.html import write_report
from tessera.reports.metrics import MetricsWriter, build_metrics
from tessera.reports.plots import plot_curves

__all__ = [
    "MetricsWriter",
    "build_metrics",
    "explain_views",
    "plot_curves",
    "write_report",
    "write_views",
]


def write_views(out: Path, metrics: Any, *, job: Any = None, weights: Any = None) -> None:
    """DIR/curves.png and DIR/report.html, from a finished job's metrics (and audit log):
    what ``tessera run`` and ``tessera up`` leave beside metrics.json. Given the job (a
    ``PreparedJob``, with its held-out set) and the final ``weights``, DIR/explanations.json
    first (``explain_views``)."""
    plot_curves(metrics, out / "curves.png")
    if job is not None and weights is not None:
        explain_views(out, job, weights, model_digest=(metrics.get("model") or {}).get("digest"))
    write_report(out)


def explain_views(out: Path, job: Any, weights: Any, *, model_digest: str | None) -> Path | None:
    """DIR/explanations.json for the job's ``[report]`` (None, and any older file removed,
    when its ``explain`` is off). A failure is written as the file's ``error``, never
    raised: the explanations must not cost the job its report."""
    import json

    from tessera.explain.job import FORMAT, write_explanations

    path = out / "explanations.json"
    if not job.config.reporting.explain:
        path.unlink(missing_ok=True)
        return None
    try:
        return write_explanations(out, job, weights, model_digest=model_digest)
    except Exception as exc:  # any failure: reported in the file, not raised
        text = json.dumps({"format": FORMAT, "model": model_digest, "error": repr(exc)})
        path.write_text(text + "\n", encoding="utf-8")
        return path

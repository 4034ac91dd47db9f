"""Read-only views over a finished (or running) job: metrics.json, rounds.jsonl, curves.png,
report.html."""

from pathlib import Path
from typing import Any

from tessera.reports.html import write_report
from tessera.reports.metrics import MetricsWriter, build_metrics
from tessera.reports.plots import plot_curves

__all__ = ["MetricsWriter", "build_metrics", "plot_curves", "write_report", "write_views"]


def write_views(out: Path, metrics: Any) -> None:
    """DIR/curves.png and DIR/report.html, from a finished job's metrics (and audit log):
    what ``tessera run`` and ``tessera up`` leave beside metrics.json."""
    plot_curves(metrics, out / "curves.png")
    write_report(out)

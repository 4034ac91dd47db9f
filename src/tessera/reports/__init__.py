"""Read-only views over a finished (or running) job: metrics.json, rounds.jsonl, curves.png,
report.html."""

from tessera.reports.html import write_report
from tessera.reports.metrics import MetricsWriter, build_metrics
from tessera.reports.plots import plot_curves

__all__ = ["MetricsWriter", "build_metrics", "plot_curves", "write_report"]

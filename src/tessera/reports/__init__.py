"""Read-only views over a finished (or running) job: metrics.json, curves.png."""

from tessera.reports.metrics import build_metrics, write_json
from tessera.reports.plots import plot_curves

__all__ = ["build_metrics", "plot_curves", "write_json"]

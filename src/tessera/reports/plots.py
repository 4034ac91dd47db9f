"""DIR/curves.png: the federated metric per round against the centralized baseline.

A regression plots R^2; the legend gives each curve's final RMSE and MAE, on
the target's own scale (metrics.json's ``final`` and ``centralized``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def plot_curves(metrics: dict[str, Any], path: Path) -> None:
    fig = curves_figure(metrics)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def _errors(entry: dict[str, Any]) -> str:
    """A regression's final RMSE and MAE (target scale) for its curve's label; none: ""."""
    if entry.get("rmse") is None or entry.get("mae") is None:
        return ""
    return f": final RMSE {entry['rmse']:.4g}, MAE {entry['mae']:.4g}"


def curves_figure(metrics: dict[str, Any]) -> Figure:
    """The figure ``plot_curves`` saves (metrics.json's content), for callers that show it."""
    rounds = metrics["rounds"]
    fig, (ax, ax_part) = plt.subplots(
        2, 1, figsize=(7, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    xs = [r["round"] + 1 for r in rounds]
    final = metrics.get("final") or {}
    label = "federated (test set)" + _errors(final)
    ax.plot(xs, [r["value"] for r in rounds], marker=".", label=label)
    central = metrics.get("centralized")
    if central and central["curve"]:
        cx = [p["round"] for p in central["curve"]]
        label = "centralized" + _errors(central)
        ax.plot(cx, [p["value"] for p in central["curve"]], "--", marker="x", label=label)
        ax.axhline(central["value"], color="grey", lw=0.6, ls=":")
    ax.set_ylabel(metrics["metric"])
    ax.set_title(
        f"{metrics['job']}: {metrics['nodes']} nodes, {metrics['task']} "
        f"({'secure' if metrics.get('secure') else 'plaintext'} aggregation)"
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax_part.bar(xs, [r["participants"] for r in rounds], color="tab:green", label="contributed")
    ax_part.bar(
        xs,
        [r["dropped"] + r["late"] for r in rounds],
        bottom=[r["participants"] for r in rounds],
        color="tab:red",
        label="dropped or late",
    )
    ax_part.set_xlabel("round")
    ax_part.set_ylabel("nodes")
    ax_part.legend(loc="lower left", fontsize="small", framealpha=0.9)
    ax_part.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds: never "2.5"
    fig.tight_layout()
    return fig

"""DIR/curves.png: the federated metric per round against the centralized baseline."""

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


def curves_figure(metrics: dict[str, Any]) -> Figure:
    """The figure ``plot_curves`` saves (metrics.json's content), for callers that show it."""
    rounds = metrics["rounds"]
    fig, (ax, ax_part) = plt.subplots(
        2, 1, figsize=(7, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    xs = [r["round"] + 1 for r in rounds]
    ax.plot(xs, [r["value"] for r in rounds], marker=".", label="federated (test set)")
    central = metrics.get("centralized")
    if central and central["curve"]:
        cx = [p["round"] for p in central["curve"]]
        ax.plot(cx, [p["value"] for p in central["curve"]], "--", marker="x", label="centralized")
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

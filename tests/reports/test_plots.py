"""curves.png: what the figure shows, read off the figure itself."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from tessera.reports.plots import curves_figure, plot_curves


def _metrics(n_rounds: int) -> dict[str, object]:
    rounds = [
        {"round": r, "value": 0.5 + 0.01 * r, "participants": 10, "dropped": 1, "late": 0}
        for r in range(n_rounds)
    ]
    curve = [{"round": r + 1, "value": 0.6} for r in range(n_rounds)]
    return {
        "rounds": rounds,
        "centralized": {"curve": curve, "value": 0.6},
        "metric": "accuracy",
        "job": "t",
        "nodes": 10,
        "task": "classification",
        "secure": True,
    }


@pytest.mark.parametrize("n_rounds", [2, 3, 7, 40])
def test_round_ticks_are_whole_rounds(n_rounds: int) -> None:
    fig = curves_figure(_metrics(n_rounds))
    try:
        ticks = fig.axes[-1].get_xticks()
        assert len(ticks) >= 2
        assert all(float(t).is_integer() for t in ticks), ticks
    finally:
        plt.close(fig)


def test_the_png_is_written_whole(tmp_path: Path) -> None:
    out = tmp_path / "curves.png"
    plot_curves(_metrics(3), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp.png"))


def test_a_regression_legend_gives_final_rmse_and_mae() -> None:
    metrics = {
        **_metrics(3),
        "metric": "R^2",
        "task": "regression",
        "final": {"value": 0.52, "rmse": 81.25, "mae": 64.5},
        "centralized": {
            "curve": [{"round": 3, "value": 0.6}],
            "value": 0.6,
            "rmse": 70.0,
            "mae": 55.0,
        },
    }
    fig = curves_figure(metrics)
    try:
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert "federated (test set): final RMSE 81.25, MAE 64.5" in labels
        assert "centralized: final RMSE 70, MAE 55" in labels
    finally:
        plt.close(fig)
    fig = curves_figure(_metrics(3))  # a classifier: no errors in the legend
    try:
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert labels == ["federated (test set)", "centralized"]
    finally:
        plt.close(fig)

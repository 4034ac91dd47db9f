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

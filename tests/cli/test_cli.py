"""End to end through the real ``tessera`` command, in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TINY = """
[job]
name = "tiny-digits"
seed = 1
task = "classification"

[data]
source = "sklearn"
dataset = "digits"
target = "target"
holdout = {{ fraction = 0.2 }}

[partition]
scheme = "dirichlet"
nodes = 20
alpha = 0.5

[model]
kind = "{kind}"
hidden = [16]

[recipe]
lr = 0.1
local_epochs = 1
batch_size = 16
clip_norm = 10.0

[federation]
rounds = 3
fraction = 0.5

[simulation]
dropout = 0.1
"""


def tessera(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from tessera.cli.main import app; app()", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)


def test_run_writes_the_output_contract(tmp_path: Path) -> None:
    cfg = tmp_path / "job.toml"
    cfg.write_text(TINY.format(kind="mlp"))
    out = tmp_path / "out"
    proc = tessera("run", str(cfg), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "classification" and m["metric"] == "accuracy"
    assert m["status"] == "finished" and m["nodes"] == 20
    assert [r["round"] for r in m["rounds"]] == [0, 1, 2]
    for r in m["rounds"]:
        assert 0.0 <= r["value"] <= 1.0 and r["participants"] <= 10 and r["seconds"] >= 0
    assert 0.5 < m["final"]["value"] <= 1.0  # it learned something on unseen digits
    assert 0.5 < m["centralized"]["value"] <= 1.0
    assert m["config"]["partition"]["alpha"] == 0.5
    assert (out / "model.safetensors").stat().st_size > 0
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.html").read_text(encoding="utf-8")
    assert '<section id="audit">' in report and "Verified" in report

    from safetensors.numpy import load_file

    weights = load_file(str(out / "model.safetensors"))
    assert sum(w.size for w in weights.values()) == m["model"]["parameters"]
    # secure by default: the tree, the ring and the bytes are reported
    assert m["secure"] is True and m["tree"]["k"] == 3 and m["ring_bits"] in (32, 64)
    # the update, then its loss, whether the loss was capped, and its weight
    assert m["model_bytes_quantized"] == (m["model"]["parameters"] + 3) * m["ring_bits"] // 8
    assert m["bytes_up_per_contributor"] > m["model_bytes_quantized"]
    assert m["bytes_down_per_contributor"] > 0


def test_losses_over_the_secure_cap_are_counted_and_said(tmp_path: Path) -> None:
    cfg = tmp_path / "job.toml"
    cfg.write_text(
        TINY.format(kind="linear").replace("hidden = [16]", "") + "[secure]\nloss_cap = 0.001\n"
    )
    proc = tessera("run", str(cfg), "--out", str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert all(r["capped"] == r["participants"] > 0 for r in m["rounds"])  # every loss > 0.001
    assert "loss over secure.loss_cap (0.001)" in " ".join(proc.stderr.split())


def test_plaintext_flag_runs_the_same_job_in_the_clear(tmp_path: Path) -> None:
    cfg = tmp_path / "job.toml"
    cfg.write_text(TINY.format(kind="mlp"))
    proc = tessera("run", str(cfg), "--out", str(tmp_path / "p"), "--quiet", "--plaintext")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert m["secure"] is False and m["tree"] is None and m["model_bytes_quantized"] is None
    assert len(m["rounds"]) == 3


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (('kind = "mlp"', 'kind = "rnn"'), "model.kind"),
        (('dataset = "digits"', 'dataset = "no-such-set"'), "data.dataset"),
        (('target = "target"', 'target = "label"'), "data.target"),
        (("nodes = 20", "nodes = 5000"), "partition"),
        (("rounds = 3", 'rounds = "three"'), "federation.rounds"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path: Path, edit: tuple[str, str], field: str) -> None:
    cfg = tmp_path / "job.toml"
    cfg.write_text(TINY.format(kind="mlp").replace(*edit))
    proc = tessera("run", str(cfg), "--out", str(tmp_path / "o"), "--quiet")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"error: {field}" in proc.stderr, proc.stderr


def test_the_last_line_says_one_duration_the_result_and_the_baseline() -> None:
    """`tessera run` and `tessera up` end alike (issue 12: up printed three durations)."""
    from tessera.cli.main import done_line

    line = done_line(52.04, "accuracy", 0.2610, 0.2750)
    assert line.count(" s") == 1 and "52.0 s" in line
    assert "federated accuracy 0.2610 | centralized 0.2750 | gap +0.0140" in line
    assert "centralized" not in done_line(3.0, "R^2", 0.5, None)


def test_a_regression_last_line_gives_rmse_and_mae_on_the_targets_scale() -> None:
    from tessera.cli.main import done_line

    final = {"value": 0.5, "rmse": 123.4, "mae": 98.76}
    central = {"value": 0.55, "rmse": 117.0, "mae": 90.0}
    line = done_line(9.0, "R^2", 0.5, 0.55, errors=final, centralized_errors=central)
    assert "federated R^2 0.5000 (RMSE 123.4, MAE 98.76)" in line
    assert "centralized 0.5500 (RMSE 117, MAE 90) | gap +0.0500" in line
    accuracy = {"value": 0.5, "rmse": None, "mae": None}  # a classifier's metrics.json entry
    assert "RMSE" not in done_line(9.0, "accuracy", 0.5, None, errors=accuracy)


def test_data_check_reports_and_warns_without_training() -> None:
    """`tessera data check`: the table as a run sees it; exit 1 on a warning (issue 12)."""
    chem97 = Path(__file__).resolve().parents[2] / "src" / "tessera" / "examples" / "chem97.toml"
    done = tessera("data", "check", str(chem97))
    assert done.returncode == 1, done.stderr
    said = done.stderr
    assert "2,151 nodes" in said and "records per node" in said and "target classes" in said
    assert "warning:" in said and "fewer than 5 records" in said
    missing = tessera("data", "check", "no-such-job.toml")
    assert missing.returncode == 2


def test_a_processes_backend_run_writes_the_in_process_model(tmp_path: Path) -> None:
    """``--backend processes --workers 1``: the nodes' sharing and opening in a worker
    process, the same model and metrics as the default in-process run."""
    cfg = tmp_path / "job.toml"
    cfg.write_text(TINY.format(kind="mlp").replace("rounds = 3", "rounds = 2"))
    runs = {}
    for name, extra in [("in", []), ("pool", ["--backend", "processes", "--workers", "1"])]:
        out = tmp_path / name
        proc = tessera("run", str(cfg), "--out", str(out), "--quiet", *extra)
        assert proc.returncode == 0, proc.stderr
        runs[name] = out
    assert "on the processes backend, 1 workers" in proc.stderr
    model = [(runs[n] / "model.safetensors").read_bytes() for n in ("in", "pool")]
    assert model[0] == model[1]
    values = [
        [r["value"] for r in json.loads((runs[n] / "metrics.json").read_text())["rounds"]]
        for n in ("in", "pool")
    ]
    assert values[0] == values[1]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--address", "auto"], "--address: a Ray cluster's address: use --backend ray"),
        (["--workers", "2"], "--workers: inprocess runs on this process"),
        (["--backend", "gpu"], "--backend: 'gpu': choose one of inprocess, processes, ray"),
        (["--backend", "processes", "--workers", "0"], "--workers: 0: at least 1"),
    ],
)
def test_backend_options_are_checked_before_the_job(
    tmp_path: Path, args: list[str], says: str
) -> None:
    proc = tessera("run", str(tmp_path / "missing.toml"), *args)
    assert proc.returncode == 2
    assert says in " ".join(proc.stderr.split())

"""MlflowLogger against a local file store, and without MLflow installed."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tessera.errors import ConfigError
from tessera.reports.mlflow_log import MlflowLogger


@pytest.fixture
def mlflow(monkeypatch: pytest.MonkeyPatch) -> Any:
    # MLflow 3 refuses the file store unless asked; telemetry stays off offline.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    return pytest.importorskip("mlflow", reason="optional extra: pip install 'tessera[mlflow]'")


def _model(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "global.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_job_lands_in_mlflow(mlflow: Any, tmp_path: Path) -> None:
    uri = (tmp_path / "mlruns").as_uri()
    model, digest = _model(tmp_path)
    signature = {"signer": "provider-key", "signature": "c2ln"}
    with MlflowLogger(uri, experiment="chem97", run_name="job-1") as logger:
        logger.log_params({"rounds": 2, "training": {"lr": 0.1, "epochs": 1}})
        logger.log_round(1, {"loss": 0.9, "accuracy": 0.5})
        logger.log_round(2, {"loss": 0.4, "accuracy": 0.75})
        logger.log_model(model, sha256=digest.upper(), signature_doc=signature)
        audit = tmp_path / "audit.jsonl"
        audit.write_bytes(b'{"seq":0}\n')
        logger.log_audit(audit)
        run_id = logger.run_id

    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "job-1"
    assert run.data.params == {"rounds": "2", "training.lr": "0.1", "training.epochs": "1"}
    assert run.data.tags["tessera.model_sha256"] == digest
    assert run.data.tags["tessera.audit_sha256"] == hashlib.sha256(audit.read_bytes()).hexdigest()
    assert [a.path for a in client.list_artifacts(run_id, "audit")] == ["audit/audit.jsonl"]
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.9), (2, 0.4)]
    assert run.data.metrics == {"loss": 0.4, "accuracy": 0.75}

    assert [a.path for a in client.list_artifacts(run_id, "model")] == [
        "model/global.safetensors",
        "model/tessera-model.json",
    ]
    folder = Path(client.download_artifacts(run_id, "model", str(tmp_path / "out")))
    assert (folder / "global.safetensors").read_bytes() == model.read_bytes()
    record = json.loads((folder / "tessera-model.json").read_text())
    assert record == {"file": "global.safetensors", "sha256": digest, "signature": signature}


def test_an_exception_marks_the_run_failed(mlflow: Any, tmp_path: Path) -> None:
    uri = (tmp_path / "mlruns").as_uri()
    with pytest.raises(RuntimeError), MlflowLogger(uri, "exp", "crashes") as logger:
        raise RuntimeError("training diverged")
    assert mlflow.MlflowClient(tracking_uri=uri).get_run(logger.run_id).info.status == "FAILED"
    logger.close()  # closing twice is harmless


def test_a_wrong_digest_is_refused(mlflow: Any, tmp_path: Path) -> None:
    model, _ = _model(tmp_path)
    with MlflowLogger((tmp_path / "mlruns").as_uri(), "exp", "run") as logger:
        with pytest.raises(ValueError, match="SHA-256"):
            logger.log_model(model, sha256="0" * 64, signature_doc=None)
        run_id = logger.run_id
    client = mlflow.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    assert client.list_artifacts(run_id) == []


def test_an_unusable_tracking_uri_is_a_config_error(mlflow: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot start an MLflow run") as info:
        MlflowLogger("nonsense-scheme://x", "exp", "run")
    assert info.value.field == "mlflow.tracking_uri"


def test_missing_mlflow_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # makes `import mlflow` fail
    with pytest.raises(ConfigError, match=r"pip install 'tessera\[mlflow\]'") as info:
        MlflowLogger("file:/nowhere", "exp", "run")
    assert info.value.field == "mlflow.tracking_uri"


def test_the_report_is_logged_beside_the_audit_log(mlflow: Any, tmp_path: Path) -> None:
    uri = (tmp_path / "mlruns").as_uri()
    out = tmp_path / "job"
    out.mkdir()
    (out / "report.html").write_text("<!DOCTYPE html><title>r</title>", encoding="utf-8")
    with MlflowLogger(uri, experiment="chem97", run_name="job-2") as logger:
        logger.log_report(out)  # no explanations.json: the report alone
        alone = logger.run_id
    (out / "explanations.json").write_text('{"format": "tessera-explanations/v1"}')
    with MlflowLogger(uri, experiment="chem97", run_name="job-3") as logger:
        logger.log_report(out)
        both = logger.run_id
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert [a.path for a in client.list_artifacts(alone, "report")] == ["report/report.html"]
    assert [a.path for a in client.list_artifacts(both, "report")] == [
        "report/explanations.json",
        "report/report.html",
    ]
    run = client.get_run(both)
    digest = hashlib.sha256((out / "report.html").read_bytes()).hexdigest()
    assert run.data.tags["tessera.report_sha256"] == digest
    folder = Path(client.download_artifacts(both, "report", str(tmp_path / "down")))
    assert (folder / "report.html").read_bytes() == (out / "report.html").read_bytes()


TINY = """
[job]
name = "tiny-mlflow"
seed = 1
task = "classification"

[data]
source = "sklearn"
dataset = "digits"
target = "target"

[partition]
scheme = "iid"
nodes = 6

[model]
kind = "linear"

[recipe]
clip_norm = 10.0

[federation]
rounds = 2

[secure]
enabled = false

[baseline]
enabled = false

[report]
explain_rows = 50
"""


def test_tessera_run_logs_the_job_its_audit_log_and_report(mlflow: Any, tmp_path: Path) -> None:
    import subprocess

    job, out, uri = tmp_path / "job.toml", tmp_path / "out", (tmp_path / "mlruns").as_uri()
    job.write_text(TINY)
    cmd = [sys.executable, "-c", "from tessera.cli.main import app; app()", "run", str(job)]
    proc = subprocess.run(
        [*cmd, "--out", str(out), "--quiet", "--mlflow", uri],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny-mlflow").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run-out"
    assert run.data.params["federation.rounds"] == "2"
    history = client.get_metric_history(run.info.run_id, "value")
    assert [m.step for m in history] == [0, 1]
    paths = {
        a.path
        for d in ("model", "audit", "report")
        for a in client.list_artifacts(run.info.run_id, d)
    }
    assert {
        "model/model.safetensors",
        "audit/audit.jsonl",
        "report/report.html",
        "report/explanations.json",
    } <= paths
    digest = hashlib.sha256((out / "report.html").read_bytes()).hexdigest()
    assert run.data.tags["tessera.report_sha256"] == digest
    model = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert run.data.tags["tessera.model_sha256"] == model

"""Mirror a job's parameters, per-round metrics and final model into MLflow.

MLflow is optional (``pip install 'tessera[mlflow]'``) and imported only when
a logger is created, so the core install and the CLI stay light. We talk to
MLflow through ``MlflowClient`` and an explicit run id rather than the fluent
``mlflow.start_run`` API: that keeps no process-global "active run", so two
loggers (or a user's own MLflow code) in one process cannot cross wires.

The job's signed audit log goes to ``audit/audit.jsonl``, the run tagged with
its SHA-256, and its trust report beside it: ``report/report.html`` (and
``report/explanations.json``), tagged ``tessera.report_sha256``. The model
is logged as its safetensors file plus ``model/tessera-model.json`` holding
its SHA-256 and the job/provider signature document, and the run is tagged
``tessera.model_sha256``, so anyone holding the MLflow run can check the
artefact against the signed job record.

Local tracking: a ``file:`` URI needs ``MLFLOW_ALLOW_FILE_STORE=true`` with
MLflow 3 (the file store is in maintenance mode), and ``sqlite:`` needs the
full ``mlflow`` package (mlflow-skinny lacks alembic). Either problem surfaces
as a ``ConfigError`` carrying MLflow's own explanation.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from tessera.errors import ConfigError

__all__ = ["MlflowLogger"]

RunStatus = Literal["FINISHED", "FAILED", "KILLED"]
MODEL_DIR = "model"
AUDIT_DIR = "audit"
REPORT_DIR = "report"
MODEL_RECORD = "tessera-model.json"
_PARAMS_PER_BATCH = 100  # MLflow's limits for one log_batch call
_METRICS_PER_BATCH = 1000


class MlflowLogger:
    """One MLflow run for one Tessera job; use as a context manager.

    Leaving the ``with`` block normally closes the run as FINISHED, and with
    an exception as FAILED.
    """

    def __init__(self, tracking_uri: str, experiment: str, run_name: str) -> None:
        try:
            from mlflow import MlflowClient
            from mlflow.entities import Metric, Param
        except ImportError as exc:
            raise ConfigError(
                "mlflow.tracking_uri", "MLflow is not installed: pip install 'tessera[mlflow]'"
            ) from exc
        self._metric: Any = Metric
        self._param: Any = Param
        self.tracking_uri = tracking_uri
        try:
            self._client: Any = MlflowClient(tracking_uri=tracking_uri)
            self.experiment_id: str = _experiment_id(self._client, experiment)
            run = self._client.create_run(self.experiment_id, run_name=run_name)
        except Exception as exc:  # MLflow raises several types; all mean "cannot log there"
            raise ConfigError(
                "mlflow.tracking_uri", f"cannot start an MLflow run at {tracking_uri!r}: {exc}"
            ) from exc
        self.run_id: str = run.info.run_id
        self._closed = False

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record job parameters; nested mappings become dotted keys."""
        flat = [self._param(k, str(v)) for k, v in _flatten(params)]
        for i in range(0, len(flat), _PARAMS_PER_BATCH):
            self._client.log_batch(self.run_id, params=flat[i : i + _PARAMS_PER_BATCH])

    def log_round(self, round: int, metrics: Mapping[str, float]) -> None:
        """Record one round's metrics with ``step=round``."""
        now_ms = int(time.time() * 1000)
        batch = [self._metric(k, float(v), now_ms, round) for k, v in metrics.items()]
        for i in range(0, len(batch), _METRICS_PER_BATCH):
            self._client.log_batch(self.run_id, metrics=batch[i : i + _METRICS_PER_BATCH])

    def log_model(
        self,
        path_to_safetensors: Path,
        *,
        sha256: str,
        signature_doc: Mapping[str, Any] | None = None,
    ) -> None:
        """Log the model file, its digest and signature; refuse a wrong digest.

        Raises ``ValueError`` when the file's SHA-256 is not ``sha256``: the
        run must never carry a model that differs from the one signed.
        """
        digest = _sha256_file(path_to_safetensors)
        if digest != sha256.lower():
            raise ValueError(
                f"{path_to_safetensors} has SHA-256 {digest}, not the expected {sha256}"
            )
        record = {
            "file": path_to_safetensors.name,
            "sha256": digest,
            "signature": dict(signature_doc) if signature_doc is not None else None,
        }
        self._client.log_artifact(self.run_id, str(path_to_safetensors), artifact_path=MODEL_DIR)
        self._client.log_dict(self.run_id, record, f"{MODEL_DIR}/{MODEL_RECORD}")
        self._client.set_tag(self.run_id, "tessera.model_sha256", digest)

    def log_audit(self, path_to_log: Path) -> None:
        """The job's signed audit log (DIR/audit.jsonl) as ``audit/audit.jsonl``, the run
        tagged with its SHA-256: whoever holds the run can verify it
        (``tessera audit verify``) and check it is the log the job wrote."""
        self._client.log_artifact(self.run_id, str(path_to_log), artifact_path=AUDIT_DIR)
        self._client.set_tag(self.run_id, "tessera.audit_sha256", _sha256_file(path_to_log))

    def log_report(self, out: Path) -> None:
        """The job's trust report, DIR/report.html (one self-contained file), as
        ``report/report.html``, with DIR/explanations.json when there is one; the run
        tagged with the report's SHA-256."""
        report = out / "report.html"
        self._client.log_artifact(self.run_id, str(report), artifact_path=REPORT_DIR)
        if (out / "explanations.json").is_file():
            self._client.log_artifact(
                self.run_id, str(out / "explanations.json"), artifact_path=REPORT_DIR
            )
        self._client.set_tag(self.run_id, "tessera.report_sha256", _sha256_file(report))

    def close(self, status: RunStatus = "FINISHED") -> None:
        """End the run; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        self._client.set_terminated(self.run_id, status=status)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close("FINISHED" if exc_type is None else "FAILED")


def _experiment_id(client: Any, name: str) -> str:
    """The id of experiment ``name``, created on first use."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    return str(client.create_experiment(name))


def _flatten(params: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, prefix=f"{name}.")
        else:
            yield name, value


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

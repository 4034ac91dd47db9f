"""``tessera run`` writes DIR/audit.jsonl; ``tessera audit verify`` checks it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

TINY = """
[job]
name = "tiny-audit"
seed = 1
task = "classification"

[data]
source = "sklearn"
dataset = "digits"
target = "target"
holdout = { fraction = 0.2 }

[partition]
scheme = "dirichlet"
nodes = 8
alpha = 0.5

[model]
kind = "linear"

[recipe]
lr = 0.1
local_epochs = 1
batch_size = 32
clip_norm = 10.0

[federation]
rounds = 2
fraction = 1.0

[baseline]
enabled = false
"""


def invoke(*args: str) -> Any:
    from typer.testing import CliRunner

    from tessera.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("audit-run")
    (root / "job.toml").write_text(TINY)
    done = invoke("run", str(root / "job.toml"), "--out", str(root / "out"), "-q", "--plaintext")
    assert done.exit_code == 0, done.output
    return root / "out"


@pytest.fixture
def out(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the run's folder, to tamper with."""
    return Path(shutil.copytree(run_dir, tmp_path / "out"))


def test_run_writes_a_log_that_verifies(out: Path) -> None:
    rows = [json.loads(x) for x in (out / "audit.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in rows]
    assert kinds == ["job_submitted", "participants", "round_committed", "round_committed",
                     "model_final"]  # fmt: skip
    key = (out / "audit.key.pub").read_text().strip()
    assert {r["signer"] for r in rows} == {key}
    metrics = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    for rec, m in zip(rows[2:4], metrics, strict=True):
        assert rec["body"]["included"] == sorted(m["included"])
    done = invoke("audit", "verify", str(out / "audit.jsonl"), "--key", key)
    assert done.exit_code == 0, done.output
    assert "5 records" in done.output and "the key given" in done.output
    done = invoke("audit", "verify", str(out / "audit.jsonl"), "--key", str(out / "audit.key.pub"))
    assert done.exit_code == 0, done.output
    done = invoke("audit", "verify", str(out / "audit.jsonl"), "--trust-first")
    assert done.exit_code == 0 and "trust-first" in done.output


def test_verify_names_a_changed_record(out: Path) -> None:
    path = out / "audit.jsonl"
    rows = path.read_text().splitlines()
    rows[2] = rows[2].replace('"skipped":false', '"skipped":true')
    path.write_text("\n".join(rows) + "\n")
    done = invoke("audit", "verify", str(path), "--trust-first")
    assert done.exit_code == 1 and "record 2:" in done.output, done.output


def test_verify_names_a_wrong_model(out: Path) -> None:
    (out / "model.safetensors").write_bytes(b"not the model")
    done = invoke("audit", "verify", str(out / "audit.jsonl"), "--trust-first")
    assert done.exit_code == 1 and "record 4:" in done.output, done.output


def test_verify_needs_a_key_or_trust(out: Path) -> None:
    done = invoke("audit", "verify", str(out / "audit.jsonl"))
    assert done.exit_code == 2 and "--trust-first" in done.output
    done = invoke("audit", "verify", str(out / "audit.jsonl"), "--key", "nonsense")
    assert done.exit_code == 2


def test_verify_reports_a_nodes_consent(out: Path) -> None:
    done = invoke(
        "audit", "verify", str(out / "audit.jsonl"), "--trust-first", "--node", "node-000000"
    )
    assert done.exit_code == 0 and "no revocation" in done.output, done.output

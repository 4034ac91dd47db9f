"""A node's sandbox memory limit on the command line: ``tessera node --memory-limit``
and ``tessera up --node-memory`` (issue 17); sizes as systemd's ``MemoryMax=`` reads them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from tessera.cli import app
from tessera.cli.sizes import parse_size
from tessera.deploy.up import UpOptions
from tessera.sandbox import SandboxLimits

EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "tessera" / "examples"
MiB, GiB = 1 << 20, 1 << 30


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("2GiB", 2 * GiB),
        ("2G", 2 * GiB),
        ("2g", 2 * GiB),
        ("1.5GiB", 1536 * MiB),
        ("512MiB", 512 * MiB),
        ("512M", 512 * MiB),
        ("512Mi", 512 * MiB),
        ("64 KiB", 64 << 10),
        ("1T", 1 << 40),
        ("1073741824", GiB),
        ("4096B", 4096),
    ],
)
def test_sizes_read_as_systemd_reads_them(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["2GB", "512MB", "GiB", "", "-1G", "two", "0", "1.5", "2 GiB x"])
def test_sizes_refused_say_which_forms_are_taken(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a size|not a positive whole number"):
        parse_size(text)


class _FakeAgent:
    """Records the agent's config: the sandbox's limits reach it, nothing runs."""

    configs: ClassVar[list[Any]] = []

    def __init__(self, cfg: Any) -> None:
        self.configs.append(cfg)

    def run(self) -> None:
        pass


def _node(tmp_path: Path, *args: str) -> Any:
    node = ("node", "--id", "node-1", "--coordinator", "http://127.0.0.1:9")
    files = ("--keys", str(tmp_path / "k"), "--state", str(tmp_path / "s"))
    return CliRunner().invoke(app, [*node, *files, *args], catch_exceptions=False)


@pytest.mark.parametrize(
    ("args", "size"),
    [((), SandboxLimits().memory_bytes), (("--memory-limit", "2GiB"), 2 * GiB)],
)
def test_node_gives_its_sandbox_the_memory_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], size: int
) -> None:
    from tessera.node import agent

    monkeypatch.setattr(agent, "NodeAgent", _FakeAgent)
    _FakeAgent.configs.clear()
    done = _node(tmp_path, *args)
    assert done.exit_code == 0, done.output
    (cfg,) = _FakeAgent.configs
    assert cfg.sandbox_limits.memory_bytes == size
    assert cfg.sandbox_limits.start_timeout == 60.0  # the rest unchanged


@pytest.mark.parametrize(
    ("value", "said"),
    [("2GB", "is not a size"), ("4096", "under 64 MiB"), ("1.5", "whole number of bytes")],
)
def test_node_refuses_a_memory_limit_before_making_anything(
    tmp_path: Path, value: str, said: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tessera.cli", "node", "--id", "node-1",
         "--coordinator", "http://127.0.0.1:9", "--memory-limit", value],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "COLUMNS": "200"},  # the message on one line of the error box
    )  # fmt: skip
    assert done.returncode == 2
    message = " ".join(done.stderr.split())
    assert "--memory-limit" in message and said in message, done.stderr
    assert not (tmp_path / "node.key").exists()


def test_up_passes_node_memory_to_every_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tessera.cli import deploy
    from tessera.deploy import local as deployment
    from tessera.deploy.supervise import StopReport

    seen: dict[str, Any] = {}

    class FakeDeployment:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            seen.update(kwargs)
            self.n_nodes = args[1]

        def close(self) -> StopReport:
            return StopReport(stopped=(), killed=(), seconds=0.0)

    def fake_run(dep: Any, out: Path, **kwargs: Any) -> tuple[float, str, None, dict[str, Any]]:
        return 0.5, "accuracy", None, {"final": {"value": 0.5}, "centralized": {}}

    monkeypatch.setattr(deployment, "Deployment", FakeDeployment)
    monkeypatch.setattr(deploy, "_up_with_progress", fake_run)
    out = tmp_path / "up"
    args = ["up", str(EXAMPLES / "chem97.toml"), "--nodes", "3", "--out", str(out), "-q"]
    CliRunner().invoke(app, args, catch_exceptions=False)
    assert seen["node_memory"] is None  # each node's own default
    done = CliRunner().invoke(app, [*args, "--node-memory", "3G"], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    assert seen["node_memory"] == 3 * GiB
    saved = json.loads((out / "run" / "up.json").read_text())["options"]
    assert UpOptions(**saved).node_memory == 3 * GiB  # what --resume starts the nodes with
    refused = CliRunner().invoke(app, [*args, "--node-memory", "3GB"])
    assert refused.exit_code == 2 and "--node-memory" in refused.output


def test_a_run_saved_before_node_memory_resumes_with_the_default() -> None:
    older = {
        "nodes": 3,
        "tls": True,
        "db_url": None,
        "records": "table",
        "sandbox_start_timeout": None,
        "node_max_parameters": None,
        "ask_consent": 0,
    }
    assert UpOptions(**older).node_memory is None

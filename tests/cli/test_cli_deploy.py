"""The deployment commands through the real ``tessera`` command, in subprocesses."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tessera.sandbox import SandboxLimits
from tessera.storage import StoreError

EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "tessera" / "examples"


def tessera(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tessera.cli", *args],
        check=False,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_certs_makes_a_ca_and_service_certificates(tmp_path: Path) -> None:
    done = tessera("certs", "--out", "pki", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for name in ("ca", "coordinator", "provider"):
        assert (tmp_path / "pki" / f"{name}.pem").exists()
        key = tmp_path / "pki" / f"{name}-key.pem"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = tessera("certs", "--out", "pki", cwd=tmp_path)
    assert again.returncode == 2 and "overwrite" in again.stderr.lower()


def test_up_refuses_a_tree_its_nodes_cannot_fill(tmp_path: Path) -> None:
    """Chem97's groups of 16 need aggregators outside each group: 10 nodes cannot."""
    done = tessera(
        "up", str(EXAMPLES / "chem97.toml"), "--nodes", "10", "--out", "up", "-q", cwd=tmp_path
    )
    assert done.returncode == 2
    said = " ".join(done.stderr.split())
    assert "needs 3 aggregators from nodes outside it" in said
    # Into a pipe, one error is one line, not wrapped at 80 columns.
    [line] = [ln for ln in done.stderr.splitlines() if "error:" in ln]
    assert "needs 3 aggregators" in line and "at most 7" in line
    # It names the job file's own field and a value that works (issue 12's first-run papercut).
    assert "secure.k" in said and "tree." not in said
    assert "set secure.group_size to at most 7" in said
    logs = tmp_path / "up" / "logs"
    assert not list(logs.glob("node-*.log"))  # refused before any node started


def test_revoking_without_a_receipt_says_so(tmp_path: Path) -> None:
    done = tessera(
        "consent", "revoke", "some-job", "--id", "node-1",
        "--coordinator", "http://127.0.0.1:9", "--insecure-loopback",
        "--keys", "k", "--state", "s", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert "holds no consent to some-job" in done.stderr


# -- start-up options, wired through in-process (the parties themselves are faked) --


def _invoke(*args: str) -> Any:
    from typer.testing import CliRunner

    from tessera.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


class _FakeAgent:
    configs: ClassVar[list[Any]] = []

    def __init__(self, cfg: Any) -> None:
        self.configs.append(cfg)

    def run(self) -> None:
        pass


@pytest.mark.parametrize(
    ("args", "seconds"), [((), 60.0), (("--sandbox-start-timeout", "300"), 300.0)]
)
def test_node_gives_its_sandbox_the_start_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], seconds: float
) -> None:
    from tessera.node import agent

    monkeypatch.setattr(agent, "NodeAgent", _FakeAgent)
    _FakeAgent.configs.clear()
    node = ("node", "--id", "node-1", "--coordinator", "http://127.0.0.1:9")
    done = _invoke(*node, "--keys", str(tmp_path / "k"), "--state", str(tmp_path / "s"), *args)
    assert done.exit_code == 0, done.output
    (cfg,) = _FakeAgent.configs
    assert cfg.sandbox_limits.start_timeout == seconds
    assert cfg.sandbox_limits.memory_bytes == SandboxLimits().memory_bytes  # the rest unchanged


def test_node_refuses_a_consent_page_off_loopback_unless_allowed(tmp_path: Path) -> None:
    done = tessera(
        "node", "--id", "node-1", "--coordinator", "http://127.0.0.1:9", "--insecure-loopback",
        "--consent-page", "0.0.0.0:8080", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert "not a loopback address" in done.stderr
    assert not (tmp_path / "node.key").exists()  # refused before anything was made


def test_node_refuses_a_sandbox_start_timeout_that_is_not_positive(tmp_path: Path) -> None:
    done = tessera(
        "node", "--id", "node-1", "--coordinator", "http://127.0.0.1:9",
        "--sandbox-start-timeout", "0", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert "sandbox.start_timeout" in done.stderr
    assert not (tmp_path / "node.key").exists()  # refused before anything was made


def test_up_passes_its_start_options_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tessera.cli import deploy
    from tessera.deploy import local as deployment
    from tessera.deploy.supervise import StopReport

    seen: dict[str, Any] = {}

    class FakeDeployment:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            seen["deployment"] = kwargs
            self.n_nodes = args[1]

        def close(self) -> StopReport:
            seen["closed"] = True
            return StopReport(stopped=(), killed=(), seconds=0.0)

    def fake_run(
        dep: Any, out: Path, **kwargs: Any
    ) -> tuple[float, str, float | None, dict[str, Any]]:
        seen["run"] = kwargs
        return 0.5, "accuracy", 0.625, {"final": {"value": 0.5}, "centralized": {"value": 0.625}}

    monkeypatch.setattr(deployment, "Deployment", FakeDeployment)
    monkeypatch.setattr(deploy, "_up_with_progress", fake_run)
    config = str(EXAMPLES / "chem97.toml")
    out = str(tmp_path / "up")
    done = _invoke("up", config, "--nodes", "3", "--out", out, "-q")
    assert done.exit_code == 0, done.output
    assert seen["deployment"]["sandbox_start_timeout"] == 60.0
    assert seen["run"]["start_timeout"] == 600.0
    assert seen["run"]["start_batch"] is None
    done = _invoke(
        "up", config, "--out", out, "-q",
        "--start-timeout", "90", "--start-batch", "5", "--sandbox-start-timeout", "240",
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert seen["deployment"]["sandbox_start_timeout"] == 240.0
    assert seen["run"]["start_timeout"] == 90.0
    assert seen["run"]["start_batch"] == 5
    assert seen["closed"]
    assert seen["deployment"]["ask_consent"] == 0  # every node consents on its own
    done = _invoke("up", config, "--nodes", "3", "--out", out, "-q", "--ask-consent", "2")
    assert done.exit_code == 0, done.output
    assert seen["deployment"]["ask_consent"] == 2
    assert callable(seen["deployment"]["on_consent_page"])  # up prints each login link


@pytest.mark.parametrize(
    ("option", "value"),
    [("--start-timeout", "0"), ("--start-batch", "-1"), ("--ask-consent", "21")],
)
def test_up_refuses_bad_start_options(tmp_path: Path, option: str, value: str) -> None:
    config = str(EXAMPLES / "chem97.toml")
    done = _invoke("up", config, "--out", str(tmp_path / "up"), option, value)
    assert done.exit_code == 2
    assert option in done.output


# -- tessera provider: the gate's state (revocations, used nonces) outlives a restart --


def _provider_config(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "records.csv").write_text("user,score\nu,1.0\n")
    dataset = {"name": "t", "backend": "table", "path": "records.csv", "user_field": "user"}
    config = folder / "provider.json"
    config.write_text(json.dumps({"datasets": [dataset]}))
    return config


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What ``tessera provider`` handed ``create_provider_app``; nothing is served."""
    from tessera.data_provider import app as provider
    from tessera.runtime.transport import serve

    seen: dict[str, Any] = {}
    real = provider.create_provider_app

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return real(*args, **kwargs)

    def run_server(app: Any, **kwargs: Any) -> None:
        state = seen["state"]
        state.revoke("c" * 64, 1.0, expires=2e9, now=0.0)  # a running provider's write
        seen["run"] = kwargs

    monkeypatch.setattr(provider, "create_provider_app", spy)
    monkeypatch.setattr(serve, "run_server", run_server)
    return seen


def test_provider_keeps_its_gate_state_beside_its_config_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: dict[str, Any]
) -> None:
    from tessera.data_provider.gate_state import SqlGateState

    config = _provider_config(tmp_path / "conf")
    monkeypatch.chdir(tmp_path)
    done = _invoke("provider", "conf/provider.json", "--port", "0")
    assert done.exit_code == 0, done.output
    assert isinstance(served["state"], SqlGateState)
    with SqlGateState(f"sqlite:///{config.parent / 'provider.db'}") as state:  # a restart
        assert state.revoked_at("c" * 64) == 1.0
    with pytest.raises(StoreError, match="closed"):  # closed when the server stopped
        served["state"].revoked_at("c" * 64)


def test_provider_db_option(tmp_path: Path, served: dict[str, Any]) -> None:
    from tessera.data_provider.gate_state import SqlGateState

    config = _provider_config(tmp_path / "conf")
    db = tmp_path / "state" / "gate.db"
    done = _invoke("provider", str(config), "--db", f"sqlite:///{db}")
    assert done.exit_code == 0, done.output
    assert not (config.parent / "provider.db").exists()
    with SqlGateState(f"sqlite:///{db}") as state:
        assert state.revoked_at("c" * 64) == 1.0


def test_provider_refuses_a_database_it_cannot_open(tmp_path: Path, served: dict[str, Any]) -> None:
    config = _provider_config(tmp_path / "conf")
    done = _invoke("provider", str(config), "--db", "mysql://nobody@127.0.0.1/x")
    assert done.exit_code == 2
    assert "cannot open the gate's database" in done.output
    assert "run" not in served


def test_job_page_prints_a_one_time_link_to_the_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx
    from tests.coordinator.coordinator_kit import AI, Harness

    from tessera.storage.keyfile import save_keys

    monkeypatch.delenv("TESSERA_KEY_PASSPHRASE", raising=False)
    keys = tmp_path / "ai-provider.key"
    save_keys(AI, keys, None, warn_clear=False)
    harness = Harness(tmp_path / "coordinator.db")
    try:
        done = _invoke("job", "page", "--coordinator", harness.url, "--keys", str(keys))
        assert done.exit_code == 0, done.output
        link = done.output.strip().splitlines()[-1]
        assert link.startswith(harness.url + "/ui/login?token=")
        with httpx.Client() as browser:
            assert browser.get(link).status_code == 303
            assert browser.get(link).status_code == 403  # once only
    finally:
        harness.stop()


def test_up_resume_says_what_it_cannot_resume(tmp_path: Path) -> None:
    config = str(EXAMPLES / "chem97.toml")
    both = _invoke("up", config, "--resume", str(tmp_path))
    assert both.exit_code == 2 and "not both" in both.output
    neither = _invoke("up")
    assert neither.exit_code == 2 and "--resume" in neither.output
    empty = _invoke("up", "--resume", str(tmp_path))
    assert empty.exit_code == 2
    assert "holds no tessera up run to resume (no run/up.json)" in " ".join(empty.output.split())
    from tessera.config import load_config
    from tessera.deploy.up import UpOptions, save_up_args

    save_up_args(
        tmp_path,
        load_config(EXAMPLES / "chem97.toml"),
        UpOptions(3, True, None, "table", None, None),
    )
    unsent = _invoke("up", "--resume", str(tmp_path))
    assert unsent.exit_code == 2
    assert "was never submitted: start it afresh" in " ".join(unsent.output.split())


def test_job_status_and_fetch_say_why_they_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.coordinator.coordinator_kit import AI, Harness

    from tessera.storage.keyfile import save_keys

    monkeypatch.delenv("TESSERA_KEY_PASSPHRASE", raising=False)
    keys = tmp_path / "ai-provider.key"
    save_keys(AI, keys, None, warn_clear=False)
    harness = Harness(tmp_path / "coordinator.db")
    try:
        for command in ("status", "fetch"):
            unknown = _invoke(
                "job", command, "nope", "--coordinator", harness.url, "--keys", str(keys)
            )
            assert unknown.exit_code == 2, unknown.output
            assert "404" in unknown.output
            keyless = _invoke(
                "job", command, "nope", "--coordinator", harness.url,
                "--keys", str(tmp_path / "missing.key"),
            )  # fmt: skip
            assert keyless.exit_code == 2 and "missing.key" in keyless.output
    finally:
        harness.stop()

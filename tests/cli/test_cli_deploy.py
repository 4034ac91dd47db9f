"""The deployment commands through the real ``tessera`` command, in subprocesses."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

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
    assert "needs 3 aggregators from nodes outside it" in " ".join(done.stderr.split())
    logs = tmp_path / "up" / "logs"
    assert not list(logs.glob("node-*.log"))  # refused before any node started


def test_revoking_without_a_receipt_says_so(tmp_path: Path) -> None:
    done = tessera(
        "consent", "revoke", "some-job", "--id", "node-1",
        "--coordinator", "http://127.0.0.1:9", "--keys", "k", "--state", "s", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert "holds no consent to some-job" in done.stderr

"""Secrets at rest: key files under a memory-hard KDF, private files and folders.

Each test is an attack on the state a party leaves on disk: a stolen key
file brute-forced offline, a co-tenant reading a database or a clear key,
an operator never told that the keys lie in the clear.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.crypto.keys import NodeKeys
from tessera.errors import ConfigError
from tessera.storage.keyfile import load_keys, load_or_create_keys, save_keys

EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "tessera" / "examples"
PASS = b"correct horse battery staple"
# The documented floor (docs/architecture.md, tessera.crypto.keys): OWASP's scrypt
# setting, N=2**17, r=8, p=1, that is 128 MiB of memory per guess.
FLOOR_MEMORY = 128 * 2**20


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """A permissive umask, as on most systems: it must not widen any mode."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _open_to_others(root: Path) -> list[str]:
    """Every file or folder under ``root`` (and itself) with a group or other bit.

    But certificates: public by nature (``tessera certs`` makes them 0644), and
    out of reach anyway in the 0700 folder checked here with the rest.
    """
    paths = [root, *root.rglob("*")]
    return [
        f"{p.relative_to(root.parent)} {stat.S_IMODE(p.lstat().st_mode):o}"
        for p in paths
        if not p.is_symlink()
        and stat.S_IMODE(p.lstat().st_mode) & 0o077
        and not (p.suffix == ".pem" and not p.name.endswith("-key.pem"))
    ]


def _up_refused(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``tessera up`` with 10 nodes: every party's files are made, then the tree is refused."""
    with umask(0o022):
        done = subprocess.run(
            [sys.executable, "-m", "tessera.cli", "up", str(EXAMPLES / "chem97.toml"),
             "--nodes", "10", "--out", "up", "-q"],
            check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "aggregators" in done.stderr  # refused where expected, after the files were made
    return done


def _env(passphrase: bytes | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TESSERA_KEY_PASSPHRASE"}
    if passphrase is not None:
        env["TESSERA_KEY_PASSPHRASE"] = passphrase.decode()
    return env


# -- the key file's KDF ---------------------------------------------------------------


def test_a_passphrase_key_file_costs_a_memory_hard_kdf_at_or_above_the_floor() -> None:
    """PKCS#8 under PBKDF2 with 2,048 iterations cost an attacker microseconds a guess."""
    data = NodeKeys.generate().private_bytes(PASS)
    assert b"ENCRYPTED PRIVATE KEY" not in data  # not the PBES2/PBKDF2 form any more
    from tessera.crypto.keys import ScryptParams

    params = ScryptParams.of_key_file(data)  # what the file itself says it costs
    assert params.memory >= FLOOR_MEMORY
    assert params.n >= 2**17 and params.r >= 8 and params.p >= 1


def test_an_old_pbkdf2_key_file_is_read_then_upgraded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file written before this fix opens, and its party's next start re-encrypts it."""
    from cryptography.hazmat.primitives import serialization

    from tessera.crypto.keys import ScryptParams

    keys = NodeKeys.generate()
    legacy = b"".join(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASS),
        )
        for key in (keys._signing, keys._agreement)
    )
    path = tmp_path / "node.key"
    path.write_bytes(legacy)
    with caplog.at_level(logging.WARNING, logger="tessera.storage.keyfile"):
        assert load_or_create_keys(path, PASS).public == keys.public
    assert "PBKDF2" in caplog.text
    assert ScryptParams.of_key_file(path.read_bytes()).memory >= FLOOR_MEMORY
    assert load_keys(path, PASS).public == keys.public
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@settings(max_examples=15, deadline=None)
@given(passphrase=st.binary(min_size=1, max_size=64), wrong=st.binary(min_size=1, max_size=64))
def test_any_wrong_passphrase_is_refused_with_one_clear_error(
    passphrase: bytes, wrong: bytes
) -> None:
    from tessera.crypto.keys import ScryptParams

    if wrong == passphrase:
        wrong += b"!"
    data = NodeKeys.from_seed(b"k").private_bytes(passphrase, kdf=ScryptParams.cheapest())
    with pytest.raises(ConfigError, match="wrong passphrase") as info:
        NodeKeys.from_private_bytes(data, wrong)
    assert info.value.field == "passphrase"


# -- a key in the clear is never silent ----------------------------------------------------


def test_a_key_saved_or_loaded_in_the_clear_logs_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "node.key"
    with caplog.at_level(logging.WARNING, logger="tessera.storage.keyfile"):
        save_keys(NodeKeys.generate(), path)
        load_keys(path)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2
    assert all("in the clear" in r.getMessage() and str(path) in r.getMessage() for r in warned)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tessera.storage.keyfile"):
        save_keys(NodeKeys.generate(), tmp_path / "enc.key", PASS)
        load_keys(tmp_path / "enc.key", PASS)
    assert not caplog.records


# -- files and folders: 0600 and 0700 --------------------------------------------------------


def test_up_leaves_nothing_others_can_read_and_says_node_keys_are_in_the_clear(
    tmp_path: Path,
) -> None:
    done = _up_refused(tmp_path, _env(None))
    out = tmp_path / "up"
    made = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    assert {"keys", "logs", "run", "pki/ca-key.pem", "nodes/000009/node.key"} <= made
    assert _open_to_others(out) == []
    assert "in the clear" in done.stderr and "TESSERA_KEY_PASSPHRASE" in done.stderr


def test_up_with_a_passphrase_seals_every_node_key(tmp_path: Path) -> None:
    from tessera.crypto.keys import ScryptParams

    done = _up_refused(tmp_path, _env(PASS))
    out = tmp_path / "up"
    keys = sorted(out.glob("nodes/*/node.key"))
    assert len(keys) == 10
    for path in keys:
        assert ScryptParams.of_key_file(path.read_bytes()).memory >= FLOOR_MEMORY
        assert load_keys(path, PASS).public is not None
    assert "in the clear" not in done.stderr
    assert _open_to_others(out) == []


def test_the_ai_provider_seals_its_key_under_the_passphrase(tmp_path: Path) -> None:
    """``tessera job submit`` used to write the AI provider's key in the clear, always."""
    from tessera.crypto.keys import ScryptParams

    with umask(0o022):
        done = subprocess.run(
            [sys.executable, "-m", "tessera.cli", "job", "submit", str(EXAMPLES / "chem97.toml"),
             "--coordinator", "http://127.0.0.1:9", "--provider", "http://127.0.0.1:9",
             "--dataset", "records", "--user-field", "user", "--min-consents", "1",
             "--keys", "ai/ai-provider.key"],
            check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300,
            env=_env(PASS),
        )  # fmt: skip
    assert done.returncode != 0  # nobody listens on port 9: the key was made first
    key = tmp_path / "ai" / "ai-provider.key"
    assert ScryptParams.of_key_file(key.read_bytes()).memory >= FLOOR_MEMORY
    assert _open_to_others(tmp_path / "ai") == []


def test_the_coordinator_seals_its_key_and_keeps_its_database_private(tmp_path: Path) -> None:
    from tessera.crypto.keys import ScryptParams
    from tessera.deploy.local import Process, wait_for_file

    state = tmp_path / "coord"
    log = tmp_path / "coordinator.log"
    with umask(0o022), log.open("wb") as sink:
        popen = subprocess.Popen(
            [sys.executable, "-m", "tessera.cli", "coordinator",
             "--db", f"sqlite:///{state / 'coordinator.db'}", "--keys", str(state / "c.key"),
             "--port", "0", "--ready-file", str(tmp_path / "url")],
            stdout=sink, stderr=subprocess.STDOUT, env=_env(PASS),
        )  # fmt: skip
    proc = Process("coordinator", popen, log)
    try:
        wait_for_file(tmp_path / "url", proc)
        assert {"c.key", "coordinator.db", "coordinator.db-wal"} <= {
            p.name for p in state.iterdir()
        }
        assert _open_to_others(state) == []
    finally:
        proc.stop()
    assert ScryptParams.of_key_file((state / "c.key").read_bytes()).memory >= FLOOR_MEMORY
    assert "in the clear" not in log.read_text()


def test_a_deployment_makes_its_files_private_whatever_the_umask(tmp_path: Path) -> None:
    """The library too, not only the CLI: e2e tests and scripts build a Deployment."""
    from tessera.config import load_config
    from tessera.deploy.local import Deployment

    with umask(0o022):
        dep = Deployment(load_config(EXAMPLES / "chem97.toml"), 3, tmp_path / "up", tls=True)
        dep.write_provider_files()
    assert (tmp_path / "up" / "provider" / "records.parquet").exists()
    assert _open_to_others(tmp_path / "up") == []


def test_a_sqlite_database_and_its_side_files_are_private(tmp_path: Path) -> None:
    from tessera.data_provider.gate_state import SqlGateState

    db = tmp_path / "state" / "provider.db"
    with umask(0o022), SqlGateState(f"sqlite:///{db}") as state:
        state.revoke("c" * 64, 1.0, expires=2e9, now=0.0)
        made = sorted(p.name for p in db.parent.iterdir())
        assert "provider.db-wal" in made  # WAL mode: the side files hold rows too
        assert _open_to_others(db.parent) == []

"""``tessera keys reseal``: a key file under a new passphrase, the keys themselves kept."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tessera.cli import app
from tessera.crypto.keys import NodeKeys
from tessera.errors import ConfigError
from tessera.storage.keyfile import is_sealed, load_keys, reseal_keys, save_keys

OLD, NEW = b"old passphrase", b"correct horse battery"


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A key file sealed under OLD, and its fingerprint; no passphrase in the environment."""
    monkeypatch.delenv("TESSERA_KEY_PASSPHRASE", raising=False)
    keys = NodeKeys.generate()
    path = tmp_path / "node.key"
    save_keys(keys, path, OLD)
    return path, keys.public.fingerprint


def _reseal(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(app, ["keys", "reseal", *args], input=input, terminal_width=200)


def test_reseal_under_a_prompted_passphrase_keeps_the_keys(
    key_file: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, fingerprint = key_file
    monkeypatch.setenv("TESSERA_KEY_PASSPHRASE", OLD.decode())
    done = _reseal(str(path), input=f"{NEW.decode()}\n{NEW.decode()}\n")
    assert done.exit_code == 0, done.output
    assert f"key fingerprint {fingerprint} (unchanged)" in done.output
    assert NEW.decode() not in done.output  # the prompt hides what is typed
    assert load_keys(path, NEW).public.fingerprint == fingerprint
    with pytest.raises(ConfigError, match="wrong passphrase"):
        load_keys(path, OLD)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["node.key"]  # no temporary file left


def test_the_current_passphrase_is_prompted_for_when_not_in_the_environment(
    key_file: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, fingerprint = key_file
    monkeypatch.setenv("NEXT_PASSPHRASE", NEW.decode())
    done = _reseal(str(path), "--new-passphrase-env", "NEXT_PASSPHRASE", input=f"{OLD.decode()}\n")
    assert done.exit_code == 0, done.output
    assert "Current passphrase" in done.output and "New passphrase" not in done.output
    assert load_keys(path, NEW).public.fingerprint == fingerprint


@pytest.mark.parametrize(
    "args",
    [(), ("--clear",), ("--new-passphrase-env", "NEXT_PASSPHRASE")],
    ids=["prompt", "clear", "env"],
)
def test_a_wrong_passphrase_leaves_the_file_byte_identical(
    key_file: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    path, _ = key_file
    before, mode = path.read_bytes(), path.stat().st_mode
    monkeypatch.setenv("TESSERA_KEY_PASSPHRASE", "not it")
    monkeypatch.setenv("NEXT_PASSPHRASE", NEW.decode())
    done = _reseal(str(path), *args, input=f"{NEW.decode()}\n{NEW.decode()}\n")
    assert done.exit_code == 2
    assert "wrong passphrase, or the key file is corrupt; the file is unchanged" in done.output
    assert "New passphrase" not in done.output  # refused before a new one is asked
    assert path.read_bytes() == before and path.stat().st_mode == mode


def test_clear_needs_its_flag_warns_and_can_be_sealed_again(
    key_file: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, fingerprint = key_file
    monkeypatch.setenv("TESSERA_KEY_PASSPHRASE", OLD.decode())
    done = _reseal(str(path), "--clear")
    assert done.exit_code == 0, done.output
    assert "in the clear" in done.output and "warning" in done.output
    assert not is_sealed(path)
    assert load_keys(path, None).public.fingerprint == fingerprint
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # From the clear: no current passphrase asked (the environment's is not needed either).
    monkeypatch.delenv("TESSERA_KEY_PASSPHRASE")
    again = _reseal(str(path), input=f"{NEW.decode()}\n{NEW.decode()}\n")
    assert again.exit_code == 0, again.output
    assert "Current passphrase" not in again.output
    assert is_sealed(path) and load_keys(path, NEW).public.fingerprint == fingerprint


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--new-passphrase-env", "NOT_SET_ANYWHERE"), "NOT_SET_ANYWHERE is not set"),
        (("--new-passphrase-env", "EMPTY"), "EMPTY is not set, or empty"),
        (("--clear", "--new-passphrase-env", "X"), "not both"),
    ],
)
def test_refusals_leave_the_file_untouched(
    key_file: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], said: str
) -> None:
    path, _ = key_file
    before = path.read_bytes()
    monkeypatch.setenv("TESSERA_KEY_PASSPHRASE", OLD.decode())
    monkeypatch.setenv("EMPTY", "")
    done = _reseal(str(path), *args)
    assert done.exit_code == 2, done.output
    assert said in " ".join(done.output.split())
    assert path.read_bytes() == before


def test_a_missing_or_foreign_file_is_refused(tmp_path: Path) -> None:
    missing = _reseal(str(tmp_path / "none.key"))
    assert missing.exit_code == 2 and "no key file at" in missing.output
    other = tmp_path / "notes.txt"
    other.write_text("not a key\n")
    foreign = _reseal(str(other))
    assert foreign.exit_code == 2 and "not a Tessera node key file" in foreign.output
    assert other.read_text() == "not a key\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_root_resealing_keeps_the_partys_ownership(key_file: tuple[Path, str]) -> None:
    """The service runs as its party's user: a file root re-sealed must stay that user's."""
    path, _ = key_file
    os.chown(path, 4321, 4321)
    reseal_keys(path, OLD, NEW)
    assert (path.stat().st_uid, path.stat().st_gid) == (4321, 4321)


def test_a_linked_key_file_is_resealed_where_it_lies(key_file: tuple[Path, str]) -> None:
    path, fingerprint = key_file
    link = path.parent / "current.key"
    link.symlink_to(path.name)
    assert reseal_keys(link, OLD, NEW).public.fingerprint == fingerprint
    assert link.is_symlink() and load_keys(link, NEW).public.fingerprint == fingerprint

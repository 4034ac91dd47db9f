"""0600 files and 0700 folders, whatever the umask; a person's own folders left alone."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.storage.engine import make_engine
from tessera.storage.private import open_private, private_dir, private_file, write_private


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def _permissive_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_private_dir_makes_0700_and_tightens_only_when_asked(tmp_path: Path) -> None:
    made = private_dir(tmp_path / "a" / "b")
    assert _mode(made) == 0o700
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    private_dir(mine)
    assert _mode(mine) == 0o755  # a folder a person pointed to keeps its mode
    private_dir(mine, tighten=True)
    assert _mode(mine) == 0o700


def test_private_file_narrows_an_existing_file_and_keeps_its_content(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    path.write_bytes(b"rows")
    os.chmod(path, 0o644)
    private_file(path)
    assert _mode(path) == 0o600 and path.read_bytes() == b"rows"
    assert _mode(private_file(tmp_path / "new")) == 0o600


def test_open_private_and_write_private_replace_content_as_0600(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("old and long")
    os.chmod(path, 0o666)
    write_private(path, "new")
    assert _mode(path) == 0o600 and path.read_text() == "new"
    with open_private(tmp_path / "g", "wb") as fh:
        fh.write(b"\x00")
    assert _mode(tmp_path / "g") == 0o600


def test_an_older_world_readable_database_is_narrowed_on_open(tmp_path: Path) -> None:
    """A coordinator.db (and a -wal left by a kill) made 0644 by an older version."""
    db = tmp_path / "coordinator.db"
    for path in (db, tmp_path / "coordinator.db-wal"):
        path.write_bytes(b"")
        os.chmod(path, 0o644)
    make_engine(f"sqlite:///{db}").dispose()
    assert _mode(db) == 0o600 and _mode(tmp_path / "coordinator.db-wal") == 0o600

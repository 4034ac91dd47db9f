"""A small disk a test fills: a tmpfs it mounts (root only), and a file taking every byte.

Used by the coordinator's and the node's disk-full tests. Needs root (to mount): CI
runs as root, so under CI=true a missing right fails instead of skipping.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        reason = f"cannot mount a small tmpfs: {mounted.stderr.strip() or 'not root'}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true needs the disk-full test: {reason}")
        pytest.skip(reason)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """A file taking every free byte of ``disk``."""
    filler = disk / "filler"
    # Unbuffered: a buffer left unwritten would fail again at close, outside the check.
    with filler.open("wb", buffering=0) as f, pytest.raises(OSError, match="No space left") as full:  # noqa: PT012
        while True:
            f.write(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC
    return filler

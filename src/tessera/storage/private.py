"""Files and folders only their owner can read: 0600 files, 0700 folders.

Keys, databases, consent receipts and users' records all live on disk; a
file the umask leaves 0644 is readable by every account on the machine. The
modes here are set explicitly (``os.open`` with a mode, then ``chmod``), so
no umask can widen them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path
from typing import IO, Literal, overload

from tessera.storage.errors import DiskFull

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: str | os.PathLike[str], *, tighten: bool = False) -> Path:
    """Make ``path`` (and missing parents); a folder made here is 0700.

    An existing folder keeps its mode unless ``tighten``: only for folders
    this program owns, never one a person pointed it to (their home, ``.``).
    """
    folder = Path(path)
    existed = folder.is_dir()
    folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if tighten or not existed:
        os.chmod(folder, DIR_MODE)  # mkdir's mode passes through the umask
    return folder


def private_file(path: str | os.PathLike[str]) -> Path:
    """Make ``path`` an empty 0600 file if missing; take group and other bits off if not."""
    target = Path(path)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return target


@overload
def open_private(path: str | os.PathLike[str], mode: Literal["wb"]) -> IO[bytes]: ...
@overload
def open_private(path: str | os.PathLike[str], mode: Literal["w"]) -> IO[str]: ...
def open_private(path: str | os.PathLike[str], mode: Literal["w", "wb"]) -> IO[bytes] | IO[str]:
    """``open(path, mode)`` for writing, truncated, the file 0600 whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # an existing file keeps its mode through O_CREAT
        return os.fdopen(fd, mode, encoding=None if mode == "wb" else "utf-8")
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise


def write_private(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` to a 0600 file (replacing its content)."""
    if isinstance(data, bytes):
        with open_private(path, "wb") as fh:
            fh.write(data)
    else:
        with open_private(path, "w") as fh:
            fh.write(data)


def replace_private(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` to the 0600 file ``path`` whole or not at all.

    A temporary beside it is written, flushed to the disk and renamed over it,
    so a crash or a full disk leaves the old file (or none), never an empty or
    torn one that a restart would read as a secret or a cursor. On a full disk
    (ENOSPC, EDQUOT) ``DiskFull`` says so, and no temporary is left.
    """
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    try:
        with open_private(tmp, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(
                f"the disk holding {target.parent} is full: {target.name} was not written"
                " (the file as it was is kept); free space there"
            ) from exc
        raise

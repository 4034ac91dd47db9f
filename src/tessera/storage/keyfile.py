"""A party's long-term keys on disk: one file, mode 0600, written atomically.

The keys themselves (``tessera.crypto.keys``) know only bytes; this module
owns the file: never half-written, never world-readable, never replaced by
accident (replacing an identity key loses the node's identity), and a
passphrase (``TESSERA_KEY_PASSPHRASE`` in the CLI) encrypts it when given.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from tessera.crypto.keys import NodeKeys
from tessera.errors import ConfigError

MAX_KEY_FILE = 16 * 1024  # a key file is under 1 KiB; refuse to read anything huge


def save_keys(
    keys: NodeKeys,
    path: str | os.PathLike[str],
    passphrase: bytes | None = None,
    *,
    overwrite: bool = False,
) -> None:
    """Write the key file with mode 0600, atomically; never half-written.

    An existing file is kept (``FileExistsError``) unless ``overwrite``.
    """
    target = Path(path)
    data = keys.private_bytes(passphrase)
    folder = target.parent
    # mkstemp creates the file with mode 0600 whatever the umask.
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        if overwrite:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)  # atomic create-if-absent: FileExistsError if present
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(folder)


def load_keys(path: str | os.PathLike[str], passphrase: bytes | None = None) -> NodeKeys:
    """Read a key file written by ``save_keys``."""
    with Path(path).open("rb") as fh:
        data = fh.read(MAX_KEY_FILE + 1)
    if len(data) > MAX_KEY_FILE:
        raise ConfigError("key file", "too large to be a node key file")
    return NodeKeys.from_private_bytes(data, passphrase)


def load_or_create_keys(path: str | os.PathLike[str], passphrase: bytes | None) -> NodeKeys:
    """A party's long-term keys: made once, then always loaded."""
    target = Path(path)
    if target.exists():
        return load_keys(target, passphrase)
    keys = NodeKeys.generate()
    target.parent.mkdir(parents=True, exist_ok=True)
    save_keys(keys, target, passphrase)
    return keys


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; best effort where a directory cannot be synced."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

"""A party's long-term keys on disk: one file, mode 0600, written atomically.

The keys themselves (``tessera.crypto.keys``) know only bytes; this module
owns the file: never half-written, never world-readable (0600, in a folder
made 0700), never replaced by accident (replacing an identity key loses the
node's identity), and sealed under a passphrase (``TESSERA_KEY_PASSPHRASE``
in the CLI, scrypt then AES-256-GCM) when one is given.

A key saved or loaded in the clear logs a warning (logger
``tessera.storage.keyfile``) naming the file: whoever reads it holds the
keys. A file in the legacy PBKDF2 form logs one too, and
``load_or_create_keys`` re-seals it under scrypt in place, atomically.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

from tessera.crypto.keys import NodeKeys, key_file_format
from tessera.errors import ConfigError
from tessera.storage.private import private_dir

log = logging.getLogger(__name__)

MAX_KEY_FILE = 16 * 1024  # a key file is under 1 KiB; refuse to read anything huge


def save_keys(
    keys: NodeKeys,
    path: str | os.PathLike[str],
    passphrase: bytes | None = None,
    *,
    overwrite: bool = False,
    warn_clear: bool = True,
) -> None:
    """Write the key file with mode 0600, atomically; never half-written.

    An existing file is kept (``FileExistsError``) unless ``overwrite``.
    Without a passphrase a warning is logged, unless ``warn_clear`` is False
    because the caller already warned once for many keys.
    """
    target = Path(path)
    data = keys.private_bytes(passphrase)
    if passphrase is None and warn_clear:
        log.warning("%s", _clear_warning(target, "saved"))
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


def load_keys(
    path: str | os.PathLike[str], passphrase: bytes | None = None, *, warn_clear: bool = True
) -> NodeKeys:
    """Read a key file written by ``save_keys``; warn if it lies in the clear."""
    keys, form = _load(Path(path), passphrase)
    if form == "clear" and warn_clear:
        log.warning("%s", _clear_warning(Path(path), "loaded"))
    return keys


def load_or_create_keys(path: str | os.PathLike[str], passphrase: bytes | None) -> NodeKeys:
    """A party's long-term keys: made once, then always loaded (a legacy file re-sealed)."""
    target = Path(path)
    if not target.exists():
        keys = NodeKeys.generate()
        private_dir(target.parent)
        save_keys(keys, target, passphrase)
        return keys
    keys, form = _load(target, passphrase)
    if form == "clear":
        log.warning("%s", _clear_warning(target, "loaded"))
    elif form == "pbkdf2":
        assert passphrase is not None  # the legacy form opened with it
        save_keys(keys, target, passphrase, overwrite=True)
        log.warning("key file %s: re-sealed with scrypt in place of legacy PBKDF2", target)
    return keys


def is_sealed(path: str | os.PathLike[str]) -> bool:
    """Whether the key file is sealed under a passphrase; ``ConfigError`` if it is no key file."""
    return key_file_format(_read(Path(path))) != "clear"


def reseal_keys(path: str | os.PathLike[str], old: bytes | None, new: bytes | None) -> NodeKeys:
    """Re-seal the key file under ``new`` (None: in the clear), in place: atomically,
    mode 0600, its owner kept, the keys themselves unchanged (so the party's identity).

    ``ConfigError`` if ``old`` does not open it (None for a file in the clear), the
    file then untouched; the rewritten file is read back under ``new`` before this returns.
    """
    target = Path(path).resolve()  # a link's target: replacing the link would leave it stale
    keys, _ = _load(target, old)
    owner = target.stat()
    save_keys(keys, target, new, overwrite=True, warn_clear=False)
    if (owner.st_uid, owner.st_gid) != (os.getuid(), os.getgid()):
        # Root re-sealing a party's file: its service, running as the party, must still read it.
        with contextlib.suppress(PermissionError):
            os.chown(target, owner.st_uid, owner.st_gid)
    again, _ = _load(target, new)
    if again.public != keys.public:  # cannot happen short of a broken disk: say so loudly
        raise ConfigError("key file", f"{target} reads back as other keys after re-sealing")
    return keys


def _read(path: Path) -> bytes:
    with path.open("rb") as fh:
        data = fh.read(MAX_KEY_FILE + 1)
    if len(data) > MAX_KEY_FILE:
        raise ConfigError("key file", "too large to be a node key file")
    return data


def _load(path: Path, passphrase: bytes | None) -> tuple[NodeKeys, str]:
    data = _read(path)
    keys = NodeKeys.from_private_bytes(data, passphrase)
    form = key_file_format(data)
    if form == "pbkdf2":
        log.warning(
            "key file %s is sealed with legacy PBKDF2 (2048 iterations), cheap to brute-force:"
            " its party's next start re-seals it with scrypt",
            path,
        )
    return keys, form


def _clear_warning(path: Path, done: str) -> str:
    return (
        f"key file {path} {done} in the clear (no passphrase): whoever can read it holds"
        " the keys; set TESSERA_KEY_PASSPHRASE to seal it"
    )


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; best effort where a directory cannot be synced."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

"""Large envelopes as files, named by the SHA-256 of their bytes, in one private folder.

The mailbox keeps a small envelope in its database row; one of megabytes (a
share, a sum or the evidence of a large model) would make every row read,
every pull and every write hold it whole in memory, and a PostgreSQL row is at
most 1 GiB. So the coordinator streams such an envelope into a file here (a
``BlobWriter``: chunk by chunk, hashed as it goes), its row names the file,
and a pull streams the file back out. Files are 0600 in a 0700 folder: the
envelopes are sealed, but who sent what to whom is the relay's to keep.

Each envelope's bytes hold its fresh nonce and the mailbox takes a (sender,
nonce) once, so one file belongs to one row: deleting the row deletes it.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from tessera.storage.errors import StoreError
from tessera.storage.private import private_dir

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 20


class BlobStore:
    """A folder of files named by their SHA-256."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = private_dir(root, tighten=True)

    def path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise StoreError(f"not a blob name: {sha256[:80]!r}")
        return self.root / sha256

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def read(self, sha256: str) -> bytes:
        """All of a blob, checked against its name (a file changed on disk is an error)."""
        try:
            data = self.path(sha256).read_bytes()
        except OSError as exc:
            raise StoreError(f"cannot read blob {sha256}: {exc}") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise StoreError(f"blob {sha256} does not match its name")
        return data

    def chunks(self, sha256: str, size: int = CHUNK) -> Iterator[bytes]:
        """A blob's bytes, ``size`` at a time (for streaming it out)."""
        try:
            with self.path(sha256).open("rb") as handle:
                while chunk := handle.read(size):
                    yield chunk
        except OSError as exc:
            raise StoreError(f"cannot read blob {sha256}: {exc}") from None

    def remove(self, names: Iterable[str]) -> None:
        for name in names:
            self.path(name).unlink(missing_ok=True)


class BlobWriter:
    """One blob being written: ``write`` chunks, then ``commit`` (or ``discard``)."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._tmp = store.root / f".incoming-{os.urandom(8).hex()}"
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes | memoryview) -> None:
        self._file.write(chunk)
        self._sha.update(chunk)
        self.size += len(chunk)

    def commit(self) -> tuple[str, bool]:
        """Make the blob durable under its name: (name, whether it was new here)."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        name = self._sha.hexdigest()
        target = self._store.path(name)
        if target.exists():  # the same bytes again (a retried upload): keep the first
            self._tmp.unlink(missing_ok=True)
            return name, False
        os.replace(self._tmp, target)
        return name, True

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)

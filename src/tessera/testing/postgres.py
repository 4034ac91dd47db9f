"""A private PostgreSQL server for tests that stop, crash and restart it.

The tests that share a server (``tests/conftest.py``) cannot restart it; this
one is made for the test alone: ``initdb`` into a fresh folder, the postmaster
on a free loopback port and a socket in that folder, trust authentication.

    with PostgresCluster.create() as pg:
        url = pg.url                  # postgresql+psycopg://postgres@127.0.0.1:PORT/postgres
        pg.stop("immediate")          # a crash: no checkpoint, WAL replayed at the start
        pg.start()

PostgreSQL refuses to run as root, so under root the server runs as the
``postgres`` user (or ``nobody``), which owns the folder. ``create`` raises
``PostgresUnavailable`` where ``initdb`` or ``pg_ctl`` is missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

__all__ = ["PostgresCluster", "PostgresUnavailable"]


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries (or no user to run them as) on this machine."""


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:  # Debian keeps them off PATH, in one folder per major version
        versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
        found = str(versions[0]) if versions else None
    if found is None:
        raise PostgresUnavailable(f"no {name} on PATH or in /usr/lib/postgresql/*/bin")
    return found


def _run_as() -> str | None:
    """The user the server runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return user
    raise PostgresUnavailable("running as root, with neither a postgres nor a nobody user")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PostgresCluster:
    """One throw-away PostgreSQL server; ``close`` stops it and deletes its folder."""

    def __init__(self, root: Path, *, user: str | None, port: int) -> None:
        self.root, self.user, self.port = root, user, port
        self.data = root / "data"
        self.log = root / "server.log"
        self._initdb, self._pg_ctl = _binary("initdb"), _binary("pg_ctl")

    @classmethod
    def create(cls) -> PostgresCluster:
        """A new cluster, started."""
        _binary("initdb"), _binary("pg_ctl")  # fail before making anything
        user = _run_as()
        # Under /tmp, not pytest's tmp_path: that is root's 0700 folder, closed to the user.
        root = Path(tempfile.mkdtemp(prefix="tessera-pg-"))
        if user is not None:
            shutil.chown(root, user)
        cluster = cls(root, user=user, port=_free_port())
        try:
            cluster._ctl(
                cluster._initdb, "-D", str(cluster.data), "-U", "postgres", "-A", "trust",
                "-E", "UTF8", "--no-sync",
            )  # fmt: skip
            cluster.start()
        except BaseException:
            cluster.close()
            raise
        return cluster

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Start the server (after a crash it replays its WAL first); waits until it serves."""
        # fsync off: the tests crash the server, never the machine, so the OS keeps every
        # write; a crash (stop "immediate") still loses whatever was not committed.
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl(
            self._pg_ctl, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
            "-o", options, "start",
        )  # fmt: skip

    def stop(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        """Stop the server: ``fast`` ends the sessions and checkpoints, ``immediate`` is a
        crash (every backend killed, no checkpoint)."""
        self._ctl(self._pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        status = self._ctl(self._pg_ctl, "-D", str(self.data), "status", check=False)
        return status.returncode == 0

    def close(self) -> None:
        """Stop the server if it runs (as a crash: nothing is kept) and delete its folder."""
        try:
            if self.data.is_dir() and self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def _ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = list(args) if self.user is None else ["runuser", "-u", self.user, "--", *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if check and done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:1])} {args[-1]} failed: {done.stderr}{log}")
        return done

"""One SQLAlchemy Engine per Store, configured for durability and threads.

SQLite (a file): WAL so readers never wait for the writer; ``synchronous=FULL``
so a committed transaction survives a power cut, not only a ``kill -9``;
foreign keys on; a 30 s ``busy_timeout``; ``check_same_thread=False`` because
pooled connections move between threads (each call checks one out, so no
connection is ever used by two threads at once). The sqlite3 module's own
transaction handling is switched off and SQLAlchemy's ``begin`` emits the
BEGIN instead: ``BEGIN IMMEDIATE`` for writes, so a writer takes the lock
before its first read and waits (``busy_timeout``) rather than failing when
it later upgrades; plain ``BEGIN`` for reads, so multi-query reads see one
snapshot. ``sqlite://`` (in-memory) gets a single shared connection, and the
Store then serialises calls with a lock.

PostgreSQL: ``pool_pre_ping`` to survive server restarts; a bare
``postgresql://`` URL is given the psycopg 3 driver.

``hide_parameters`` keeps blobs and keys out of error messages and logs.

A SQLite file holds secrets (consents, sealed mail, a provider's burnt
nonces): it is made 0600 before SQLite opens it, in a folder made 0700 if
missing, and SQLite gives its -wal, -shm and -journal files the main file's
mode. A file left wider by an older version is narrowed, side files too.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

from tessera.storage.private import private_dir, private_file

WRITE_OPTION = "tessera_write"
BUSY_TIMEOUT_S = 30.0


def is_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def make_engine(url_text: str) -> Engine:
    """Create the engine for ``url_text``; ValueError for an unsupported backend."""
    url = make_url(url_text)
    backend = url.get_backend_name()
    if backend == "postgresql":
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        return create_engine(url, pool_pre_ping=True, hide_parameters=True)
    if backend != "sqlite":
        raise ValueError(f"unsupported database URL scheme {url.drivername!r}")
    memory = is_memory(url)
    if not memory and url.database is not None and not url.database.startswith("file:"):
        _private_sqlite(Path(url.database))
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_S},
        hide_parameters=True,
        poolclass=StaticPool if memory else None,  # None: the dialect's own pool
    )
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _private_sqlite(path: Path) -> None:
    """The database file 0600 (and its side files, where left over) before SQLite opens it."""
    private_dir(path.parent)
    private_file(path)
    for suffix in ("-wal", "-shm", "-journal"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            private_file(side)


def _sqlite_on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" hook emits BEGIN
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    write = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

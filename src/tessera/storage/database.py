"""One SQLAlchemy database on SQLite or PostgreSQL: what every durable service state shares.

``Database`` opens the engine (``tessera.storage.engine``), makes its tables
once (``create_all`` under a PostgreSQL advisory lock, so two processes
starting together do not race), and hands out transactions that raise
``StoreError`` for any database failure: ``Unavailable`` where the database
rather than the call failed (SQLAlchemy's ``OperationalError``: no server, a
restart, a dropped connection, a full disk), which is worth retrying. In-memory SQLite is one shared
connection, so every call is serialised; SQLite has one writer anyway, so
this process's writers queue on a lock rather than in the busy handler
(other processes still use it). The coordinator's ``Store`` and the data
provider's ``SqlGateState`` are both one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Self

from sqlalchemy import Connection, MetaData, Table, inspect, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from tessera.storage.engine import WRITE_OPTION, is_memory, make_engine
from tessera.storage.errors import StoreError, Unavailable

__all__ = ["Database"]


class Database:
    """Engine, tables and transactions of one database; ``what`` names it in errors."""

    def __init__(self, url: str, metadata: MetaData, *, ddl_lock: int, what: str) -> None:
        self._what = what
        try:  # ValueError (an unsupported URL scheme) goes to the caller as it is
            self._engine = make_engine(url)
            memory = is_memory(make_url(url))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open the {what}: {exc}") from None
        self._postgres = self._engine.dialect.name == "postgresql"
        self._closed = False
        self._serial: AbstractContextManager[object] = (
            threading.RLock() if memory else nullcontext()
        )
        self._writer: AbstractContextManager[object] = (
            threading.Lock() if not self._postgres and not memory else nullcontext()
        )
        try:
            with self._transaction(write=True) as conn:
                if self._postgres:
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ddl_lock})
                metadata.create_all(conn)
                _add_new_columns(conn, metadata)
        except BaseException:
            self._engine.dispose()
            raise

    def close(self) -> None:
        """Release every pooled connection; the database cannot be used afterwards."""
        self._closed = True
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Connection]:
        if self._closed:
            raise StoreError(f"the {self._what} is closed")
        try:
            writer = self._writer if write else nullcontext()
            with self._serial, writer, self._engine.connect() as conn:
                conn.execution_options(**{WRITE_OPTION: write})
                with conn.begin():
                    yield conn
        except SQLAlchemyError as exc:
            # pool_pre_ping replaces a connection found dead at checkout; one that dies
            # mid-transaction (a server restart) is invalidated and fails this call only.
            lost = isinstance(exc, DBAPIError) and exc.connection_invalidated
            kind = Unavailable if lost or isinstance(exc, OperationalError) else StoreError
            raise kind(f"{self._what} error: {type(exc).__name__}: {exc}") from exc

    def _insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        return postgresql.insert(table) if self._postgres else sqlite.insert(table)


def _add_new_columns(conn: Connection, metadata: MetaData) -> None:
    """Add the nullable columns a newer version declares to a database an older one made
    (``create_all`` never alters an existing table); anything else needs a migration."""
    found = inspect(conn)
    for table in metadata.sorted_tables:
        have = {c["name"] for c in found.get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            if not column.nullable:
                raise StoreError(f"{table.name}.{column.name} is missing and cannot be added")
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}'))

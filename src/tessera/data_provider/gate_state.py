"""The data provider gate's durable state: revocations and burnt nonces in a database.

``SqlGateState(url)`` is the ``GateState`` a provider service runs on, so a
restart neither honours a revoked consent again nor accepts a captured
records request replayed within its window. ``url`` is a SQLAlchemy URL:
``sqlite:///FILE`` or ``postgresql+psycopg://...``; the engine (SQLite
pragmas, the psycopg driver) is the coordinator store's own
(``tessera.storage.engine``). Three tables, made when the state is first
opened (``create_all`` never alters them; only add tables or nullable
columns):

- ``gate_revocation``: ``receipt`` (a consent receipt's digest, the key),
  ``revoked_at`` (the earliest revocation's instant), ``expires_at`` (the
  receipt's expiry, after which the row is useless and pruned);
- ``gate_nonce``: ``(signer, nonce)`` (key fingerprint, request nonce; the
  key), ``expires_at`` (the last instant the request is fresh);
- ``gate_seat``: ``(job_digest, subject)`` (the key) -> ``node``: the one
  node a user had attested for a job (kept: a few bytes per consent).

Burning a nonce is one ``INSERT ... ON CONFLICT`` in one transaction: the
primary key decides, so of two concurrent requests with one nonce, in this
process or another, exactly one inserts the row; the other finds it (on
PostgreSQL it waits for the first to commit) and is refused as a replay. A
row whose window has passed is taken over by the same statement, so pruning
is only housekeeping: each write deletes expired rows, on PostgreSQL only
when no other transaction is pruning (``pg_try_advisory_xact_lock``), so
two pruners never wait on each other's rows. SQLite writes take the lock at
``BEGIN IMMEDIATE`` and this process's writers queue on a lock first; the
engine, the tables and the transactions are a ``tessera.storage.database.Database``,
as the coordinator's store is.

Every database error is raised as ``tessera.storage.StoreError``; the
caller refuses the request (fails closed).
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Connection,
    Delete,
    Double,
    Index,
    MetaData,
    String,
    Table,
    delete,
    select,
    text,
)

from tessera.storage.database import Database
from tessera.storage.errors import StoreError

__all__ = ["SqlGateState", "metadata", "nonce_table", "revocation_table", "seat_table"]

# Serialise create_all, and pruning, on PostgreSQL (arbitrary, fixed 63-bit keys).
_DDL_LOCK_KEY = 0x7E55E7A_6A7E0001
_PRUNE_LOCK_KEY = 0x7E55E7A_6A7E0002

metadata = MetaData()

revocation_table = Table(
    "gate_revocation",
    metadata,
    Column("receipt", String(64), primary_key=True),
    Column("revoked_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
    Index("gate_revocation_expires", "expires_at"),
)

nonce_table = Table(
    "gate_nonce",
    metadata,
    Column("signer", String(64), primary_key=True),
    Column("nonce", String(64), primary_key=True),
    Column("expires_at", Double, nullable=False),
    Index("gate_nonce_expires", "expires_at"),
)

seat_table = Table(
    "gate_seat",
    metadata,
    Column("job_digest", String(64), primary_key=True),
    Column("subject", String(512), primary_key=True),
    Column("node", String(64), nullable=False),
)


class SqlGateState(Database):
    """A ``tessera.consent.GateState`` in a SQLite file or a PostgreSQL database.

    Safe to share between threads, and between processes on one database.
    ``StoreError`` when the database cannot be opened or used.
    """

    def __init__(self, url: str) -> None:
        try:
            super().__init__(url, metadata, ddl_lock=_DDL_LOCK_KEY, what="gate's database")
        except ValueError as exc:  # not a database URL the gate can use
            raise StoreError(f"cannot open the gate's database: {exc}") from None

    # -- GateState ------------------------------------------------------------------

    def revoked_at(self, receipt: str) -> float | None:
        with self._transaction(write=False) as conn:
            value = conn.execute(
                select(revocation_table.c.revoked_at).where(revocation_table.c.receipt == receipt)
            ).scalar()
        return None if value is None else float(value)

    def revoke(self, receipt: str, at: float, *, expires: float, now: float) -> None:
        with self._transaction(write=True) as conn:
            self._prune(conn, delete(revocation_table).where(revocation_table.c.expires_at <= now))
            if expires <= now:
                return
            insert = self._insert(revocation_table).values(
                receipt=receipt, revoked_at=float(at), expires_at=float(expires)
            )
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[revocation_table.c.receipt],
                    set_={"revoked_at": insert.excluded.revoked_at},
                    where=revocation_table.c.revoked_at > insert.excluded.revoked_at,
                )
            )

    def nonce_used(self, signer: str, nonce: str, *, now: float) -> bool:
        with self._transaction(write=False) as conn:
            found = conn.execute(
                select(nonce_table.c.nonce).where(
                    nonce_table.c.signer == signer,
                    nonce_table.c.nonce == nonce,
                    nonce_table.c.expires_at >= now,
                )
            ).first()
        return found is not None

    def use_nonce(self, signer: str, nonce: str, *, expires: float, now: float) -> bool:
        with self._transaction(write=True) as conn:
            self._prune(conn, delete(nonce_table).where(nonce_table.c.expires_at < now))
            insert = self._insert(nonce_table).values(
                signer=signer, nonce=nonce, expires_at=float(expires)
            )
            # A kept row whose window has passed is taken over, as if pruned first.
            stmt = insert.on_conflict_do_update(
                index_elements=[nonce_table.c.signer, nonce_table.c.nonce],
                set_={"expires_at": insert.excluded.expires_at},
                where=nonce_table.c.expires_at < now,
            ).returning(nonce_table.c.nonce)
            return conn.execute(stmt).first() is not None

    def bind_node(self, job_digest: str, subject: str, node: str) -> bool:
        with self._transaction(write=True) as conn:
            # The primary key decides between concurrent binders; the loser reads the winner.
            conn.execute(
                self._insert(seat_table)
                .values(job_digest=job_digest, subject=subject, node=node)
                .on_conflict_do_nothing(
                    index_elements=[seat_table.c.job_digest, seat_table.c.subject]
                )
            )
            bound = conn.execute(
                select(seat_table.c.node).where(
                    seat_table.c.job_digest == job_digest, seat_table.c.subject == subject
                )
            ).scalar()
        return bool(bound == node)

    # -- transactions ---------------------------------------------------------------

    def _prune(self, conn: Connection, stmt: Delete) -> None:
        """Delete expired rows, unless (PostgreSQL) another transaction is at it."""
        if (
            self._postgres
            and not conn.execute(
                text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _PRUNE_LOCK_KEY}
            ).scalar()
        ):
            return
        conn.execute(stmt)

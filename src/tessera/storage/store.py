"""The coordinator's persistent store: every public call is one committed transaction.

Theory of operation. The coordinator must survive ``kill -9`` with nothing
lost, so nothing is buffered here: a method returns only after its
transaction committed, and ``commit_step`` writes one consumed event together
with everything that event caused (outgoing mail, closed rounds, artefacts,
the job row), so a restart replays the event log and finds the effects of
exactly the events it holds.

Threads: one Engine per Store, and each call checks its own connection out
of the pool for the length of one short transaction, so a Store can be shared
by any number of threads (and processes, on the same file or server). On a
SQLite file, this process's writers also queue on one lock, so they wait
their turn instead of polling SQLite's lock; readers never wait (WAL).

Mailbox order: readers page with ``messages_for(recipient, after=last_id)``,
so an id must never become visible after a larger one did. SQLite has one
writer at a time (``BEGIN IMMEDIATE``), which gives that for free; on
PostgreSQL every transaction that inserts mail first takes ``LOCK TABLE
mailbox IN EXCLUSIVE MODE`` (readers are not blocked), so ids are drawn in
commit order. That lock is always taken first in a transaction, so it cannot
deadlock against the row locks taken after it.

The store never interprets documents: JSON in, JSON out.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Connection, Row, exists, func, select, text

from tessera.jobs.records import RoundRecord
from tessera.storage import models as m
from tessera.storage.blobs import CHUNK as BLOB_CHUNK
from tessera.storage.blobs import BlobStore
from tessera.storage.database import Database
from tessera.storage.errors import Conflict, NotFound, OverQuota, Replayed, StoreError
from tessera.storage.records import (
    ConsentRecord,
    EventRecord,
    JobRecord,
    MailItem,
    NodeRecord,
)

#: Snapshots kept per job: the newest is enough; one more survives a torn write elsewhere.
SNAPSHOTS_KEPT = 2

# Serialises concurrent create_all on PostgreSQL (an arbitrary, fixed 63-bit key).
_DDL_LOCK_KEY = 0x7E55E7A_5C4E3A
#: Artefacts larger than this lie in files when the store has a blob folder.
INLINE_ARTEFACT_BYTES = 1 << 20


def _job_values(
    *,
    state: str | None = None,
    participants: list[str] | None = None,
    started_at: float | None = None,
    finished_at: float | None = None,
    final_weights: str | None = None,
    error: str | None = None,
    current_round: int | None = None,
    beacon: str | None = None,
    statistics: str | None = None,
) -> dict[str, Any]:
    """The columns an update sets; None means "leave as is". TypeError on unknown keys."""
    values = {
        "beacon": beacon,
        "statistics": statistics,
        "state": state,
        "participants": None if participants is None else list(participants),
        "started_at": started_at,
        "finished_at": finished_at,
        "final_weights": final_weights,
        "error": error,
        "current_round": current_round,
    }
    return {k: v for k, v in values.items() if v is not None}


class Store(Database):
    """Durable state of a coordinator, on SQLite (``sqlite:///file.db``) or PostgreSQL."""

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        blobs: BlobStore | None = None,
    ) -> None:
        """``blobs``: where large envelopes lie, each row naming its file, and, in its
        ``artefacts`` folder, large artefacts (None: none do)."""
        self._clock = clock
        self.blobs = blobs
        self._artefact_folder: BlobStore | None = None  # made on first use
        super().__init__(url, m.metadata, ddl_lock=_DDL_LOCK_KEY, what="store's database")

    # -- transactions -------------------------------------------------------

    def _write(self) -> AbstractContextManager[Connection]:
        return self._transaction(write=True)

    def _read(self) -> AbstractContextManager[Connection]:
        return self._transaction(write=False)

    def _lock_mailbox(self, conn: Connection) -> None:
        if self._postgres:
            conn.execute(text("LOCK TABLE mailbox IN EXCLUSIVE MODE"))

    @staticmethod
    def _require_job(conn: Connection, job_id: str) -> None:
        if not conn.execute(select(exists().where(m.job.c.job_id == job_id))).scalar():
            raise NotFound(f"no job {job_id!r}")

    # -- artefacts ------------------------------------------------------------

    def put_artefact(self, data: bytes, media_type: str) -> str:
        """Store ``data`` under its hex sha256 and return it; idempotent."""
        with self._write() as conn:
            return self._put_artefact(conn, data, media_type)

    def _put_artefact(self, conn: Connection, data: bytes, media_type: str) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if conn.execute(select(exists().where(m.artefact.c.sha256 == digest))).scalar():
            return digest
        in_file = self.blobs is not None and len(data) > INLINE_ARTEFACT_BYTES
        if in_file:
            self._write_blob(data, digest)
        row = {
            "sha256": digest,
            "media_type": media_type,
            "size": len(data),
            "data": b"" if in_file else bytes(data),
            "created_at": self._clock(),
            "blob": True if in_file else None,
        }
        conn.execute(self._insert(m.artefact).values(row).on_conflict_do_nothing())
        return digest

    def _write_blob(self, data: bytes, digest: str) -> None:
        """An artefact's bytes into its file, durable before the row that names it."""
        writer = self._artefact_blobs(digest).writer()
        try:
            view = memoryview(data)
            for start in range(0, len(view), BLOB_CHUNK):
                writer.write(view[start : start + BLOB_CHUNK])
            name, _ = writer.commit()
        except BaseException:
            writer.discard()
            raise
        if name != digest:  # pragma: no cover - the same bytes hash the same
            raise StoreError(f"artefact {digest} was written as {name}")

    def get_artefact(self, sha256: str) -> bytes:
        """The bytes stored under ``sha256``, re-hashed; StoreError if they changed."""
        row = self._artefact_row(sha256)
        if row.blob:
            return self._artefact_blobs(sha256).read(sha256)  # checked against its name
        return self._inline(row, sha256)

    def artefact_chunks(self, sha256: str) -> tuple[int, Iterator[bytes]]:
        """An artefact's size and its bytes a chunk at a time, for streaming it out: a
        large one from its file, never held whole. The bytes are checked by whoever
        reads them against the name they asked for (a file changed on disk is caught
        there, not here, since it is checked only once read)."""
        row = self._artefact_row(sha256)
        if row.blob:
            return int(row.size), self._artefact_blobs(sha256).chunks(sha256)
        return int(row.size), iter((self._inline(row, sha256),))

    def _artefact_row(self, sha256: str) -> Row[Any, Any, Any]:
        """The artefact's row (its bytes empty when they lie in a file); NotFound."""
        a = m.artefact.c
        with self._read() as conn:
            row = conn.execute(select(a.size, a.blob, a.data).where(a.sha256 == sha256)).first()
        if row is None:
            raise NotFound(f"no artefact {sha256}")
        return row

    @staticmethod
    def _inline(row: Row[Any, Any, Any], sha256: str) -> bytes:
        data = bytes(row.data)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise StoreError(f"artefact {sha256} is corrupted")
        return data

    def _artefact_blobs(self, sha256: str) -> BlobStore:
        """The ``artefacts`` folder of the blob folder."""
        if self.blobs is None:
            raise StoreError(f"artefact {sha256} lies in a file, and this store has no folder")
        if self._artefact_folder is None:
            self._artefact_folder = BlobStore(self.blobs.root / "artefacts")
        return self._artefact_folder

    def put_upload(
        self, data: bytes, media_type: str, owner: str, *, max_count: int, max_bytes: int
    ) -> str:
        """Store an artefact ``owner`` uploaded; OverQuota past their count or bytes.

        A repeat of one of the owner's own uploads is a no-op and costs nothing.
        """
        digest = hashlib.sha256(data).hexdigest()
        u = m.upload.c
        with self._write() as conn:
            mine = u.owner == owner
            if conn.execute(select(exists().where(mine & (u.sha256 == digest)))).scalar():
                return digest
            count, total = conn.execute(
                select(func.count(), func.coalesce(func.sum(u.size), 0)).where(mine)
            ).one()
            if count + 1 > max_count or total + len(data) > max_bytes:
                raise OverQuota(
                    f"upload quota: {count} artefacts of {total} bytes held, "
                    f"at most {max_count} and {max_bytes} bytes"
                )
            self._put_artefact(conn, data, media_type)
            row = {"owner": owner, "sha256": digest, "size": len(data), "created_at": self._clock()}
            conn.execute(self._insert(m.upload).values(row))
        return digest

    def uploaded_by(self, owner: str, sha256: str) -> bool:
        u = m.upload.c
        with self._read() as conn:
            return bool(
                conn.execute(
                    select(exists().where((u.owner == owner) & (u.sha256 == sha256)))
                ).scalar()
            )

    def link_artefacts(self, job_id: str, shas: Sequence[str]) -> None:
        """Record that these artefacts belong to ``job_id`` (its parties may read them)."""
        with self._write() as conn:
            self._link(conn, job_id, shas)

    def _link(self, conn: Connection, job_id: str, shas: Sequence[str]) -> None:
        for sha in shas:
            row = {"sha256": sha, "job_id": job_id}
            conn.execute(self._insert(m.job_artefact).values(row).on_conflict_do_nothing())

    def put_report(self, job_id: str, data: bytes, media_type: str) -> str:
        """Store a job's report as an artefact of the job (its parties may read it) and make
        it the job's latest (``JobRecord.report``); its sha256. NotFound for an unknown job."""
        with self._write() as conn:
            self._require_job(conn, job_id)
            digest = self._put_artefact(conn, data, media_type)
            self._link(conn, job_id, [digest])
            self._update_job(conn, job_id, {"report": digest})
        return digest

    def artefact_jobs(self, sha256: str) -> list[str]:
        """The jobs an artefact belongs to."""
        c = m.job_artefact.c
        with self._read() as conn:
            return list(conn.execute(select(c.job_id).where(c.sha256 == sha256)).scalars())

    def use_nonce(self, signer: str, nonce: str, *, expires: float, now: float) -> bool:
        """Burn a signed request's nonce until ``expires``; False if it is burnt already.

        Nonces whose time has left the accepted window are forgotten here.
        """
        n = m.request_nonce.c
        row = {"signer": signer, "nonce": nonce, "expires_at": expires}
        with self._write() as conn:
            conn.execute(m.request_nonce.delete().where(n.expires_at < now))
            stmt = self._insert(m.request_nonce).values(row).on_conflict_do_nothing()
            return conn.execute(stmt.returning(n.nonce)).first() is not None

    def artefact_media_type(self, sha256: str) -> str | None:
        """The media type an artefact was stored with (None: no such artefact)."""
        a = m.artefact.c
        with self._read() as conn:
            media = conn.execute(select(a.media_type).where(a.sha256 == sha256)).scalar()
        return None if media is None else str(media)

    def has_artefact(self, sha256: str) -> bool:
        with self._read() as conn:
            return bool(
                conn.execute(select(exists().where(m.artefact.c.sha256 == sha256))).scalar()
            )

    # -- nodes ----------------------------------------------------------------

    def register_node(
        self,
        node_id: str,
        public_keys: bytes,
        organisation: str | None,
        document: dict[str, Any],
    ) -> None:
        """Add a node; a repeat with the same keys is a no-op (the first document stays)."""
        row = {
            "node_id": node_id,
            "public_keys": bytes(public_keys),
            "organisation": organisation,
            "document": document,
            "registered_at": self._clock(),
        }
        with self._write() as conn:
            stmt = self._insert(m.node).values(row).on_conflict_do_nothing()
            if conn.execute(stmt.returning(m.node.c.node_id)).first() is not None:
                return
            keys = conn.execute(
                select(m.node.c.public_keys).where(m.node.c.node_id == node_id)
            ).scalar_one()
            if bytes(keys) != bytes(public_keys):
                raise Conflict(f"node {node_id!r} is registered with other keys")

    def get_node(self, node_id: str) -> NodeRecord:
        with self._read() as conn:
            row = conn.execute(select(m.node).where(m.node.c.node_id == node_id)).first()
        if row is None:
            raise NotFound(f"no node {node_id!r}")
        return _node(row)

    def list_nodes(self) -> list[NodeRecord]:
        """Every node, in node_id order."""
        with self._read() as conn:
            rows = conn.execute(select(m.node).order_by(m.node.c.node_id)).all()
        return [_node(r) for r in rows]

    # -- jobs -----------------------------------------------------------------

    def add_job(
        self, job_id: str, digest: str, document: dict[str, Any], min_consents: int
    ) -> None:
        """Add a job in state "waiting"; a repeat with the same digest is a no-op."""
        row = {
            "job_id": job_id,
            "digest": digest,
            "document": document,
            "min_consents": min_consents,
            "state": "waiting",
            "created_at": self._clock(),
        }
        with self._write() as conn:
            stmt = self._insert(m.job).values(row).on_conflict_do_nothing()
            if conn.execute(stmt.returning(m.job.c.job_id)).first() is not None:
                return
            stored = conn.execute(
                select(m.job.c.digest).where(m.job.c.job_id == job_id)
            ).scalar_one()
            if stored != digest:
                raise Conflict(f"job {job_id!r} exists with another digest")

    def get_job(self, job_id: str) -> JobRecord:
        with self._read() as conn:
            row = conn.execute(select(m.job).where(m.job.c.job_id == job_id)).first()
        if row is None:
            raise NotFound(f"no job {job_id!r}")
        return _job(row)

    def list_jobs(self) -> list[JobRecord]:
        """Every job, oldest first."""
        with self._read() as conn:
            rows = conn.execute(select(m.job).order_by(m.job.c.created_at, m.job.c.job_id)).all()
        return [_job(r) for r in rows]

    def update_job(
        self,
        job_id: str,
        *,
        state: str | None = None,
        participants: list[str] | None = None,
        started_at: float | None = None,
        finished_at: float | None = None,
        final_weights: str | None = None,
        error: str | None = None,
        current_round: int | None = None,
        beacon: str | None = None,
    ) -> None:
        """Set the given fields (None leaves a field unchanged); NotFound for an unknown job."""
        values = _job_values(
            state=state,
            participants=participants,
            started_at=started_at,
            finished_at=finished_at,
            final_weights=final_weights,
            error=error,
            current_round=current_round,
            beacon=beacon,
        )
        with self._write() as conn:
            self._update_job(conn, job_id, values)

    @staticmethod
    def _update_job(conn: Connection, job_id: str, values: dict[str, Any]) -> None:
        if not values:
            Store._require_job(conn, job_id)
            return
        stmt = m.job.update().where(m.job.c.job_id == job_id).values(values)
        if conn.execute(stmt.returning(m.job.c.job_id)).first() is None:
            raise NotFound(f"no job {job_id!r}")

    # -- consent receipts -----------------------------------------------------

    def add_consent(
        self,
        job_id: str,
        node_id: str,
        digest: str,
        *,
        document: dict[str, Any],
        expires_at: float,
        attestation: dict[str, Any] | None = None,
    ) -> None:
        """Record a consent receipt; a repeat of (job, node, digest) is a no-op."""
        row = {
            "job_id": job_id,
            "node_id": node_id,
            "digest": digest,
            "document": document,
            "expires_at": expires_at,
            "added_at": self._clock(),
            "attestation": attestation,
        }
        with self._write() as conn:
            self._require_job(conn, job_id)
            conn.execute(self._insert(m.consent).values(row).on_conflict_do_nothing())

    def revoke_consent(
        self, job_id: str, node_id: str, document: dict[str, Any], revoked_at: float
    ) -> bool:
        """Mark the node's unrevoked consents for the job revoked; NotFound if it has none.

        Consents already revoked keep their first revocation, so a repeat is a no-op:
        False then, True when this call revoked something.
        """
        c = m.consent.c
        mine = (c.job_id == job_id) & (c.node_id == node_id)
        with self._write() as conn:
            changed = conn.execute(
                m.consent.update()
                .where(mine & c.revoked_at.is_(None))
                .values(revoked_at=revoked_at, revocation=document)
            ).rowcount
            if not conn.execute(select(exists().where(mine))).scalar():
                raise NotFound(f"no consent from {node_id!r} for job {job_id!r}")
        return bool(changed)

    def add_reveal(self, job_id: str, node_id: str, document: dict[str, Any]) -> None:
        """Keep a participant's beacon reveal with its (unrevoked) consents; the first stays."""
        c = m.consent.c
        with self._write() as conn:
            conn.execute(
                m.consent.update()
                .where((c.job_id == job_id) & (c.node_id == node_id) & c.reveal.is_(None))
                .values(reveal=document)
            )

    def consents(self, job_id: str) -> list[ConsentRecord]:
        """Every receipt for the job, revoked ones included, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                select(m.consent).where(m.consent.c.job_id == job_id).order_by(m.consent.c.id)
            ).all()
        return [_consent(r) for r in rows]

    # -- mailbox --------------------------------------------------------------

    def post_message(
        self,
        *,
        job_id: str,
        recipient: str,
        sender: str,
        round: int,
        kind: int,
        nonce: bytes,
        data: bytes,
        quota: tuple[int, int] | None = None,
        blob: tuple[str, int] | None = None,
    ) -> int:
        """Queue an envelope and return its id; Replayed if (sender, nonce) is stored.

        ``quota``: at most (count, bytes) of the sender's mail in this job's
        round, this one included; OverQuota past either. ``blob``: the envelope
        lies in the blob folder, (name, size), and ``data`` is empty.
        """
        size = len(data) if blob is None else blob[1]
        with self._write() as conn:
            self._lock_mailbox(conn)
            if quota is not None:
                c = m.mailbox.c
                seen = (c.sender == sender) & (c.nonce == bytes(nonce))
                if conn.execute(select(exists().where(seen))).scalar():  # a retry is no new mail
                    raise Replayed(f"message from {sender!r} with this nonce is already stored")
                count, total = conn.execute(
                    select(func.count(), func.coalesce(func.sum(c.size), 0)).where(
                        (c.job_id == job_id) & (c.round == round) & (c.sender == sender)
                    )
                ).one()
                if count + 1 > quota[0] or total + size > quota[1]:
                    raise OverQuota(
                        f"{sender} sent {count} envelopes of {total} bytes in round {round}: "
                        f"at most {quota[0]} and {quota[1]} bytes"
                    )
            return self._post(
                conn,
                job_id=job_id,
                recipient=recipient,
                sender=sender,
                round=round,
                kind=kind,
                nonce=nonce,
                data=data,
                blob=blob,
            )

    def _post(
        self,
        conn: Connection,
        *,
        job_id: str,
        recipient: str,
        sender: str,
        round: int,
        kind: int,
        nonce: bytes,
        data: bytes,
        blob: tuple[str, int] | None = None,
    ) -> int:
        row = {
            "job_id": job_id,
            "recipient": recipient,
            "sender": sender,
            "round": round,
            "kind": kind,
            "nonce": bytes(nonce),
            "size": len(data) if blob is None else blob[1],
            "data": bytes(data),
            "posted_at": self._clock(),
            "blob": None if blob is None else blob[0],
        }
        stmt = self._insert(m.mailbox).values(row).on_conflict_do_nothing()
        mail_id = conn.execute(stmt.returning(m.mailbox.c.id)).scalar()
        if mail_id is None:
            raise Replayed(f"message from {sender!r} with this nonce is already stored")
        return int(mail_id)

    def messages_for(
        self,
        recipient: str,
        after: int,
        *,
        limit: int = 256,
        max_bytes: int = 64 << 20,
        load: bool = True,
    ) -> list[MailItem]:
        """Messages for ``recipient`` with id > ``after``, ascending.

        At most ``limit`` messages, and no more than ``max_bytes`` of data in
        total, except that the first pending message is always returned.
        Without ``load``, an envelope in a blob comes without its data (the
        caller streams the file).
        """
        if limit < 1 or max_bytes < 1:
            raise ValueError("limit and max_bytes must be positive")
        c = m.mailbox.c
        pending = (c.recipient == recipient) & (c.id > after)
        with self._read() as conn:
            sizes = conn.execute(
                select(c.id, c.size).where(pending).order_by(c.id).limit(limit)
            ).all()
            ids: list[int] = []
            total = 0
            for mail_id, size in sizes:
                total += size
                if ids and total > max_bytes:
                    break
                ids.append(mail_id)
            if not ids:
                return []
            rows = conn.execute(select(m.mailbox).where(c.id.in_(ids)).order_by(c.id)).all()
        return [self._mail(r, load=load) for r in rows]

    def last_message_id(self) -> int:
        """The largest message id, 0 when the mailbox is empty."""
        with self._read() as conn:
            return int(
                conn.execute(select(func.coalesce(func.max(m.mailbox.c.id), 0))).scalar_one()
            )

    def round_traffic(self, job_id: str, round: int) -> dict[int, tuple[int, int]]:
        """Envelopes of one job's round in the mailbox: ``{kind: (count, total data bytes)}``."""
        c = m.mailbox.c
        stmt = (
            select(c.kind, func.count(), func.coalesce(func.sum(c.size), 0))
            .where((c.job_id == job_id) & (c.round == round))
            .group_by(c.kind)
        )
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        return {int(kind): (int(count), int(total)) for kind, count, total in rows}

    def get_message(self, mail_id: int) -> MailItem:
        with self._read() as conn:
            row = conn.execute(select(m.mailbox).where(m.mailbox.c.id == mail_id)).first()
        if row is None:
            raise NotFound(f"no message {mail_id}")
        return self._mail(row, load=True)

    def _mail(self, r: Row[Any], *, load: bool) -> MailItem:
        data = bytes(r.data)
        if r.blob is not None and load:
            if self.blobs is None:
                raise StoreError(f"message {r.id} lies in a blob, and this store has no folder")
            data = self.blobs.read(r.blob)
        return MailItem(
            id=r.id,
            job_id=r.job_id,
            recipient=r.recipient,
            sender=r.sender,
            round=r.round,
            kind=r.kind,
            data=data,
            blob=r.blob,
            size=int(r.size),
        )

    # -- event log and rounds -------------------------------------------------

    def commit_step(
        self,
        event: EventRecord,
        *,
        outgoing: Sequence[Mapping[str, Any]] = (),
        rounds: Sequence[RoundRecord] = (),
        artefacts: Sequence[tuple[bytes, str]] = (),
        job_update: Mapping[str, Any] | None = None,
        snapshot: bytes | None = None,
        forget_mail_before: int | None = None,
    ) -> list[int]:
        """Write one consumed event and all it caused, atomically; return the new mail ids.

        ``snapshot``: the machine's state once this event is consumed; a restart
        then replays only the events after it (the latest ``SNAPSHOTS_KEPT`` stay).
        ``artefacts`` are linked to the event's job. ``forget_mail_before``: the
        job's mail of rounds before it is deleted (retention, see ``coordinator.driver``).

        Conflict if ``(job_id, seq)`` is logged already, NotFound for an unknown
        job or a round whose weights artefact is neither stored nor in
        ``artefacts``, Replayed for an outgoing nonce already used (a bug), and
        TypeError for an unknown ``job_update`` key. On any error nothing is written.
        """
        values = _job_values(**(job_update or {}))
        doomed: list[str] = []  # the blob files of the mail forgotten, once committed
        with self._write() as conn:
            if outgoing or forget_mail_before is not None:
                self._lock_mailbox(conn)
            self._require_job(conn, event.job_id)
            row = {
                "job_id": event.job_id,
                "seq": event.seq,
                "kind": event.kind,
                "now": event.now,
                "mail_id": event.mail_id,
                "timer": event.timer,
                "node": event.node,
                "payload": event.payload,
            }
            stmt = self._insert(m.event).values(row).on_conflict_do_nothing()
            if conn.execute(stmt.returning(m.event.c.seq)).first() is None:
                raise Conflict(f"event {event.seq} of job {event.job_id!r} is already logged")
            for data, media_type in artefacts:
                sha = self._put_artefact(conn, data, media_type)
                self._link(conn, event.job_id, [sha])
            if forget_mail_before is not None:
                c = m.mailbox.c
                old = (c.job_id == event.job_id) & (c.round < forget_mail_before)
                doomed = list(
                    conn.execute(select(c.blob).where(old & c.blob.is_not(None))).scalars()
                )
                conn.execute(m.mailbox.delete().where(old))
            for record in rounds:
                self._put_round(conn, event.job_id, record)
            if values:
                self._update_job(conn, event.job_id, values)
            if snapshot is not None:
                self._put_snapshot(conn, event.job_id, event.seq, snapshot)
            posted = [self._post(conn, **message) for message in outgoing]
        if doomed and self.blobs is not None:
            self.blobs.remove(doomed)
        return posted

    def _put_snapshot(self, conn: Connection, job_id: str, seq: int, data: bytes) -> None:
        row = {"job_id": job_id, "seq": seq, "data": data, "created_at": self._clock()}
        conn.execute(self._insert(m.snapshot).values(row))
        kept = (
            select(m.snapshot.c.seq)
            .where(m.snapshot.c.job_id == job_id)
            .order_by(m.snapshot.c.seq.desc())
            .limit(SNAPSHOTS_KEPT)
        )
        conn.execute(
            m.snapshot.delete().where(
                m.snapshot.c.job_id == job_id, m.snapshot.c.seq.not_in(kept.scalar_subquery())
            )
        )

    def latest_snapshot(self, job_id: str) -> tuple[int, bytes] | None:
        """``(seq, data)`` of the job's newest snapshot, or None."""
        with self._read() as conn:
            row = conn.execute(
                select(m.snapshot.c.seq, m.snapshot.c.data)
                .where(m.snapshot.c.job_id == job_id)
                .order_by(m.snapshot.c.seq.desc())
                .limit(1)
            ).first()
        return None if row is None else (int(row.seq), bytes(row.data))

    def _put_round(self, conn: Connection, job_id: str, record: RoundRecord) -> None:
        if record.weights is None:
            raise ValueError(f"round {record.round}: a stored round names its weights artefact")
        if not conn.execute(select(exists().where(m.artefact.c.sha256 == record.weights))).scalar():
            raise NotFound(f"round {record.round}: no weights artefact {record.weights}")
        self._require_job(conn, job_id)
        row = {
            "job_id": job_id,
            "round": record.round,
            "closed_at": record.closed_at,
            "record": record.to_json(),
            "weights": record.weights,
        }
        stmt = self._insert(m.round_).values(row)
        replace = {k: v for k, v in row.items() if k not in ("job_id", "round")}
        conn.execute(stmt.on_conflict_do_update(index_elements=["job_id", "round"], set_=replace))

    def events(self, job_id: str, *, after: int = -1) -> list[EventRecord]:
        """The job's event log after ``seq`` ``after`` (default: all), ascending seq."""
        with self._read() as conn:
            rows = conn.execute(
                select(m.event)
                .where(m.event.c.job_id == job_id, m.event.c.seq > after)
                .order_by(m.event.c.seq)
            ).all()
        return [
            EventRecord(
                job_id=r.job_id,
                seq=r.seq,
                kind=r.kind,
                now=r.now,
                mail_id=r.mail_id,
                timer=r.timer,
                node=r.node,
                payload=r.payload,
            )
            for r in rows
        ]

    def rounds(self, job_id: str) -> list[RoundRecord]:
        """The job's closed rounds, ascending round (rows of older versions load too)."""
        with self._read() as conn:
            rows = conn.execute(
                select(m.round_).where(m.round_.c.job_id == job_id).order_by(m.round_.c.round)
            ).all()
        return [_round(r) for r in rows]


def _round(r: Row[Any]) -> RoundRecord:
    # The columns win over the JSON: older versions kept round and closed_at
    # in both, and the weights only in their column.
    try:
        return RoundRecord.from_json(
            {**r.record, "round": r.round, "closed_at": r.closed_at, "weights": r.weights}
        )
    except (ValueError, TypeError) as e:  # TypeError: a JSON column that is not an object
        raise StoreError(f"round {r.round} of job {r.job_id!r} is corrupted: {e}") from e


def _node(r: Row[Any]) -> NodeRecord:
    return NodeRecord(
        node_id=r.node_id,
        public_keys=bytes(r.public_keys),
        organisation=r.organisation,
        document=r.document,
        registered_at=r.registered_at,
    )


def _job(r: Row[Any]) -> JobRecord:
    return JobRecord(
        job_id=r.job_id,
        digest=r.digest,
        document=r.document,
        min_consents=r.min_consents,
        state=r.state,
        participants=r.participants,
        created_at=r.created_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
        final_weights=r.final_weights,
        error=r.error,
        current_round=r.current_round,
        beacon=r.beacon,
        statistics=r.statistics,
        report=r.report,
    )


def _consent(r: Row[Any]) -> ConsentRecord:
    return ConsentRecord(
        job_id=r.job_id,
        node_id=r.node_id,
        digest=r.digest,
        document=r.document,
        expires_at=r.expires_at,
        revoked_at=r.revoked_at,
        revocation=r.revocation,
        added_at=r.added_at,
        attestation=r.attestation,
        reveal=r.reveal,
    )

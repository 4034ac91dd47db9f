"""The coordinator's tables, in SQLAlchemy Core, portable to SQLite and PostgreSQL.

Why each shape:

- ``artefact`` is content-addressed: the key is the sha256 of ``data``, so a
  put is idempotent and a read can prove the bytes were not altered.
- ``mailbox.id`` orders delivery. It is an ``INTEGER PRIMARY KEY
  AUTOINCREMENT`` on SQLite (never reused) and a sequence on PostgreSQL; the
  store serialises inserts so ids also grow in commit order (see ``store``).
  ``(sender, nonce)`` is unique, which is the replay check.
- ``event`` is the coordinator's input log, keyed ``(job_id, seq)``; ``round``
  is keyed ``(job_id, round)`` and points at its weights artefact.
- ``upload`` says who uploaded an artefact (their keys' fingerprint), for
  per-party quotas; ``job_artefact`` which jobs an artefact belongs to, so
  only a job's parties may read it.
- ``request_nonce`` holds the nonces of signed requests until their time
  leaves the accepted window: a replay within it is refused, restart or not.
- Documents are JSON; times are double-precision unix seconds.

Only add nullable columns or new tables here: ``create_all`` makes new
tables, and ``Database`` adds a new nullable column to a table an older
version made; a changed column needs a migration.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# A 64-bit id on PostgreSQL; on SQLite only a column declared INTEGER is a rowid alias.
_BigId = BigInteger().with_variant(Integer(), "sqlite")
# Nullable JSON columns hold SQL NULL for None, not the JSON literal null.
_NullableJSON = JSON(none_as_null=True)

artefact = Table(
    "artefact",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("media_type", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),  # empty when ``blob`` is set
    Column("created_at", Double, nullable=False),
    # A large artefact (a model's weights) lies in the artefact blob folder, named by
    # its SHA-256, and is streamed out from there.
    Column("blob", Boolean, nullable=True),
)

node = Table(
    "node",
    metadata,
    Column("node_id", Text, primary_key=True),
    Column("public_keys", LargeBinary, nullable=False),
    Column("organisation", Text, nullable=True),
    Column("document", JSON, nullable=False),
    Column("registered_at", Double, nullable=False),
)

job = Table(
    "job",
    metadata,
    Column("job_id", Text, primary_key=True),
    Column("digest", Text, nullable=False),
    Column("document", JSON, nullable=False),
    Column("min_consents", Integer, nullable=False),
    Column("state", Text, nullable=False, default="waiting"),
    Column("participants", _NullableJSON, nullable=True),
    Column("created_at", Double, nullable=False),
    Column("started_at", Double, nullable=True),
    Column("finished_at", Double, nullable=True),
    Column("final_weights", String(64), nullable=True),
    Column("error", Text, nullable=True),
    Column("current_round", Integer, nullable=True),
    # A secure job's tree beacon (hex), fixed once every participant revealed its secret.
    Column("beacon", String(64), nullable=True),
    # The artefact holding its statistics round's total (a job with one), once decoded.
    Column("statistics", String(64), nullable=True),
    # The artefact holding the job's latest report (report.html), as its AI provider uploaded it.
    Column("report", String(64), nullable=True),
)

consent = Table(
    "consent",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("job_id", Text, ForeignKey("job.job_id"), nullable=False),
    Column("node_id", Text, nullable=False),
    Column("digest", Text, nullable=False),
    Column("document", JSON, nullable=False),
    Column("expires_at", Double, nullable=False),
    Column("revoked_at", Double, nullable=True),
    Column("revocation", _NullableJSON, nullable=True),
    Column("added_at", Double, nullable=False),
    # The data provider's attestation that the node stands for one consenting user.
    Column("attestation", _NullableJSON, nullable=True),
    # The participant's signed reveal of the beacon secret its attestation commits to.
    Column("reveal", _NullableJSON, nullable=True),
    UniqueConstraint("job_id", "node_id", "digest", name="uq_consent_digest"),
    sqlite_autoincrement=True,
)

mailbox = Table(
    "mailbox",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("job_id", Text, nullable=False),
    Column("recipient", Text, nullable=False),
    Column("sender", Text, nullable=False),
    Column("round", Integer, nullable=False),
    Column("kind", Integer, nullable=False),
    Column("nonce", LargeBinary, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),  # empty when ``blob`` names a file
    Column("posted_at", Double, nullable=False),
    # A large envelope lies in the coordinator's blob folder (storage.blobs), by SHA-256.
    Column("blob", Text, nullable=True),
    UniqueConstraint("sender", "nonce", name="uq_mailbox_sender_nonce"),
    Index("ix_mailbox_recipient_id", "recipient", "id"),
    # A round's traffic is summed when it closes (Store.round_traffic): no table scan.
    Index("ix_mailbox_job_round", "job_id", "round"),
    sqlite_autoincrement=True,
)

event = Table(
    "event",
    metadata,
    Column("job_id", Text, ForeignKey("job.job_id"), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", Text, nullable=False),
    Column("now", Double, nullable=False),
    Column("mail_id", BigInteger, nullable=True),
    Column("timer", Text, nullable=True),
    Column("node", Text, nullable=True),
    # A verdict's JSON ("rate": the AI provider's excluded and weights), replayed as is.
    Column("payload", _NullableJSON, nullable=True),
)

# A coordinator machine's state after one logged event (a round's close), so a
# restart replays only the events after it. The latest few are kept per job.
snapshot = Table(
    "snapshot",
    metadata,
    Column("job_id", Text, ForeignKey("job.job_id"), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", Double, nullable=False),
)

round_ = Table(
    "round",
    metadata,
    Column("job_id", Text, ForeignKey("job.job_id"), primary_key=True),
    Column("round", Integer, primary_key=True, autoincrement=False),
    Column("closed_at", Double, nullable=False),
    Column("record", JSON, nullable=False),
    Column("weights", String(64), ForeignKey("artefact.sha256"), nullable=False),
)

upload = Table(
    "upload",
    metadata,
    Column("owner", String(64), primary_key=True),
    Column("sha256", String(64), ForeignKey("artefact.sha256"), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("created_at", Double, nullable=False),
)

job_artefact = Table(
    "job_artefact",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("job_id", Text, ForeignKey("job.job_id"), primary_key=True),
)

request_nonce = Table(
    "request_nonce",
    metadata,
    Column("signer", String(64), primary_key=True),
    Column("nonce", String(64), primary_key=True),
    Column("expires_at", Double, nullable=False),
    Index("ix_request_nonce_expires", "expires_at"),
)

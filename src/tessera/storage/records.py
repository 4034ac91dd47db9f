"""The frozen records the store hands out: plain data, no database types.

Callers get copies; changing a returned ``document`` dict never reaches the
database. Times are float unix seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class NodeRecord:
    node_id: str
    public_keys: bytes
    organisation: str | None
    document: dict[str, Any]
    registered_at: float


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    digest: str
    document: dict[str, Any]
    min_consents: int
    state: str
    participants: list[str] | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    final_weights: str | None
    error: str | None
    current_round: int | None
    beacon: str | None = None
    statistics: str | None = None  # sha256 of the statistics round's total, if any
    report: str | None = None  # sha256 of the job's latest report.html, if one was uploaded


@dataclass(frozen=True)
class ConsentRecord:
    job_id: str
    node_id: str
    digest: str
    document: dict[str, Any]
    expires_at: float
    revoked_at: float | None
    revocation: dict[str, Any] | None
    added_at: float
    attestation: dict[str, Any] | None = None
    reveal: dict[str, Any] | None = None


@dataclass(frozen=True)
class MailItem:
    id: int
    job_id: str
    recipient: str
    sender: str
    round: int
    kind: int
    data: bytes  # empty for a blob not loaded (``Store.messages_for(load=False)``)
    blob: str | None = None  # the file a large envelope lies in (``storage.blobs``)
    size: int = field(default=0, compare=False)  # the envelope's: len(data), or the blob's


@dataclass(frozen=True)
class EventRecord:
    """One input the coordinator consumed; replaying them in ``seq`` order rebuilds it."""

    job_id: str
    seq: int
    kind: str
    now: float
    mail_id: int | None = None
    timer: str | None = None
    node: str | None = None
    payload: dict[str, Any] | None = None  # "rate": the AI provider's verdicts

"""Who may call what on the coordinator: the table in ``docs/architecture.md``, enforced.

A caller proves who it is with a signed request (``runtime.transport.auth``):
a registered node by its node id, an AI provider by its public keys. Its
rights follow from the job it asks about: the job document's signer is the
job's AI provider (everything about its job), a node that consented to a
job or takes part in it sees what its role needs and no more. Anything else
is refused with a reason (401: unsigned, 403: signed by the wrong party) and
logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from enum import Enum
from typing import Any

from tessera.coordinator.service import CoordinatorService, Refused
from tessera.crypto.documents import SignedDocument
from tessera.errors import RemoteProtocolError
from tessera.jobs.groupsums import GROUP_SUMS_MEDIA_TYPE
from tessera.runtime.transport.auth import MAX_SKEW, Caller, verify_request
from tessera.storage import JobRecord

log = logging.getLogger("tessera.coordinator.access")

#: What a node that consented to (or takes part in) a job may see of its status.
NODE_STATUS = (
    "job_id",
    "digest",
    "state",
    "current_round",
    "final_weights",
    "error",
    "statistics",  # the statistics round's total, which every node fits its encoding from
)


class Role(Enum):
    AI_PROVIDER = "ai_provider"
    PARTICIPANT = "participant"  # fixed at the start, or consented while waiting


def authenticate(
    service: CoordinatorService,
    headers: Mapping[str, str],
    *,
    method: str,
    path: str,
    body: bytes,
) -> Caller:
    """The caller the request proves, its nonce burnt; Refused(401) saying why not."""

    def fresh(caller: Caller) -> bool:
        return service.store.use_nonce(
            caller.fingerprint, caller.nonce, expires=caller.at + MAX_SKEW, now=service.clock()
        )

    try:
        return verify_request(
            headers,
            method=method,
            path=path,
            body=body,
            keys_of=service.public_keys,
            fresh=fresh,
            now=service.clock(),
        )
    except RemoteProtocolError as exc:
        log.info("401 for %s %s: %s", method, path, exc)
        raise Refused(401, str(exc)) from None


def refuse(caller: Caller, status: int, reason: str) -> Refused:
    log.info("%d for %s: %s", status, caller.node or caller.keys.short_fingerprint, reason)
    return Refused(status, reason)


def ai_provider_of(job: JobRecord) -> str:
    """The fingerprint of the keys that signed the job document."""
    return SignedDocument.from_json(job.document).signer.fingerprint


def role(service: CoordinatorService, caller: Caller, job: JobRecord) -> Role | None:
    if caller.node is None:
        return Role.AI_PROVIDER if caller.fingerprint == ai_provider_of(job) else None
    if job.participants is not None:
        return Role.PARTICIPANT if caller.node in job.participants else None
    consented = {c.node_id for c in service.store.consents(job.job_id)}
    return Role.PARTICIPANT if caller.node in consented else None


def job_for(service: CoordinatorService, caller: Caller, job_id: str, *allowed: Role) -> Role:
    """The caller's role in ``job_id``, if one of ``allowed``; else 403 (or 404)."""
    found = role(service, caller, service.job(job_id))
    if found is None or found not in allowed:
        who = " or ".join(r.value.replace("_", " ") for r in allowed)
        raise refuse(caller, 403, f"only the job's {who} may ask this of job {job_id!r}")
    return found


def status(service: CoordinatorService, caller: Caller, job_id: str) -> dict[str, Any]:
    """Full status for the job's AI provider; state and round only for a node of the job."""
    found = job_for(service, caller, job_id, Role.AI_PROVIDER, Role.PARTICIPANT)
    full = service.status(job_id)
    if found is Role.AI_PROVIDER:
        return full
    return {key: full[key] for key in NODE_STATUS}


def jobs(service: CoordinatorService, caller: Caller) -> list[dict[str, Any]]:
    """The jobs the caller has a role in (a node also sees the jobs waiting for consent)."""
    out = []
    for job in service.store.list_jobs():
        offered = caller.node is not None and job.state == "waiting"
        if offered or role(service, caller, job) is not None:
            out.append({"job_id": job.job_id, "state": job.state, "digest": job.digest})
    return out


def artefact(service: CoordinatorService, caller: Caller, sha256: str) -> None:
    """Pass if the caller uploaded the artefact or has a role in a job it belongs to;
    a round's group sums (``jobs.groupsums``) only to the job's AI provider.

    Else 404, whether it exists or not: the answer is no oracle of others' artefacts.
    """
    if caller.node is None and service.store.uploaded_by(caller.fingerprint, sha256):
        return
    private = service.store.artefact_media_type(sha256) == GROUP_SUMS_MEDIA_TYPE
    for job_id in service.store.artefact_jobs(sha256):
        found = role(service, caller, service.job(job_id))
        if found is Role.AI_PROVIDER or (found is not None and not private):
            return
    raise refuse(caller, 404, f"no artefact {sha256} among your uploads and jobs")


def node_itself(caller: Caller, node_id: str) -> None:
    if caller.node != node_id:
        raise refuse(caller, 403, f"only node {node_id!r} may read its registration")

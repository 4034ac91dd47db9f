"""The coordinator's HTTP API (FastAPI): a thin shell over ``CoordinatorService``.

JSON for documents and status, raw bytes for envelopes and artefacts,
msgpack for mailbox batches. Every refusal is a 4xx with ``{"detail": ...}``
saying why; the OpenAPI description is served at ``/openapi.json`` and
declares the two signed-request schemes (``NodeSignature``,
``KeySignature``; see ``runtime.transport.auth``). Nodes pull their mail by
long polling (``wait`` seconds), as nodes behind NAT must.

Who may call what (``coordinator.access`` enforces it; docs/architecture.md):

================================  =================================================
public                            health, coordinator keys, a job's document (what a
                                  user reads before consenting), node registration
                                  (self-signed), consents, revocations and beacon
                                  reveals (signed by the user's node), job
                                  submission (signed by its AI
                                  provider), envelopes (signed by a participant)
AI provider (KeySignature)        upload initial weights (hash-checked, per-key
                                  quota), its jobs' full status, their artefacts
                                  (a round's group sums: to it alone), its jobs'
                                  contribution verdicts
node (NodeSignature)              its mailbox, its own registration; for a job it
                                  consented to or takes part in: state and round,
                                  participants (once started), artefacts
AI provider or participant        the job's signed audit log
either                            the list of jobs it has a role in (nodes also see
                                  the jobs waiting for consent); a one-time login link
                                  for the pages (``coordinator.pages``)
the job's AI provider             upload the job's report.html (served on the pages,
                                  sandboxed, to it and the job's participants)
================================  =================================================
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import msgpack
from fastapi import Depends, FastAPI, Query, Request, Response, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy.exc import OperationalError

from tessera.coordinator import access, pages
from tessera.coordinator.intake import MailIntake
from tessera.coordinator.service import CoordinatorService, Refused
from tessera.coordinator.sessions import Party, Sessions, SessionsFull
from tessera.protocol.limits import COORDINATOR_BODY, MAIL_BODY
from tessera.runtime.transport.auth import KEYS_HEADER, NODE_HEADER, Caller
from tessera.runtime.transport.serve import BodyLimit
from tessera.storage import MailItem, NotFound
from tessera.storage.errors import StoreError, Unavailable

log = logging.getLogger("tessera.coordinator.app")

MAX_BODY = COORDINATOR_BODY  # see protocol.limits
MAIL_PATH = "/v1/mail"
MAX_WAIT = 30.0
#: Long polls held at once. Past it a poll is answered 503 with Retry-After at once, so a
#: crowd of nodes is pushed back instead of exhausting file descriptors and memory
#: (each held poll costs a socket and about 80 KiB: benchmarks/coordinator_load.py).
MAX_POLLS = 4096
POLL_RETRY_AFTER = 5  # seconds a refused poller waits before asking again
# A held poll reads the store again after this long even unwoken: a safety net only (every
# path that stores mail wakes its recipient), so rare: at 5 s, 1,000 held polls cost the
# store 200 reads a second (benchmarks/coordinator_load.py).
POLL_RECHECK_S = 15.0
DISK_FULL_RETRY_AFTER = 30  # seconds a sender waits when the coordinator's disk is full
# Seconds a sender waits when the database is away: a PostgreSQL restart takes a few.
UNAVAILABLE_RETRY_AFTER = 5
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_BINARY = {
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
}
_WHY = {
    400: "Malformed input: a body that does not parse, a bad envelope or document",
    401: "Not signed, or the signature, time or nonce does not hold (a replay)",
    403: "Signed by a party that may not ask this, or a consent that does not allow it",
    404: "No such job or node, or no such artefact among the caller's",
    409: "Conflicts with what the coordinator holds: taken, replayed, not started",
    413: "The request body is larger than the coordinator takes",
    503: "Too many long polls held, or the coordinator's database is unavailable (restarting): "
    "nothing was stored; retry after the Retry-After header's seconds",
    507: "The coordinator's disk is full: nothing was stored; retry after Retry-After",
    422: "The request does not fit its schema, or a signed document its rules",
    429: "Over a quota: the sender's envelopes this round, or login links pending",
}


class Refusal(BaseModel):
    """Why a request was refused (a list of field errors for a schema mismatch)."""

    detail: str | list[dict[str, Any]]


def _refusals(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The 4xx answers a route gives, for the OpenAPI description."""
    return {code: {"model": Refusal, "description": _WHY[code]} for code in codes}


_DOCUMENT_POST = _refusals(400, 403, 404, 413, 422)
_SIGNED = (
    "Headers x-tessera-time, x-tessera-nonce (32 hex digits, fresh) and x-tessera-signature: "
    "Ed25519 over method, path and query, SHA-256 of the body, signer, time and nonce "
    "(tessera.runtime.transport.auth)."
)
_NODE_SCHEME = APIKeyHeader(
    name=NODE_HEADER,
    scheme_name="NodeSignature",
    description="A registered node's id; the request is signed by its keys. " + _SIGNED,
    auto_error=False,
)
_KEY_SCHEME = APIKeyHeader(
    name=KEYS_HEADER,
    scheme_name="KeySignature",
    description="The signer's base64 public keys (an AI provider's). " + _SIGNED,
    auto_error=False,
)


class Document(BaseModel):
    """A signed JSON document: kind, body, signer (base64 keys), signature (base64)."""

    model_config = ConfigDict(extra="forbid")
    kind: str
    body: dict[str, Any]
    signer: str
    signature: str


class Registration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    document: Document


class JobSubmission(BaseModel):
    model_config = ConfigDict(extra="forbid")
    document: Document


class ConsentSubmission(BaseModel):
    """A user's consent receipt and their data provider's attestation of their node."""

    model_config = ConfigDict(extra="forbid")
    receipt: Document
    attestation: Document


class RevealSubmission(BaseModel):
    """A participant's signed reveal of the beacon secret its attestation commits to."""

    model_config = ConfigDict(extra="forbid")
    reveal: Document


#: The most nodes one verdict names (excluded and weighed, each), and a reason's length.
MAX_VERDICTS = 10_000
MAX_REASON = 200
_Reason = Annotated[str, StringConstraints(min_length=1, max_length=MAX_REASON)]
_Factor = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]
_NodeName = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class Verdicts(BaseModel):
    """The job's contribution policy's verdicts after the AI provider valued ``round``'s
    group sums: who is left out (node -> why), how much the rest weigh (node -> factor
    in (0, 1]); both from the next round opened."""

    model_config = ConfigDict(extra="forbid")
    round: Annotated[int, Field(ge=0, le=2**31 - 1)]
    excluded: Annotated[dict[_NodeName, _Reason], Field(max_length=MAX_VERDICTS)] = {}
    weights: Annotated[dict[_NodeName, _Factor], Field(max_length=MAX_VERDICTS)] = {}


class SessionLink(BaseModel):
    """A one-time login link to the pages (a path on this coordinator) and its expiry."""

    link: str
    expires_at: float


class RevocationSubmission(BaseModel):
    model_config = ConfigDict(extra="forbid")
    revocation: Document
    receipt: Document


async def _caller(request: Request) -> Caller:
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    body = await request.body()
    return await run_in_threadpool(
        access.authenticate,
        request.app.state.service,
        request.headers,
        method=request.method,
        path=path,
        body=body,
    )


async def _signed(
    request: Request,
    _node: Annotated[str | None, Security(_NODE_SCHEME)],
    _keys: Annotated[str | None, Security(_KEY_SCHEME)],
) -> Caller:
    """A node or a key holder (an AI provider)."""
    return await _caller(request)


async def _by_node(
    request: Request, _node: Annotated[str | None, Security(_NODE_SCHEME)]
) -> Caller:
    caller = await _caller(request)
    if caller.node is None:
        raise access.refuse(caller, 403, "only a registered node may ask this")
    return caller


async def _by_keys(request: Request, _keys: Annotated[str | None, Security(_KEY_SCHEME)]) -> Caller:
    caller = await _caller(request)
    if caller.node is not None:
        raise access.refuse(caller, 403, "only an AI provider (KeySignature) may ask this")
    return caller


Signed = Annotated[Caller, Depends(_signed)]
ByNode = Annotated[Caller, Depends(_by_node)]
ByKeys = Annotated[Caller, Depends(_by_keys)]


def create_coordinator_app(  # noqa: PLR0915 - one short handler per route
    service: CoordinatorService,
    *,
    max_body: int = MAX_BODY,
    mail_body: int = MAIL_BODY,
    max_polls: int = MAX_POLLS,
) -> Any:
    """The ASGI app (FastAPI wrapped in a request-size limit: ``mail_body`` for the mailbox,
    whose envelopes stream, ``max_body`` for every other route); at most ``max_polls``
    long polls held at once."""
    polls = _PollCount(max_polls)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.signal.bind(asyncio.get_running_loop())
        await run_in_threadpool(service.resume)
        yield
        await run_in_threadpool(service.close)

    app = FastAPI(
        title="Tessera coordinator",
        version="1",
        description="Jobs, nodes, consent receipts and a store-and-forward mailbox of sealed "
        "envelopes. The coordinator relays what it cannot read.",
        lifespan=lifespan,
    )

    app.state.service = service  # for the signed-request dependencies below

    @app.exception_handler(Refused)
    async def refused(_: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"detail": exc.reason}, status_code=exc.status)

    # A full disk (the mail folder's files, or the database's) fails the request before
    # anything commits: say so, as 507 with Retry-After, and the senders try again. So
    # does a database that is away (a PostgreSQL restart): 503, not a 500 and a traceback.
    @app.exception_handler(StoreError)
    @app.exception_handler(OSError)
    @app.exception_handler(OperationalError)
    async def storage_error(request: Request, exc: Exception) -> JSONResponse:
        where = f"{request.method} {request.url.path}"
        if _is_disk_full(exc):
            log.error("disk full: %s stored nothing: %s", where, exc)
            detail = "the coordinator's disk is full: nothing of this request was stored"
            headers = {"Retry-After": str(DISK_FULL_RETRY_AFTER)}
            return JSONResponse({"detail": detail + "; retry later"}, 507, headers=headers)
        if isinstance(exc, Unavailable | OperationalError):
            log.warning("database unavailable: %s refused: %s", where, exc.__cause__ or exc)
            detail = "the coordinator's database is unavailable: nothing was stored; retry later"
            headers = {"Retry-After": str(UNAVAILABLE_RETRY_AFTER)}
            return JSONResponse({"detail": detail}, 503, headers=headers)
        raise exc

    @app.get("/v1/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/coordinator")
    def coordinator() -> dict[str, str]:
        """The coordinator's public keys: nodes check its signatures with them."""
        keys = service.keys.public
        return {
            "public_keys": base64.b64encode(keys.to_bytes()).decode(),
            "fingerprint": keys.fingerprint,
        }

    @app.post("/v1/nodes", status_code=201, responses=_refusals(400, 403, 409, 413, 422))
    def register(body: Registration) -> dict[str, Any]:
        """Register a node's public keys (self-signed registration document)."""
        return service.register(body.document.model_dump())

    @app.get("/v1/nodes/{node_id}", responses=_refusals(401, 403, 404))
    def node(node_id: str, caller: ByNode) -> dict[str, Any]:
        """A node's own registration, to itself."""
        access.node_itself(caller, node_id)
        try:
            record = service.store.get_node(node_id)
        except NotFound:
            raise Refused(404, f"unknown node {node_id!r}") from None
        return {
            "node_id": record.node_id,
            "organisation": record.organisation,
            "registration": record.document,
        }

    @app.put(
        "/v1/artefacts/{sha256}",
        status_code=201,
        openapi_extra={"requestBody": _BINARY},
        responses=_refusals(400, 401, 403, 413),
    )
    async def put_artefact(sha256: str, request: Request, caller: ByKeys) -> dict[str, str]:
        """Store an AI provider's initial weights: hashing to ``sha256``, under its quota."""
        if not _SHA256.match(sha256):
            raise Refused(400, "artefacts are named by a lowercase hex SHA-256")
        data = await request.body()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise Refused(400, "the body does not hash to the artefact's name")
        media = request.headers.get("content-type", "application/octet-stream")[:100]
        await run_in_threadpool(service.upload, caller.fingerprint, data, media)
        return {"sha256": sha256}

    @app.get(
        "/v1/artefacts/{sha256}",
        response_class=Response,
        responses={
            200: {"description": "The artefact's bytes", **_BINARY},
            **_refusals(400, 401, 403, 404),
        },
    )
    def get_artefact(sha256: str, caller: Signed) -> Response:
        """An artefact of a job the caller has a role in (or one it uploaded)."""
        if not _SHA256.match(sha256):
            raise Refused(400, "artefacts are named by a lowercase hex SHA-256")
        access.artefact(service, caller, sha256)
        try:
            size, chunks = service.store.artefact_chunks(sha256)
        except NotFound:
            raise Refused(404, f"no artefact {sha256}") from None
        # Streamed with the server's flow control: N nodes fetching a large model hold
        # a chunk each here, not N copies in the sockets' buffers.
        return StreamingResponse(
            chunks,
            media_type="application/octet-stream",
            headers={"content-length": str(size)},
        )

    @app.post("/v1/jobs", status_code=201, responses=_refusals(400, 403, 409, 413, 422))
    def submit(body: JobSubmission) -> dict[str, Any]:
        """Submit a job signed by its AI provider (the initial weights uploaded first)."""
        return service.submit(body.document.model_dump())

    @app.get("/v1/jobs", responses=_refusals(401, 403))
    def jobs(caller: Signed) -> list[dict[str, Any]]:
        """Id, state and digest of the jobs the caller has a role in (nodes: and offers)."""
        return access.jobs(service, caller)

    @app.get("/v1/jobs/{job_id}", responses=_refusals(401, 403, 404))
    def status(job_id: str, caller: Signed) -> dict[str, Any]:
        """All of it to the job's AI provider; state and round to its nodes."""
        return access.status(service, caller, job_id)

    @app.get("/v1/jobs/{job_id}/document", responses=_refusals(404))
    def document(job_id: str) -> dict[str, Any]:
        """Public: the signed offer a user reads before consenting."""
        return service.job(job_id).document

    @app.get("/v1/jobs/{job_id}/participants", responses=_refusals(401, 403, 404, 409))
    def participants(job_id: str, caller: ByNode) -> dict[str, Any]:
        """Who takes part (fixed at the start), to a node that takes part."""
        access.job_for(service, caller, job_id, access.Role.PARTICIPANT)
        return service.participants(job_id)

    @app.get(
        "/v1/jobs/{job_id}/audit",
        response_class=Response,
        responses={
            200: {
                "description": "The job's signed audit log so far, one record a line",
                "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            },
            **_refusals(401, 403, 404),
        },
    )
    def audit_log(job_id: str, caller: Signed) -> Response:
        """The job's audit log (``tessera audit verify``), to its AI provider and nodes."""
        access.job_for(service, caller, job_id, access.Role.AI_PROVIDER, access.Role.PARTICIPANT)
        return Response(service.audit_log(job_id), media_type="application/x-ndjson")

    @app.post("/v1/jobs/{job_id}/consents", status_code=201, responses=_DOCUMENT_POST)
    def consent(job_id: str, body: ConsentSubmission) -> dict[str, Any]:
        return service.consent(job_id, body.receipt.model_dump(), body.attestation.model_dump())

    @app.post("/v1/jobs/{job_id}/reveals", responses=_refusals(400, 403, 404, 409, 413, 422))
    def reveal(job_id: str, body: RevealSubmission) -> dict[str, Any]:
        """A participant's beacon secret; the last one fixes the trees' beacon and starts."""
        return service.reveal(job_id, body.reveal.model_dump())

    @app.post("/v1/jobs/{job_id}/revocations", responses=_DOCUMENT_POST)
    def revoke(job_id: str, body: RevocationSubmission) -> dict[str, Any]:
        """Revoke a consent: the user's node is not asked to train from the next round on."""
        return service.revoke(job_id, body.revocation.model_dump(), body.receipt.model_dump())

    @app.post("/v1/jobs/{job_id}/verdicts", responses=_refusals(400, 401, 403, 404, 409, 413, 422))
    def verdicts(job_id: str, body: Verdicts, caller: ByKeys) -> dict[str, Any]:
        """The job's AI provider's verdicts on its contributors (``[contributions]``): the
        excluded are left out, the rest weighed, from the next round opened."""
        access.job_for(service, caller, job_id, access.Role.AI_PROVIDER)
        return service.rate(job_id, body.round, body.excluded, body.weights)

    sessions = Sessions(service.clock)  # in memory: see coordinator.sessions

    @app.post("/v1/sessions", status_code=201, responses=_refusals(401, 429))
    def session(caller: Signed) -> SessionLink:
        """A one-time login link (5 minutes) to the pages, for the signing party."""
        try:
            token, expires = sessions.link(Party.of(caller))
        except SessionsFull as exc:
            raise Refused(429, str(exc)) from None
        return SessionLink(link=pages.session_link(token), expires_at=expires)

    @app.put(
        "/v1/jobs/{job_id}/report",
        status_code=201,
        openapi_extra={"requestBody": {"content": {"text/html": {"schema": {"type": "string"}}}}},
        responses=_refusals(400, 401, 403, 404, 413),
    )
    async def put_report(job_id: str, request: Request, caller: ByKeys) -> dict[str, str]:
        """The job's report.html, from its AI provider (at most 20 MB): its pages show it."""
        await run_in_threadpool(access.job_for, service, caller, job_id, access.Role.AI_PROVIDER)
        data = await request.body()
        pages.check_report(job_id, data, request.headers.get("content-type", ""))
        sha = await run_in_threadpool(
            service.store.put_report, job_id, data, pages.REPORT_MEDIA_TYPE
        )
        return {"sha256": sha}

    app.include_router(pages.router(service, sessions))

    @app.post(
        "/v1/mail",
        status_code=202,
        openapi_extra={"requestBody": _BINARY},
        responses=_refusals(400, 403, 404, 409, 413, 429),
    )
    async def post_mail(request: Request) -> dict[str, int]:
        """Store a participant's signed envelope for its recipient (checked, never opened).

        Only a kind the job's nodes send, no larger than the job's model makes
        it, of the job's current round, within the sender's quota for the round.
        The body streams: a large envelope goes to a file as it arrives, and one
        whose header already breaks a bound is refused before any is kept.
        """
        intake = MailIntake(service)
        try:
            async for chunk in request.stream():
                if intake.head is None:  # its checks read the store: off the event loop
                    await run_in_threadpool(intake.feed, chunk)
                else:
                    intake.feed(chunk)
        except BaseException:
            intake.discard()  # the sender went away mid-body
            raise
        mail_id = await run_in_threadpool(intake.finish)
        return {"id": mail_id}

    @app.get(
        "/v1/mail",
        response_class=Response,
        responses={
            200: {
                "description": "A msgpack list of [id, envelope bytes] pairs",
                "content": {"application/msgpack": {"schema": {"type": "string"}}},
            },
            **_refusals(401, 403, 422, 503),
        },
    )
    async def pull_mail(
        caller: ByNode,
        after: int = Query(0, ge=0, le=2**62),
        wait: float = Query(0.0, ge=0.0, le=MAX_WAIT),
    ) -> Response:
        """A node's envelopes with id > ``after`` (msgpack list of [id, bytes]), long-polled."""
        node = str(caller.node)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        held = False
        try:
            while True:
                event = service.signal.event_for(node)  # before reading: no mail slips between
                items = await run_in_threadpool(service.mail_for, node, after)
                remaining = deadline - loop.time()
                if items or remaining <= 0 or service.signal.closing:
                    break
                if not held:  # counted only once it waits: mail at hand is always served
                    if not polls.take():
                        return polls.refusal()
                    held = True
                await service.signal.wait(event, min(remaining, POLL_RECHECK_S))
        finally:
            if held:
                polls.release()
        return StreamingResponse(_mail_batch(service, items), media_type="application/msgpack")

    return BodyLimit(app, max_body, routes={MAIL_PATH: mail_body})


def _is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` or what caused it is a full disk: ENOSPC or EDQUOT from a file,
    SQLite's "database or disk is full", PostgreSQL's disk_full (SQLSTATE 53100)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(exc, OperationalError) and (
            "disk is full" in str(exc.orig) or getattr(exc.orig, "sqlstate", None) == "53100"
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class _PollCount:
    """Long polls held now, against their limit (the event loop's thread only: no lock)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0

    def take(self) -> bool:
        if self.held >= self.limit:
            return False
        self.held += 1
        return True

    def release(self) -> None:
        self.held -= 1

    def refusal(self) -> JSONResponse:
        log.warning("refused a long poll: %d held, the limit", self.held)
        detail = f"the coordinator holds {self.held} long polls, its limit: retry later"
        headers = {"Retry-After": str(POLL_RETRY_AFTER)}
        return JSONResponse({"detail": detail}, status_code=503, headers=headers)


def _mail_batch(service: CoordinatorService, items: list[MailItem]) -> Iterator[bytes]:
    """A msgpack list of [id, envelope] pairs, written out piece by piece: an envelope in
    a blob streams from its file, never held whole."""
    packer = msgpack.Packer(use_bin_type=True)
    yield packer.pack_array_header(len(items))
    for item in items:
        size = item.size if item.blob is not None else len(item.data)
        yield packer.pack_array_header(2) + packer.pack(item.id) + _bin_header(size)
        if item.blob is None:
            yield item.data
        else:
            assert service.store.blobs is not None  # the store named a blob
            yield from service.store.blobs.chunks(item.blob)


def _bin_header(size: int) -> bytes:
    """A msgpack bin header for ``size`` bytes (msgpack's Packer writes none alone)."""
    if size < 1 << 8:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 1 << 16:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")

"""The coordinator's HTTP API (FastAPI): a thin shell over ``CoordinatorService``.

JSON for documents and status, raw bytes for envelopes and artefacts,
msgpack for mailbox batches. Every refusal is a 4xx with ``{"detail": ...}``
saying why; the OpenAPI description is served at ``/openapi.json``.
Nodes pull their mail by long polling (``wait`` seconds), as nodes behind
NAT must.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgpack
from fastapi import FastAPI, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from tessera.coordinator.service import CoordinatorService, Refused
from tessera.protocol.limits import COORDINATOR_BODY
from tessera.runtime.transport.auth import verify_request
from tessera.runtime.transport.serve import BodyLimit
from tessera.storage import NotFound

MAX_BODY = COORDINATOR_BODY  # see protocol.limits
MAX_WAIT = 30.0
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_BINARY = {
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
}
_WHY = {
    400: "Malformed input: a body that does not parse, a bad envelope or document",
    401: "The mailbox pull is not signed by the node (or its time is off)",
    403: "A signature that does not hold, or a consent that does not allow it",
    404: "No such job, node or artefact",
    409: "Conflicts with what the coordinator holds: taken, replayed, not started",
    413: "The request body is larger than the coordinator takes",
    422: "The request does not fit its schema, or a signed document its rules",
}


class Refusal(BaseModel):
    """Why a request was refused (a list of field errors for a schema mismatch)."""

    detail: str | list[dict[str, Any]]


def _refusals(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The 4xx answers a route gives, for the OpenAPI description."""
    return {code: {"model": Refusal, "description": _WHY[code]} for code in codes}


_DOCUMENT_POST = _refusals(400, 403, 404, 413, 422)


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


class RevocationSubmission(BaseModel):
    model_config = ConfigDict(extra="forbid")
    revocation: Document
    receipt: Document


def create_coordinator_app(  # noqa: PLR0915 - one short handler per route
    service: CoordinatorService, *, max_body: int = MAX_BODY
) -> Any:
    """The ASGI app (FastAPI wrapped in a request-size limit)."""

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

    @app.exception_handler(Refused)
    async def refused(_: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"detail": exc.reason}, status_code=exc.status)

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

    @app.get("/v1/nodes/{node_id}", responses=_refusals(404))
    def node(node_id: str) -> dict[str, Any]:
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
        responses=_refusals(400, 413),
    )
    async def put_artefact(sha256: str, request: Request) -> dict[str, str]:
        """Store a content-addressed artefact; the body must hash to ``sha256``."""
        if not _SHA256.match(sha256):
            raise Refused(400, "artefacts are named by a lowercase hex SHA-256")
        data = await request.body()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise Refused(400, "the body does not hash to the artefact's name")
        media = request.headers.get("content-type", "application/octet-stream")[:100]
        await run_in_threadpool(service.store.put_artefact, data, media)
        return {"sha256": sha256}

    @app.get(
        "/v1/artefacts/{sha256}",
        response_class=Response,
        responses={200: {"description": "The artefact's bytes", **_BINARY}, **_refusals(400, 404)},
    )
    def get_artefact(sha256: str) -> Response:
        if not _SHA256.match(sha256):
            raise Refused(400, "artefacts are named by a lowercase hex SHA-256")
        try:
            data = service.store.get_artefact(sha256)
        except NotFound:
            raise Refused(404, f"no artefact {sha256}") from None
        return Response(data, media_type="application/octet-stream")

    @app.post("/v1/jobs", status_code=201, responses=_refusals(400, 403, 409, 413, 422))
    def submit(body: JobSubmission) -> dict[str, Any]:
        """Submit a job signed by its AI provider (the initial weights uploaded first)."""
        return service.submit(body.document.model_dump())

    @app.get("/v1/jobs")
    def jobs() -> list[dict[str, Any]]:
        return [
            {"job_id": j.job_id, "state": j.state, "digest": j.digest}
            for j in service.store.list_jobs()
        ]

    @app.get("/v1/jobs/{job_id}", responses=_refusals(404))
    def status(job_id: str) -> dict[str, Any]:
        return service.status(job_id)

    @app.get("/v1/jobs/{job_id}/document", responses=_refusals(404))
    def document(job_id: str) -> dict[str, Any]:
        return service.job(job_id).document

    @app.get("/v1/jobs/{job_id}/participants", responses=_refusals(404, 409))
    def participants(job_id: str) -> dict[str, Any]:
        """Who takes part (fixed at the start): registrations and consent receipts."""
        return service.participants(job_id)

    @app.post("/v1/jobs/{job_id}/consents", status_code=201, responses=_DOCUMENT_POST)
    def consent(job_id: str, body: ConsentSubmission) -> dict[str, Any]:
        return service.consent(job_id, body.receipt.model_dump(), body.attestation.model_dump())

    @app.post("/v1/jobs/{job_id}/revocations", responses=_DOCUMENT_POST)
    def revoke(job_id: str, body: RevocationSubmission) -> dict[str, Any]:
        """Revoke a consent: the user's node is not asked to train from the next round on."""
        return service.revoke(job_id, body.revocation.model_dump(), body.receipt.model_dump())

    @app.post(
        "/v1/mail",
        status_code=202,
        openapi_extra={"requestBody": _BINARY},
        responses=_refusals(400, 403, 404, 409, 413),
    )
    async def post_mail(request: Request) -> dict[str, int]:
        """Store a signed envelope for its recipient (checked, never opened)."""
        data = await request.body()
        mail_id = await run_in_threadpool(service.post_mail, data)
        return {"id": mail_id}

    @app.get(
        "/v1/mail",
        response_class=Response,
        responses={
            200: {
                "description": "A msgpack list of [id, envelope bytes] pairs",
                "content": {"application/msgpack": {"schema": {"type": "string"}}},
            },
            **_refusals(401, 422),
        },
    )
    async def pull_mail(
        request: Request,
        after: int = Query(0, ge=0, le=2**62),
        wait: float = Query(0.0, ge=0.0, le=MAX_WAIT),
    ) -> Response:
        """A node's envelopes with id > ``after`` (msgpack list of [id, bytes]), long-polled."""
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            node = verify_request(
                request.headers,
                method="GET",
                path=path,
                keys_of=service.public_keys(request.headers.get("x-tessera-node", "")),
                now=service.clock(),
            )
        except Exception as exc:  # RemoteProtocolError: bad or missing signature
            raise Refused(401, str(exc)) from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            event = service.signal.event_for(node)  # before reading: no mail slips between
            items = await run_in_threadpool(service.mail_for, node, after)
            remaining = deadline - loop.time()
            if items or remaining <= 0:
                break
            await service.signal.wait(event, min(remaining, 5.0))
        body = msgpack.packb([[item.id, item.data] for item in items], use_bin_type=True)
        return Response(body, media_type="application/msgpack")

    return BodyLimit(app, max_body)

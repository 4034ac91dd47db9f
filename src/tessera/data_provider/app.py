"""The data provider's HTTP service: a catalogue, aggregate statistics, consented records.

A thin shell: every decision about releasing records is made by
``tessera.consent.RecordsGate`` (pure, tested without HTTP), every record
comes from a ``tessera.data.connectors.Backend``. This module maps their
answers onto HTTP:

- ``GET /v1/provider``: the provider's public keys. Its fingerprint names it:
  in job documents (``data.provider``), as the audience of every request a
  node makes, and as the signer of attestations.
- ``GET /v1/catalogue``: what the provider offers (no records).
- ``GET /v1/datasets/{name}/preprocessing``: a ``Preprocessor`` fitted on the
  whole dataset, as JSON: means, stds, category and label sets only, what an
  AI provider needs to declare a job's feature encoding without seeing data.
- ``POST /v1/revocations``: a user withdraws a consent; refused from then on.
- ``POST /v1/records``: one user's records for one job, to that user's node.
- ``POST /v1/attestations``: the provider's signed word that a node stands
  for one enrolled, consenting user in a job (one node per user per job).

Every refusal is a 4xx with ``{"detail": "<reason>"}``: 400 malformed,
403 consent or signature problems, 404 unknown dataset or user, 409 a
replayed request, 413 a body over ``max_body``, 422 a body of the wrong
shape. A refusal changes nothing. Who a user is comes from ``subjects``
(the user's id here -> fingerprint of the node key they linked to their
account); without an entry nobody gets that user's records.

The revocations received and the nonces of released requests live in the
gate's ``GateState``: a service passes a durable one
(``tessera.data_provider.gate_state.SqlGateState``; ``tessera provider --db``), so a
restart neither honours a revoked consent again nor serves a replayed
request. Without one they are kept in memory only (tests, library use).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tessera.consent import ConsentError, Enrolment, GateState, RecordsGate, ReplayedRequest
from tessera.crypto.documents import SignedDocument
from tessera.crypto.keys import NodeKeys
from tessera.data.connectors import Backend, DatasetConfig
from tessera.data.prepare import Preprocessor
from tessera.errors import ConfigError, DataError, RemoteProtocolError
from tessera.ids import Task
from tessera.protocol.limits import PROVIDER_BODY
from tessera.runtime.transport.serve import BodyLimit

__all__ = ["MAX_BODY", "ProviderConfig", "create_provider_app", "load_provider_config"]

MAX_BODY = PROVIDER_BODY  # see protocol.limits
_log = logging.getLogger("tessera.provider")

Name = Annotated[str, Field(min_length=1, max_length=256)]
# Ed25519 signatures and PublicKeys are both 64 bytes: 88 base64 characters.
Base64Of64 = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]{86}==$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Document(_Model):
    """A signed JSON document: kind, body, signer (base64 keys), signature (base64)."""

    kind: Annotated[str, Field(min_length=1, max_length=64)]
    body: dict[str, Any]
    signer: Base64Of64
    signature: Base64Of64


class RecordsBody(_Model):
    """A node's request for its user's records, with the job, the consent and its signature."""

    dataset: Name
    fields: Annotated[list[Name], Field(min_length=1, max_length=1024)]
    job: Document
    consent: Document
    request: Document


class AttestationBody(_Model):
    """A node's signed attestation request, with the job document and its consent receipt."""

    job: Document
    consent: Document
    request: Document


class ProviderKeys(_Model):
    """The provider's public keys (base64) and their fingerprint."""

    public_keys: str
    fingerprint: str


class RevocationBody(_Model):
    """A signed revocation and the consent receipt it withdraws."""

    revocation: Document
    receipt: Document


class FieldInfo(_Model):
    name: str
    type: str


class DatasetInfo(_Model):
    name: str
    description: str
    fields: list[FieldInfo]
    records: int
    users: int
    user_field: str


class Catalogue(_Model):
    datasets: list[DatasetInfo]
    coordinator: str | None
    provider: str  # the fingerprint of this provider's keys: what a job names


class Records(_Model):
    fields: list[str]
    rows: list[list[Any]]


class Revoked(_Model):
    receipt: str
    revoked: bool


class Refusal(_Model):
    """Why a request was refused, in one sentence."""

    detail: str


def _refusals(*codes: int) -> dict[int | str, dict[str, Any]]:
    meaning = {
        400: "malformed request, or one the dataset cannot answer",
        403: "consent or signature problem",
        404: "unknown dataset or user",
        409: "replayed request",
        413: "request body too large",
        422: "request of the wrong shape",
    }
    return {code: {"model": Refusal, "description": meaning[code]} for code in codes}


class _AsciiJSON(JSONResponse):
    """JSON that any client decodes: ASCII only, so even odd text from a request echoes safely."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False).encode()


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class PreprocessingQuery(_Model):
    """Which encoding to fit; ``features`` and ``categorical`` are comma-separated."""

    target: Name
    task: Task
    features: Annotated[str, Field(max_length=65536)] = ""  # empty: every column but the target
    categorical: Annotated[str, Field(max_length=65536)] = ""
    standardize: bool = True


class _Provider:
    """What the routes do, without HTTP: each method answers or raises ``_Refused``."""

    def __init__(
        self,
        backends: Sequence[Backend],
        subjects: Enrolment,
        now: Callable[[], float],
        keys: NodeKeys,
        state: GateState | None = None,
    ) -> None:
        self.datasets: dict[str, Backend] = {}
        for backend in backends:
            if backend.name in self.datasets:
                raise ValueError(f"two datasets are named {backend.name!r}")
            self.datasets[backend.name] = backend
        self.catalogue = [backend.describe() for backend in self.datasets.values()]
        self.fields = {d["name"]: {f["name"] for f in d["fields"]} for d in self.catalogue}
        self.keys = keys
        self.gate = RecordsGate(subjects, identity=keys, state=state)
        self.now = now

    def dataset(self, name: str) -> Backend:
        backend = self.datasets.get(name)
        if backend is None:
            raise _Refused(404, f"unknown dataset {name!r}; offered: {', '.join(self.datasets)}")
        return backend

    def preprocessing(self, name: str, query: PreprocessingQuery) -> dict[str, Any]:
        table = self.dataset(name).table()
        try:
            return Preprocessor.fit(
                table,
                target=query.target,
                features=_names(query.features),
                categorical=_names(query.categorical),
                task=query.task,
                standardize=query.standardize,
            ).to_json()
        except DataError as exc:
            raise _Refused(400, str(exc)) from None

    def revoke(self, body: RevocationBody) -> Revoked:
        revocation = _document(body.revocation, "revocation")
        receipt = _document(body.receipt, "receipt")
        try:
            digest = self.gate.revoke(revocation, receipt, now=self.now())
        except ConsentError as exc:
            raise _Refused(403, exc.reason) from None
        _log.info("consent %s... revoked", digest[:16])
        return Revoked(receipt=digest, revoked=True)

    def attest(self, body: AttestationBody) -> dict[str, Any]:
        job = _document(body.job, "job")
        consent = _document(body.consent, "consent")
        request = _document(body.request, "request")
        try:
            attestation = self.gate.attest(
                job=job, consent=consent, request=request, now=self.now()
            )
        except ReplayedRequest as exc:
            raise _Refused(409, exc.reason) from None
        except ConsentError as exc:
            raise _Refused(403, exc.reason) from None
        except RemoteProtocolError as exc:
            raise _Refused(400, str(exc)) from None
        _log.info(
            "attested node %s for job %s", attestation.body["node"], attestation.body["job_id"]
        )
        return attestation.to_json()

    def records(self, body: RecordsBody) -> Records:
        backend = self.dataset(body.dataset)
        unknown = [f for f in body.fields if f not in self.fields[body.dataset]]
        if unknown:
            raise _Refused(400, f"dataset {body.dataset!r} has no field(s) {unknown}")
        job = _document(body.job, "job")
        consent = _document(body.consent, "consent")
        request = _document(body.request, "request")
        at = self.now()
        try:
            release = self.gate.authorize(
                dataset=body.dataset,
                fields=body.fields,
                job=job,
                consent=consent,
                request=request,
                now=at,
            )
            try:
                frame = backend.records(release.request.user, body.fields)
            except DataError as exc:
                raise _Refused(404, str(exc)) from None
            self.gate.commit(release, now=at)
        except ReplayedRequest as exc:
            raise _Refused(409, exc.reason) from None
        except ConsentError as exc:
            raise _Refused(403, exc.reason) from None
        except RemoteProtocolError as exc:
            raise _Refused(400, str(exc)) from None
        _log.info(
            "released %d record(s) of %r to %s for job %s",
            len(frame),
            body.dataset,
            request.signer.short_fingerprint,
            release.request.job_id,
        )
        return Records(fields=list(body.fields), rows=_json_rows(frame))


def create_provider_app(
    backends: Sequence[Backend],
    *,
    keys: NodeKeys,
    subjects: Enrolment | None = None,
    coordinator_url: str | None = None,
    now: Callable[[], float] = time.time,
    max_body: int = MAX_BODY,
    state: GateState | None = None,
) -> FastAPI:
    """The provider's app; ``subjects`` maps a user's id here to their node key's fingerprint.

    ``keys`` are the provider's own: jobs and nodes name it by their fingerprint.

    ``subjects`` may be a live mapping (enrolments added later count at once).
    ``now`` is the clock for consent expiry and request freshness. ``state``
    keeps revocations and used nonces (the caller opens and closes it); None:
    in memory, forgotten when the process ends, so a service must pass a
    durable one (``tessera.data_provider.gate_state.SqlGateState``).
    """
    provider = _Provider(backends, {} if subjects is None else subjects, now, keys, state)
    if not subjects:
        _log.warning("no user has enrolled a node key: no records will be released")
    app = FastAPI(
        title="Tessera data provider",
        version="1",
        description="A catalogue of datasets, aggregate statistics, and each user's records "
        "released only to that user's node, for a job the user consented to.",
        default_response_class=_AsciiJSON,
    )
    app.add_middleware(BodyLimit, max_bytes=max_body)
    _answer_refusals(app)

    @app.get("/v1/provider")
    def identity() -> ProviderKeys:
        """This provider's public keys: jobs name it, and nodes pin it, by their fingerprint."""
        public = provider.keys.public
        return ProviderKeys(
            public_keys=base64.b64encode(public.to_bytes()).decode(),
            fingerprint=public.fingerprint,
        )

    @app.get("/v1/catalogue")
    def catalogue() -> Catalogue:
        """Every dataset offered: fields, record and user counts; never a record."""
        return Catalogue.model_validate(
            {
                "datasets": provider.catalogue,
                "coordinator": coordinator_url,
                "provider": provider.keys.public.fingerprint,
            }
        )

    @app.get("/v1/datasets/{name}/preprocessing", responses=_refusals(400, 404, 422))
    def preprocessing(name: str, query: Annotated[PreprocessingQuery, Query()]) -> dict[str, Any]:
        """The dataset's feature encoding (``Preprocessor.to_json``): aggregates only."""
        return provider.preprocessing(name, query)

    @app.post("/v1/revocations", responses=_refusals(400, 403, 413, 422))
    def revoke(body: RevocationBody) -> Revoked:
        """Withdraw a consent: its records are refused from now on."""
        return provider.revoke(body)

    @app.post("/v1/attestations", responses=_refusals(400, 403, 409, 413, 422))
    def attest(body: AttestationBody) -> dict[str, Any]:
        """Vouch that the requesting node stands for one enrolled user who consented to the job."""
        return provider.attest(body)

    @app.post("/v1/records", responses=_refusals(400, 403, 404, 409, 413, 422))
    def records(body: RecordsBody) -> Records:
        """One user's records, released to their node for a job they consented to."""
        return provider.records(body)

    return app


def _answer_refusals(app: FastAPI) -> None:
    """Every refusal as ``{"detail": "<reason>"}``: 400 for bad JSON, 422 for a wrong shape."""

    @app.exception_handler(_Refused)
    async def refused(request: Request, exc: _Refused) -> JSONResponse:
        _log.info("%d for %s %s: %s", exc.status, request.method, request.url.path, exc.detail)
        return _AsciiJSON({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            reason = next(str(e.get("ctx", {}).get("error", "")) for e in errors)
            return await refused(request, _Refused(400, f"malformed JSON body: {reason}"))
        parts = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in errors[:5]
        ]
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        return await refused(request, _Refused(422, "invalid request: " + "; ".join(parts) + more))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _AsciiJSON({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


class ProviderConfig(_Model):
    """The provider's config file: its datasets, and which node key each user linked.

    ``subjects`` maps a user's id here (a value of a dataset's user field) to
    the fingerprint of the node keys they linked to their account.
    """

    datasets: Annotated[list[DatasetConfig], Field(min_length=1)]
    subjects: dict[str, Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = {}


def load_provider_config(path: str | Path) -> tuple[list[Backend], dict[str, str]]:
    """Read a provider config (``.toml``, else JSON) and load its datasets.

    A malformed file raises ``ConfigError`` naming the field; a dataset that
    cannot be read raises ``DataError``. Relative paths are read from the
    file's folder.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(file), f"cannot read the provider config ({exc.strerror})") from None
    try:
        raw = tomllib.loads(text) if file.suffix == ".toml" else json.loads(text)
    except ValueError as exc:  # TOMLDecodeError and JSONDecodeError both are
        raise ConfigError(str(file), f"not valid {file.suffix[1:] or 'JSON'}: {exc}") from None
    try:
        config = ProviderConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "config"
        message = first["msg"].removeprefix("Value error, ")
        more = err.error_count() - 1
        raise ConfigError(field, message + (f" (and {more} more)" if more else "")) from None
    backends: list[Backend] = [d.build(file.parent) for d in config.datasets]
    return backends, dict(config.subjects)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _document(doc: Document, what: str) -> SignedDocument:
    try:
        return SignedDocument.from_json(doc.model_dump())
    except (RemoteProtocolError, ValueError, TypeError) as exc:
        # ValueError: a body JSON cannot hold (NaN, a lone surrogate); TypeError: odd types.
        raise _Refused(400, f"{what} document is malformed: {exc}") from None


def _json_rows(frame: pd.DataFrame) -> list[list[Any]]:
    """Rows of plain JSON values; missing and non-finite numbers become null."""
    columns = [_json_column(frame[name]) for name in frame.columns]
    if not columns:
        return [[] for _ in range(len(frame))]
    return [list(row) for row in zip(*columns, strict=True)]


def _json_column(column: pd.Series) -> list[Any]:
    if pd.api.types.is_datetime64_any_dtype(column):
        return [None if pd.isna(v) else v.isoformat() for v in column]
    return [_json_cell(v) for v in column.tolist()]


def _json_cell(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value)

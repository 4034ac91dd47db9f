"""The data provider's HTTP service: a catalogue, aggregate statistics, consented records.

A thin shell: every decision about releasing records is made by
``tessera.consent.RecordsGate`` (pure, tested without HTTP), every record
comes from a ``tessera.data.connectors.Backend``. This module maps their
answers onto HTTP:

- ``GET /v1/provider``: the provider's public keys. Its fingerprint names it:
  in job documents (``data.provider``), as the audience of every request a
  node makes, and as the signer of attestations.
- ``GET /v1/catalogue``: what the provider offers (no records, no server paths):
  each field's type, the values of a field of few values that ``min_count``
  records hold (an encoding's categories and classes start from them), and
  ``identifies`` on the user field and ``identifiers`` (never a job's feature).
- ``GET /v1/datasets/{name}/preprocessing``: a ``Preprocessor`` fitted on the
  whole dataset, as JSON: means, stds, category and label sets only, what an
  AI provider needs to declare a job's feature encoding without seeing data;
  with the job's derived columns, missing-value policy and declared
  categories (``derive``, ``missing`` and ``categories``, JSON in the query),
  so imputation values and the statistics a derived column uses come from
  here too, and nodes apply the same.
  Only to a request signed by an AI provider's keys (``runtime.transport.auth``,
  the nonce burnt in the gate's state; ``ai_providers`` may list the keys
  allowed). Aggregates only: a category is reported only when at least
  ``min_count`` records hold it (the others fall into the all-zero "other"
  code, as unseen values do), a class under that count is refused, and the
  dataset's user field and ``identifiers`` are never fitted on.
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
import contextlib
import json
import logging
import math
import time
import tomllib
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tessera.consent import ConsentError, Enrolment, GateState, RecordsGate, ReplayedRequest
from tessera.crypto.documents import SignedDocument
from tessera.crypto.keys import NodeKeys
from tessera.data.connectors import Backend, DatasetConfig
from tessera.data.derive import parse_derivations
from tessera.data.domains import MAX_LISTED_VALUES, every_feature
from tessera.data.prepare import Preprocessor, sorted_values
from tessera.errors import ConfigError, DataError, RemoteProtocolError
from tessera.ids import Task
from tessera.protocol.limits import PROVIDER_BODY
from tessera.runtime.transport.auth import KEYS_HEADER, MAX_SKEW, Caller, verify_request
from tessera.runtime.transport.serve import BodyLimit
from tessera.storage.errors import Unavailable

__all__ = [
    "MAX_BODY",
    "ProviderConfig",
    "create_provider_app",
    "load_provider_config",
    "provider_access",
    "read_provider_config",
]

MAX_BODY = PROVIDER_BODY  # see protocol.limits
#: Fewest records that must hold a category for the statistics to name it.
MIN_COUNT = 10
UNAVAILABLE_RETRY_AFTER = 5  # seconds a node waits while the database restarts
_log = logging.getLogger("tessera.provider")
_KEY_SCHEME = APIKeyHeader(
    name=KEYS_HEADER,
    scheme_name="KeySignature",
    description="An AI provider's base64 public keys; with headers x-tessera-time, "
    "x-tessera-nonce and x-tessera-signature (tessera.runtime.transport.auth).",
    auto_error=False,
)

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
    # A field of few distinct values: those held by at least the minimum count of
    # records (the schema a job's categories and classes come from), sorted.
    values: list[Any] | None = None
    # The user field or a declared identifier: never a feature, never fitted on.
    identifies: bool = False


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
        401: "not signed, or the signature, time or nonce does not hold",
        403: "consent or signature problem, or statistics this caller may not have",
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
    # Empty: every column (and derived column) but the target and those identifying people.
    features: Annotated[str, Field(max_length=65536)] = ""
    categorical: Annotated[str, Field(max_length=65536)] = ""
    standardize: bool = True
    # JSON, all optional: [{"name": ..., "expr": ...}, ...] (derived columns, in order),
    # {"default": "drop", "columns": {"x": "impute"}} (the missing-value policy) and
    # {"x": ["a", "b"]} (declared categories, in order).
    derive: Annotated[str, Field(max_length=65536)] = ""
    missing: Annotated[str, Field(max_length=65536)] = ""
    categories: Annotated[str, Field(max_length=65536)] = ""


class _Provider:
    """What the routes do, without HTTP: each method answers or raises ``_Refused``."""

    def __init__(
        self,
        backends: Sequence[Backend],
        subjects: Enrolment,
        now: Callable[[], float],
        keys: NodeKeys,
        state: GateState | None = None,
        *,
        ai_providers: Collection[str] | None = None,
        min_count: int = MIN_COUNT,
        identifiers: Collection[str] = (),
    ) -> None:
        self.ai_providers = None if ai_providers is None else frozenset(ai_providers)
        self.min_count = min_count
        self.identifiers = frozenset(identifiers)
        self.datasets: dict[str, Backend] = {}
        for backend in backends:
            if backend.name in self.datasets:
                raise ValueError(f"two datasets are named {backend.name!r}")
            self.datasets[backend.name] = backend
        self.catalogue = [self._described(backend) for backend in self.datasets.values()]
        self.fields = {d["name"]: {f["name"] for f in d["fields"]} for d in self.catalogue}
        self.keys = keys
        self.gate = RecordsGate(subjects, identity=keys, state=state)
        self.now = now

    def _described(self, backend: Backend) -> dict[str, Any]:
        """The catalogue entry, each field of few values listing those common enough; the
        fields that identify people are marked so (and list none)."""
        entry = backend.describe()
        banned = {entry["user_field"], *self.identifiers}
        table = backend.table()
        fields = []
        for field in entry["fields"]:
            name = field["name"]
            column = table[name]
            if name in banned:
                fields.append({**field, "identifies": True})
                continue
            if column.nunique() > MAX_LISTED_VALUES:
                fields.append(field)
                continue
            counts = _counts(column)
            values = [_plain(v) for v in sorted_values(column.dropna().drop_duplicates())]
            common = [v for v in values if counts.get(str(v), 0) >= self.min_count]
            fields.append({**field, "values": common})
        return {**entry, "fields": fields}

    def dataset(self, name: str) -> Backend:
        backend = self.datasets.get(name)
        if backend is None:
            raise _Refused(404, f"unknown dataset {name!r}; offered: {', '.join(self.datasets)}")
        return backend

    def caller(self, request: Request) -> Caller:
        """The AI provider that signed ``request`` (its nonce burnt); 401 or 403 if none."""
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        state = self.gate.state

        def fresh(caller: Caller) -> bool:
            expires, now = caller.at + MAX_SKEW, self.now()
            return state.use_nonce(caller.fingerprint, caller.nonce, expires=expires, now=now)

        try:
            caller = verify_request(
                request.headers,
                method=request.method,
                path=path,
                body=b"",
                keys_of=lambda _: None,  # nodes are not known here: only key holders sign
                fresh=fresh,
                now=self.now(),
            )
        except RemoteProtocolError as exc:
            raise _Refused(401, str(exc)) from None
        if self.ai_providers is not None and caller.fingerprint not in self.ai_providers:
            raise _Refused(403, "these keys are not an AI provider this provider answers")
        return caller

    def preprocessing(self, name: str, query: PreprocessingQuery) -> dict[str, Any]:
        """The fitted encoding, aggregates only (see the module doc)."""
        backend = self.dataset(name)
        banned = {backend.describe()["user_field"], *self.identifiers}
        derive, default, per_column = _derive_and_missing(query)
        categories = _declared(query)
        try:
            derivations = parse_derivations(derive)
        except DataError as exc:
            raise _Refused(400, str(exc)) from None
        inputs = {c for d in derivations for c in d.inputs}
        asked = {query.target, *_names(query.features), *_names(query.categorical), *inputs}
        if asked & banned:
            raise _Refused(403, f"{sorted(asked & banned)} identify people: no statistics of them")
        table = backend.table()
        if len(table) < self.min_count:
            raise _Refused(403, f"fewer than {self.min_count} records: no statistics")
        features = _names(query.features) or every_feature(
            [str(c) for c in table.columns],
            target=query.target,
            derive=derivations,
            identifying=banned,
        )
        try:
            pre = Preprocessor.fit(
                table,
                target=query.target,
                features=features,
                categorical=_names(query.categorical),
                task=query.task,
                standardize=query.standardize,
                derive=derive,
                missing=default,
                missing_columns=per_column,
                categories=categories,
            )
            fitted = pre.to_json()
            table = pre.with_derived(table)  # counts of derived columns' values too
        except DataError as exc:
            raise _Refused(400, str(exc)) from None
        return self._only_common(table, fitted, declared=set(categories))

    def _only_common(
        self, table: pd.DataFrame, fitted: dict[str, Any], *, declared: Collection[str] = ()
    ) -> dict[str, Any]:
        """Drop categories under ``min_count`` records; refuse classes under it. A column
        whose categories the AI provider declared keeps them: they tell it nothing."""
        counts = {
            name: _counts(table[name])
            for name in [fitted["target"], *(c["name"] for c in fitted["columns"])]
        }
        held = counts[fitted["target"]]
        rare = [c for c in fitted["classes"] if held.get(str(c), 0) < self.min_count]
        if rare:
            raise _Refused(
                403,
                f"{len(rare)} class(es) of {fitted['target']!r} are held by fewer than "
                f"{self.min_count} records: merge them or choose another target",
            )
        for column in fitted["columns"]:
            if column.get("kind") == "categorical" and column["name"] not in declared:
                seen = counts[column["name"]]
                kept = [v for v in column["categories"] if seen.get(str(v), 0) >= self.min_count]
                if not kept:
                    raise _Refused(
                        403, f"every value of {column['name']!r} is held by too few records"
                    )
                column["categories"] = kept
        return fitted

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
        with _gate_refusals():
            attestation = self.gate.attest(
                job=job, consent=consent, request=request, now=self.now()
            )
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
        with _gate_refusals():
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
    ai_providers: Collection[str] | None = None,
    min_count: int = MIN_COUNT,
    identifiers: Collection[str] = (),
) -> FastAPI:
    """The provider's app; ``subjects`` maps a user's id here to their node key's fingerprint.

    ``keys`` are the provider's own: jobs and nodes name it by their fingerprint.
    Statistics go to requests signed by the keys whose fingerprints are in
    ``ai_providers`` (None: any signed key); a category is named only when
    ``min_count`` records hold it; ``identifiers`` (and each dataset's user
    field) are columns never fitted on.

    ``subjects`` may be a live mapping (enrolments added later count at once).
    ``now`` is the clock for consent expiry and request freshness. ``state``
    keeps revocations and used nonces (the caller opens and closes it); None:
    in memory, forgotten when the process ends, so a service must pass a
    durable one (``tessera.data_provider.gate_state.SqlGateState``).
    """
    provider = _Provider(
        backends,
        {} if subjects is None else subjects,
        now,
        keys,
        state,
        ai_providers=ai_providers,
        min_count=min_count,
        identifiers=identifiers,
    )
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

    @app.get("/v1/datasets/{name}/preprocessing", responses=_refusals(400, 401, 403, 404, 422))
    def preprocessing(
        name: str,
        query: Annotated[PreprocessingQuery, Query()],
        request: Request,
        _keys: Annotated[str | None, Security(_KEY_SCHEME)],
    ) -> dict[str, Any]:
        """The dataset's feature encoding (``Preprocessor.to_json``), to an AI provider."""
        caller = provider.caller(request)
        answer = provider.preprocessing(name, query)
        _log.info("statistics of %r to %s", name, caller.keys.short_fingerprint)
        return answer

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

    # Its database away (a PostgreSQL restart): nothing was released or stored, and the
    # node asks again after Retry-After; not a 500 and a traceback.
    @app.exception_handler(Unavailable)
    async def unavailable(request: Request, exc: Unavailable) -> JSONResponse:
        _log.warning(
            "database unavailable: %s %s refused: %s", request.method, request.url.path, exc
        )
        detail = "the provider's database is unavailable: nothing was released; retry later"
        headers = {"Retry-After": str(UNAVAILABLE_RETRY_AFTER)}
        return _AsciiJSON({"detail": detail}, status_code=503, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _AsciiJSON({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


Fingerprint = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ProviderConfig(_Model):
    """The provider's config file: its datasets, and which node key each user linked.

    ``subjects`` maps a user's id here (a value of a dataset's user field) to
    the fingerprint of the node keys they linked to their account.
    ``ai_providers`` lists the keys whose signed requests get statistics
    (absent: any signed key), ``min_count`` the records a reported category
    needs, ``identifiers`` columns (besides each user field) never fitted on.
    """

    datasets: Annotated[list[DatasetConfig], Field(min_length=1)]
    subjects: dict[str, Fingerprint] = {}
    ai_providers: list[Fingerprint] | None = None
    min_count: Annotated[int, Field(ge=1)] = MIN_COUNT
    identifiers: list[str] = []


def load_provider_config(path: str | Path) -> tuple[list[Backend], dict[str, str]]:
    """Read a provider config (``.toml``, else JSON) and load its datasets.

    A malformed file raises ``ConfigError`` naming the field; a dataset that
    cannot be read raises ``DataError``. Relative paths are read from the
    file's folder.
    """
    config = read_provider_config(path)
    backends: list[Backend] = [d.build(Path(path).parent) for d in config.datasets]
    return backends, dict(config.subjects)


def provider_access(config: ProviderConfig) -> dict[str, Any]:
    """The ``create_provider_app`` arguments that say who gets which statistics."""
    return {
        "ai_providers": config.ai_providers,
        "min_count": config.min_count,
        "identifiers": config.identifiers,
    }


def read_provider_config(path: str | Path) -> ProviderConfig:
    """Parse and check a provider config file (``ConfigError`` naming the field)."""
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
    return config


def _plain(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value


def _counts(column: pd.Series) -> dict[str, int]:
    """How many records hold each value, keyed as the fitted JSON prints it."""
    counts = column.dropna().value_counts()
    return {str(v.item() if isinstance(v, np.generic) else v): int(n) for v, n in counts.items()}


@contextlib.contextmanager
def _gate_refusals() -> Iterator[None]:
    """The gate's refusals as HTTP: 409 a replay, 403 consent or signature, 400 malformed."""
    try:
        yield
    except ReplayedRequest as exc:
        raise _Refused(409, exc.reason) from None
    except ConsentError as exc:
        raise _Refused(403, exc.reason) from None
    except RemoteProtocolError as exc:
        raise _Refused(400, str(exc)) from None


def _derive_and_missing(
    query: PreprocessingQuery,
) -> tuple[list[tuple[str, str]], str, dict[str, str]]:
    """The query's derived columns and missing-value policy, read from their JSON (or 400)."""
    try:
        derive = json.loads(query.derive) if query.derive else []
        missing = json.loads(query.missing) if query.missing else {}
    except ValueError as exc:
        raise _Refused(400, f"derive and missing must be JSON: {exc}") from None
    pairs = [
        (d["name"], d["expr"])
        for d in (derive if isinstance(derive, list) else [])
        if isinstance(d, dict)
        and set(d) == {"name", "expr"}
        and isinstance(d["name"], str)
        and isinstance(d["expr"], str)
    ]
    if not isinstance(derive, list) or len(pairs) != len(derive):
        raise _Refused(400, 'derive must be a JSON list of {"name": ..., "expr": ...}')
    columns = missing.get("columns", {}) if isinstance(missing, dict) else None
    default = missing.get("default", "drop") if isinstance(missing, dict) else None
    if (
        not isinstance(columns, dict)
        or not isinstance(default, str)
        or (set(missing) - {"default", "columns"})
    ):
        raise _Refused(400, 'missing must be a JSON object {"default": ..., "columns": {...}}')
    return pairs, default, {str(k): str(v) for k, v in columns.items()}


def _declared(query: PreprocessingQuery) -> dict[str, list[Any]]:
    """The query's declared categories, read from their JSON (or 400); checked by the fit."""
    try:
        declared = json.loads(query.categories) if query.categories else {}
    except ValueError as exc:
        raise _Refused(400, f"categories must be JSON: {exc}") from None
    if not isinstance(declared, dict) or not all(isinstance(v, list) for v in declared.values()):
        raise _Refused(400, 'categories must be a JSON object {"column": [values, ...]}')
    return declared


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

"""The AI provider's side: build, sign and submit a job; watch it; fetch the model.

The AI provider never sees a record: the feature encoding comes from the data
provider's catalogue (aggregate statistics only), the initial weights are
made from the declarative model spec, and what comes back is one aggregated
model per round. It evaluates each on its own held-out data.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from tessera.ai_provider.schema import Schema, schema_preprocessing
from tessera.config import JobConfig
from tessera.crypto.documents import SignedDocument
from tessera.crypto.keys import NodeKeys
from tessera.data.prepare import Preprocessor
from tessera.errors import RemoteProtocolError
from tessera.jobs.document import DataRequest, JobSpec, make_job_document
from tessera.jobs.prepared import model_spec_of, recipe_of
from tessera.jobs.records import RoundRecord
from tessera.runtime.transport.auth import sign_request
from tessera.runtime.transport.client import CoordinatorClient, check
from tessera.runtime.transport.mail import (
    WEIGHTS_MEDIA_TYPE,
    read_weights_artefact,
    weights_artefact,
)
from tessera.training import init_weights, layout
from tessera.weights import Vector

__all__ = [
    "RoundResult",
    "Schema",
    "build_job",
    "fetch_final",
    "fetch_preprocessing",
    "fetch_provider_key",
    "fetch_schema",
    "schema_preprocessing",
    "submit",
    "watch",
]


def fetch_schema(provider: str, dataset: str, *, verify: ssl.SSLContext | bool = True) -> Schema:
    """What the data provider's public catalogue says of ``dataset``: its fields, their
    types, the values of each field of few values (those enough records hold, the
    categories and classes an encoding starts from) and the fields that identify people."""
    with httpx.Client(base_url=provider.rstrip("/"), verify=verify, timeout=30) as http:
        answer = http.get("/v1/catalogue")
    if answer.status_code != 200:
        raise RemoteProtocolError(f"the data provider's catalogue: {answer.status_code}")
    body = answer.json()
    for entry in body.get("datasets", []) if isinstance(body, dict) else []:
        if isinstance(entry, dict) and entry.get("name") == dataset:
            return Schema.from_catalogue(entry)
    raise RemoteProtocolError(f"the data provider offers no dataset {dataset!r}")


def fetch_preprocessing(
    cfg: JobConfig,
    provider: str,
    dataset: str,
    *,
    keys: NodeKeys,
    verify: ssl.SSLContext | bool = True,
) -> dict[str, Any]:
    """The data provider's feature encoding for this job's target and features.

    Asked with a request signed by the AI provider's ``keys``: the provider
    answers aggregate statistics to a signed request only.
    """
    d = cfg.data
    params = {
        "target": d.target,
        "features": ",".join(d.features),
        "categorical": ",".join(d.categorical),
        "task": str(cfg.job.task),
        "standardize": str(d.standardize).lower(),
    }
    # Only when used, so a job without them asks what it asked before.
    if d.categories:
        params["categories"] = json.dumps(d.categories)
    if d.derive:
        params["derive"] = json.dumps([{"name": e.name, "expr": e.expr} for e in d.derive])
    if d.missing.default != "drop" or d.missing.columns:
        params["missing"] = json.dumps(
            {"default": d.missing.default, "columns": dict(d.missing.columns)}
        )
    path = f"/v1/datasets/{quote(dataset, safe='')}/preprocessing?{urlencode(params)}"
    headers = sign_request(keys, "GET", path, at=time.time())
    with httpx.Client(base_url=provider.rstrip("/"), verify=verify, timeout=120) as http:
        result: dict[str, Any] = check(http.get(path, headers=headers)).json()
    return result


def fetch_provider_key(provider: str, *, verify: ssl.SSLContext | bool = True) -> str:
    """The data provider's key fingerprint: how a job names it (``data.provider``)."""
    with httpx.Client(verify=verify, timeout=30) as http:
        answer = check(http.get(f"{provider.rstrip('/')}/v1/provider")).json()
    fingerprint = answer.get("fingerprint") if isinstance(answer, dict) else None
    if not isinstance(fingerprint, str):
        raise RemoteProtocolError("the data provider did not say its key fingerprint")
    return fingerprint


def build_job(
    cfg: JobConfig,
    keys: NodeKeys,
    *,
    provider: str,
    dataset: str,
    user_field: str,
    preprocessing: dict[str, Any],
    min_consents: int,
    purpose: str,
    created_at: float | None = None,
    statistics: bool = False,
) -> tuple[SignedDocument, bytes]:
    """The signed job document and its initial weights (safetensors bytes).

    ``provider`` is the data provider's key fingerprint (``fetch_provider_key``);
    ``created_at`` defaults to now (it is signed: the job's id depends on it);
    ``statistics``: a secure job opens with a statistics round, and every number of
    ``preprocessing`` is refitted from its total (``JobSpec.statistics``).
    """
    pre = Preprocessor.from_json(preprocessing)
    spec, recipe = model_spec_of(cfg, pre), recipe_of(cfg)
    lay = layout(spec)
    weights = lay.flatten(init_weights(spec, cfg.job.seed))
    data, sha = weights_artefact(weights)
    doc = make_job_document(
        keys,
        config=cfg,
        model=spec,
        recipe=recipe,
        preprocessing=preprocessing,
        weights_sha256=sha,
        n_weights=lay.size,
        data=DataRequest(
            provider=provider,
            dataset=dataset,
            fields=pre.inputs,  # raw columns: nodes compute derived ones themselves
            user_field=user_field,
        ),
        purpose=purpose,
        min_consents=min_consents,
        created_at=created_at,
        statistics=statistics,
    )
    return doc, data


def submit(client: CoordinatorClient, doc: SignedDocument, weights: bytes) -> dict[str, Any]:
    client.put_artefact(weights, WEIGHTS_MEDIA_TYPE)
    return client.submit_job(doc)


@dataclass(frozen=True)
class RoundResult:
    record: RoundRecord  # the coordinator's round record
    weights: Vector


def watch(
    client: CoordinatorClient,
    job_id: str,
    *,
    poll: float = 0.5,
    timeout: float | None = None,
    on_status: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[RoundResult]:
    """Each closed round in order (with its model), until the job ends."""
    spec = JobSpec.from_document(client.job_document(job_id))
    seen, start = 0, time.monotonic()
    while True:
        status = client.status(job_id)
        if on_status is not None:
            on_status(status)
        for row in status["rounds"][seen:]:
            try:  # the coordinator's word: a bad row is its fault, said as such
                record = RoundRecord.from_json(row)
            except ValueError as exc:
                raise RemoteProtocolError(f"bad round record from the coordinator: {exc}") from None
            sha = record.weights
            if sha is None:
                raise RemoteProtocolError(f"round {record.round} names no weights artefact")
            weights = read_weights_artefact(client.get_artefact(sha), sha, spec.n_weights)
            yield RoundResult(record, weights)
            seen += 1
        if status["state"] == "failed":
            raise RuntimeError(f"job {job_id} failed: {status.get('error')}")
        if status["state"] == "finished" and seen == len(status["rounds"]):
            return
        if timeout is not None and time.monotonic() - start > timeout:
            raise TimeoutError(f"job {job_id} did not finish within {timeout:.0f} s")
        time.sleep(poll)


def fetch_final(client: CoordinatorClient, job_id: str) -> tuple[Vector, str]:
    """The final model and its SHA-256 (hash-checked)."""
    spec = JobSpec.from_document(client.job_document(job_id))
    sha = client.status(job_id)["final_weights"]
    if sha is None:
        raise RuntimeError(f"job {job_id} has no final model yet")
    return read_weights_artefact(client.get_artefact(sha), sha, spec.n_weights), sha

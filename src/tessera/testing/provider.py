"""A real data provider for tests: the provider's HTTP service on loopback, over a job's records.

``serve_provider(job)`` starts ``data_provider.app.create_provider_app``
with ``serve_in_thread``, offering the records of the job's own nodes (the
rows ``prepare_job`` partitioned, before encoding) as one dataset, with an
enrolment per user: each node name is a user id, enrolled with that node's
keys. It yields a ``ProviderService`` that also holds an AI provider's
signed job document naming the dataset and fields, so a test can ask for a
user's records exactly as a node agent does, or break one piece at a time:

    job = chem97_job(nodes=3)
    with serve_provider(job) as provider:
        user = job.node_names[0]
        answer = provider.post_records(user)                  # consented, signed, fresh
        assert len(answer.json()["rows"]) == job.node_samples[0]
        other = provider.keys[job.node_names[1]]
        assert provider.post_records(user, keys=other).status_code == 403
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pandas as pd

from tessera.consent import ConsentTerms, grant_consent, sign_records_request
from tessera.crypto.documents import DocumentKind, SignedDocument, sign_document
from tessera.crypto.keys import NodeKeys
from tessera.data.connectors import TableBackend
from tessera.data_provider.app import create_provider_app
from tessera.errors import ConfigError
from tessera.ids import job_id_of
from tessera.jobs.prepared import PreparedJob, split_table
from tessera.runtime.transport.serve import serve_in_thread

#: How long a test consent lasts from the moment it is granted.
CONSENT_SECONDS = 86_400.0


def user_keys(user: str) -> NodeKeys:
    """The deterministic node keys enrolled for ``user`` (``from_seed``: tests only)."""
    return NodeKeys.from_seed(f"tessera-testing|user|{user}".encode())


@dataclass(frozen=True, kw_only=True)
class ProviderService:
    """A running provider and everything needed to ask it for records."""

    url: str
    dataset: str
    fields: tuple[str, ...]
    backend: TableBackend  # what it serves: ``backend.records(user, fields)`` is the truth
    keys: Mapping[str, NodeKeys]  # user id -> the node keys enrolled for them
    ai_provider: NodeKeys
    job: SignedDocument  # signed by ``ai_provider``; names ``dataset`` and ``fields``
    now: Callable[[], float]
    provider: NodeKeys  # the data provider's own keys: jobs and requests name it

    @property
    def job_id(self) -> str:
        return job_id_of(str(self.job.body["name"]), self.job.digest)

    def consent(self, user: str, *, keys: NodeKeys | None = None, **changes: Any) -> SignedDocument:
        """``user``'s receipt for the job (signed by their keys unless ``keys``)."""
        at = self.now()
        terms: dict[str, Any] = {
            "job_id": self.job_id,
            "job_digest": self.job.digest,
            "purpose": "tests of the data provider",
            "data_categories": self.fields,
            "ai_provider": self.ai_provider.public.fingerprint,
            "user": user,
            "subject": user,
            "issued_at": at - 60,
            "expires_at": at + CONSENT_SECONDS,
            **changes,
        }
        return grant_consent(keys or self.keys[user], ConsentTerms(**terms))

    def records_body(
        self,
        user: str,
        *,
        keys: NodeKeys | None = None,
        receipt: SignedDocument | None = None,
        fields: tuple[str, ...] | None = None,
        at: float | None = None,
    ) -> dict[str, Any]:
        """The JSON a node posts to ``/v1/records`` (signed by ``keys``, default the user's)."""
        signer = keys or self.keys[user]
        wanted = list(self.fields if fields is None else fields)
        request = sign_records_request(
            signer,
            job_id=self.job_id,
            job_digest=self.job.digest,
            audience=self.provider.public.fingerprint,
            node=f"node-{user}",
            user=user,
            dataset=self.dataset,
            fields=wanted,
            at=self.now() if at is None else at,
        )
        return {
            "dataset": self.dataset,
            "fields": wanted,
            "job": self.job.to_json(),
            "consent": (receipt or self.consent(user)).to_json(),
            "request": request.to_json(),
        }

    def post_records(self, user: str, **body: Any) -> httpx.Response:
        """Ask for ``user``'s records (``records_body``'s arguments); the raw answer."""
        with httpx.Client(base_url=self.url, timeout=30) as http:
            return http.post("/v1/records", json=self.records_body(user, **body))

    def expected(self, user: str) -> pd.DataFrame:
        """The rows the provider must release for ``user``."""
        return self.backend.records(user, list(self.fields))


@contextmanager
def serve_provider(
    job: PreparedJob,
    *,
    dataset: str = "records",
    now: Callable[[], float] = time.time,
) -> Iterator[ProviderService]:
    """The provider over ``job``'s users and their raw records, served until the block ends."""
    cfg = job.config
    column = cfg.partition.column
    if cfg.partition.scheme != "natural" or column is None:
        raise ConfigError("partition", "a provider needs a natural partition (a user column)")
    train_df, _ = split_table(cfg)
    users = set(job.node_names)
    table = train_df[train_df[column].astype(str).isin(users)].reset_index(drop=True)
    fields = tuple(cfg.data.features or [c for c in table.columns if c != cfg.data.target])
    fields = (*fields, cfg.data.target)
    backend = TableBackend(dataset, table, column, f"{cfg.data.dataset}, {len(users)} users")
    keys = {user: user_keys(user) for user in job.node_names}
    ai = NodeKeys.from_seed(b"tessera-testing|ai-provider")
    provider = NodeKeys.from_seed(b"tessera-testing|data-provider")
    data = {"provider": provider.public.fingerprint, "dataset": dataset, "fields": list(fields)}
    document = sign_document(ai, DocumentKind.JOB, {"name": cfg.job.name, "data": data})
    app = create_provider_app(
        [backend],
        keys=provider,
        subjects={user: k.public.fingerprint for user, k in keys.items()},
        now=now,
    )
    with serve_in_thread(app) as server:
        yield ProviderService(
            url=server.url,
            dataset=dataset,
            fields=fields,
            backend=backend,
            keys=keys,
            ai_provider=ai,
            job=document,
            now=now,
            provider=provider,
        )

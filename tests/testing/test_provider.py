"""The kit's data provider: the real service on loopback, releasing a job's real records."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tessera.errors import ConfigError
from tessera.jobs.prepared import PreparedJob
from tessera.testing import chem97_job
from tessera.testing.provider import ProviderService, serve_provider

T0 = 1_780_000_000.0


@pytest.fixture(scope="module")
def job() -> PreparedJob:
    return chem97_job(nodes=3, rounds=1)


@pytest.fixture(scope="module")
def provider(job: PreparedJob) -> Iterator[ProviderService]:
    with serve_provider(job, now=lambda: T0) as service:
        yield service


def test_each_user_gets_their_own_records(job: PreparedJob, provider: ProviderService) -> None:
    assert provider.url.startswith("http://127.0.0.1:")
    for i, user in enumerate(job.node_names):
        answer = provider.post_records(user)
        assert answer.status_code == 200, answer.text
        rows = answer.json()["rows"]
        assert rows == provider.expected(user).to_dict("split")["data"]
        assert len(rows) == job.node_samples[i]  # the same records the job partitioned
        encoded = job.y[job.offsets[i] : job.offsets[i + 1]]  # class indices of the score
        scores = sorted(float(job.classes[int(k)]) for k in encoded)  # type: ignore[arg-type]
        assert scores == sorted(float(r[-1]) for r in rows)


def test_the_catalogue_offers_only_the_jobs_users(
    job: PreparedJob, provider: ProviderService
) -> None:
    (dataset,) = httpx.get(f"{provider.url}/v1/catalogue").json()["datasets"]
    assert dataset["name"] == provider.dataset and dataset["users"] == job.n_nodes
    assert provider.fields == ("gcsescore", "gender", "age", "score")


def test_another_users_key_is_refused(job: PreparedJob, provider: ProviderService) -> None:
    a, b = job.node_names[:2]
    answer = provider.post_records(a, keys=provider.keys[b], receipt=provider.consent(a))
    assert answer.status_code == 403
    assert "not signed by the node key enrolled" in answer.json()["detail"]


def test_a_replayed_request_is_refused(job: PreparedJob, provider: ProviderService) -> None:
    body = provider.records_body(job.node_names[0])
    with httpx.Client(base_url=provider.url) as http:
        assert http.post("/v1/records", json=body).status_code == 200
        again = http.post("/v1/records", json=body)
    assert again.status_code == 409 and "replayed" in again.json()["detail"]


def test_a_stale_request_and_an_expired_consent_are_refused(
    job: PreparedJob, provider: ProviderService
) -> None:
    user = job.node_names[0]
    assert provider.post_records(user, at=T0 - 3600).status_code == 403
    expired = provider.consent(user, issued_at=T0 - 7200, expires_at=T0 - 3600)
    assert provider.post_records(user, receipt=expired).status_code == 403


def test_a_job_without_a_user_column_has_no_provider() -> None:
    job = chem97_job(
        nodes=2,
        rounds=1,
        partition={"scheme": "iid", "nodes": 2, "column": None},
        secure={"organisation_column": None},
    )
    with pytest.raises(ConfigError, match="natural partition"), serve_provider(job):
        pass

"""Finding 1: records must reach only the user's own node, never whoever a job names.

Before: a job's ``data.provider`` was a URL its author chose; a node sent its
signed records request and consent receipt there (plain http accepted), and
the request named no audience, so a relay at that URL passed it on to the
real provider and received the user's rows. Now a job names its data
provider by key fingerprint, a node talks only to the provider its own user
enrolled it with (https), and the provider refuses a request made for
another audience, for another job document, or for a job that does not name
it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.coordinator.coordinator_kit import AI, preprocessing, tiny_config

from tessera.ai_provider.client import build_job
from tessera.consent import ConsentError, sign_records_request
from tessera.crypto.keys import NodeKeys
from tessera.errors import ConfigError, RemoteProtocolError
from tessera.node.agent import AgentConfig, NodeAgent
from tessera.runtime.transport.client import CoordinatorClient
from tessera.runtime.transport.mail import WEIGHTS_MEDIA_TYPE
from tessera.runtime.transport.urls import require_https
from tessera.testing import chem97_job
from tessera.testing.provider import ProviderService, serve_provider

RELAY = NodeKeys.from_seed(b"tessera-tests|relay")  # the AI provider's own "provider"


@pytest.fixture(scope="module")
def provider() -> Iterator[ProviderService]:
    job = chem97_job(nodes=3)
    with serve_provider(job) as service:
        yield service


def test_a_request_relayed_from_another_audience_is_refused(provider: ProviderService) -> None:
    """The relay forwards a node's request (made for the relay) to the real provider."""
    user = next(iter(provider.keys))
    relay = RELAY
    body = provider.records_body(user)
    made_for_relay = sign_records_request(
        provider.keys[user],
        job_id=provider.job_id,
        job_digest=provider.job.digest,
        audience=relay.public.fingerprint,
        node=f"node-{user}",
        user=user,
        dataset=provider.dataset,
        fields=provider.fields,
        at=provider.now(),
    )
    body["request"] = made_for_relay.to_json()
    with httpx.Client(base_url=provider.url, timeout=30) as http:
        answer = http.post("/v1/records", json=body)
    assert answer.status_code == 403, answer.text
    assert "meant for data provider" in answer.json()["detail"]
    assert "rows" not in answer.json()
    # The same user's own, well-addressed request is served: the refusal is the audience's.
    with httpx.Client(base_url=provider.url, timeout=30) as http:
        assert http.post("/v1/records", json=provider.records_body(user)).status_code == 200


def test_a_job_cannot_name_a_url_for_the_records() -> None:
    """A job names its provider by key; a URL (where a relay would sit) is refused."""
    with pytest.raises(RemoteProtocolError, match="data provider's key fingerprint"):
        build_job(
            tiny_config(),
            AI,
            provider="https://relay.example",
            dataset="records",
            user_field="school",
            preprocessing=preprocessing(),
            min_consents=3,
            purpose="p",
        )


@pytest.mark.parametrize(
    ("url", "switch", "ok"),
    [
        ("https://provider.example", False, True),
        ("http://provider.example", False, False),
        ("http://provider.example", True, False),  # the switch never reaches off this machine
        ("http://127.0.0.1:8701", False, False),
        ("http://127.0.0.1:8701", True, True),
        ("http://localhost:8701", True, True),
        ("http://[::1]:8701", True, True),
        ("ftp://provider.example", True, False),
    ],
)
def test_a_node_talks_https_only(url: str, switch: bool, ok: bool, tmp_path: Path) -> None:
    def agent() -> NodeAgent:
        return NodeAgent(
            AgentConfig(
                node_id="node-1",
                coordinator="https://coordinator.example",
                keys_path=tmp_path / "node.key",
                state_dir=tmp_path / "state",
                subject="1",
                provider=url,
                provider_key="0" * 64,
                insecure_loopback=switch,
            )
        )

    if ok:
        assert require_https(url, "provider", insecure_loopback=switch) == url
        agent()
    else:
        with pytest.raises(ConfigError, match="provider"):
            agent()


def test_a_node_with_a_user_needs_its_own_provider(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data provider's URL and key fingerprint"):
        NodeAgent(
            AgentConfig(
                node_id="node-1",
                coordinator="https://coordinator.example",
                keys_path=tmp_path / "node.key",
                state_dir=tmp_path / "state",
                subject="1",
            )
        )


def test_consent_and_revocation_bind_the_document_and_the_ai_provider() -> None:
    """A revocation counts for the receipt's job document and AI provider, nothing else."""
    from tessera.consent import ConsentTerms, check_consent, grant_consent, revoke_consent
    from tessera.crypto.documents import sign_document

    user = NodeKeys.from_seed(b"tessera-tests|user")
    terms = ConsentTerms(
        job_id="job-1",
        job_digest="d" * 64,
        purpose="p",
        data_categories=("score",),
        ai_provider="a" * 64,
        user="node-1",
        issued_at=0.0,
        expires_at=100.0,
    )
    receipt = grant_consent(user, terms)
    honest = revoke_consent(user, receipt=receipt, at=10.0)
    assert set(honest.body) >= {"job_digest", "ai_provider"}

    def check(*revocations: object) -> object:
        return check_consent(
            receipt,
            job_id="job-1",
            job_digest="d" * 64,
            user="node-1",
            now=20.0,
            revocations=revocations,  # type: ignore[arg-type]
        )

    for field in ("job_digest", "ai_provider"):
        other = sign_document(user, "revocation", {**honest.body, field: "0" * 64})
        assert check(other) == terms  # names another document or provider: not this consent
    with pytest.raises(ConsentError, match="consent revoked"):
        check(honest)


def test_nobody_can_take_a_jobs_id_first(tmp_path: Path) -> None:
    """An attacker submits a job of the same name first: the real one still gets its own id."""
    from tests.coordinator.coordinator_kit import (
        CREATED_AT,
        PROVIDER,
        Harness,
        job_id,
        tiny_config,
        tiny_job,
    )

    real, weights = tiny_job()
    squatter = NodeKeys.from_seed(b"tessera-tests|squatter")
    fake, fake_weights = build_job(
        tiny_config(),
        squatter,
        provider=PROVIDER,
        dataset="records",
        user_field="school",
        preprocessing=preprocessing(),
        min_consents=3,
        purpose="the very same words",
        created_at=CREATED_AT,
    )
    coord = Harness(tmp_path / "coordinator.db")
    try:
        with CoordinatorClient(coord.url, patience=5.0, keys=squatter) as client:
            client.put_artefact(fake_weights, WEIGHTS_MEDIA_TYPE)
            first = client.submit_job(fake)
        coord.submit(real, weights)
        assert first["job_id"] == job_id(fake) != job_id(real)
        assert coord.status(job_id(real))["digest"] == real.digest
    finally:
        coord.stop()

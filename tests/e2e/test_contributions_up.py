"""``tessera up`` with ``[contributions]``: a fifth of the users' records are label-
flipped at the data provider; the AI provider alone reads each round's group sums,
values them on its own held-out rows and posts its verdicts; the coordinator leaves
the excluded out of the rounds it opens after, and the records say why. Every
round also carries the contributors' data-quality statistics, summed. Then the AI
provider's login link and its report on the coordinator's pages, as ``tessera up``
makes and uploads them, over the deployment's TLS."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest

from tessera.config import ContributionsSection, PoisonSection, load_config
from tessera.deploy.local import Deployment
from tessera.deploy.up import page_link, run_job, upload_report

NODES = 20
EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "tessera" / "examples"


# One deployment at a time: two at once on 2 cores slow the rounds past their deadlines.
@pytest.mark.usefixtures("one_deployment_at_a_time")
def test_a_deployment_values_groups_and_leaves_the_flagged_out(tmp_path: Path) -> None:
    cfg = load_config(EXAMPLES / "chem97_poisoned.toml")
    cfg = cfg.model_copy(
        update={
            "federation": cfg.federation.model_copy(
                update={"rounds": 6, "fraction": 1.0, "min_participants": 1, "round_timeout": 10.0}
            ),
            "secure": cfg.secure.model_copy(update={"phase_timeout": 3.0, "group_size": 4}),
            "contributions": ContributionsSection(
                method="leave_one_out", min_evidence=2, threshold=1.0, policy="exclude"
            ),
            "simulation": cfg.simulation.model_copy(
                update={"poison": PoisonSection(fraction=0.2, scaled_fraction=0.05)}
            ),
            "baseline": cfg.baseline.model_copy(update={"enabled": False}),
        }
    )
    dep = Deployment(cfg, NODES, tmp_path / "up", tls=True)
    assert dep.job.scaled == ()  # a deployed node's update is its own: only records change
    flipped = {dep.node_id(i) for i in dep.job.corrupted}
    assert 0 < len(flipped) < NODES // 2  # drawn over all schools, then the first 20 kept
    try:
        result = run_job(dep, timeout=300, poll=0.05)
        pages_served(dep, result.job_id, tmp_path)
    finally:
        dep.close()
    records = result.rounds
    assert len(records) == 6 and all(r.group_sums is not None for r in records)
    for r in records:  # the included contributors' quality statistics, summed
        assert math.isfinite(r.loss_before) and 0 <= r.norm_ratio <= 1
        assert len(r.labels) == 6 and abs(sum(r.labels) - 1) < 1e-3
    entry = result.contributions
    assert entry is not None and entry["policy"] == "exclude"
    excluded = entry["excluded"]
    assert isinstance(excluded, dict) and excluded, entry
    named = {e.split(" (")[0]: r.round for r in records for e in r.excluded}
    assert named, "no round record names an exclusion"
    for node, first in named.items():
        assert node in excluded
        assert all(node not in r.included for r in records if r.round >= first)
    assert entry["judged"] == "excluded" and entry["precision"] is not None


def pages_served(dep: Deployment, job_id: str, tmp_path: Path) -> None:
    """``tessera up``'s link to the pages and its report upload (``deploy.up``), over TLS:
    the session cookie is Secure, and the report comes back as uploaded."""
    report = tmp_path / "report.html"
    report.write_text("<!doctype html><html><body><h1>the report</h1></body></html>")
    upload_report(dep, job_id, report)
    link = page_link(dep)
    assert link.startswith(dep.coordinator_url.rstrip("/") + "/ui/login?token="), link
    with httpx.Client(verify=dep.verify) as browser:
        login = browser.get(link)
        assert login.status_code == 303, login.text
        assert "; secure" in login.headers["set-cookie"].lower()
        served = browser.get(f"{dep.coordinator_url.rstrip('/')}/ui/jobs/{job_id}/report")
        assert served.status_code == 200, served.text
        assert served.text == report.read_text()
        assert served.headers["content-security-policy"].startswith("sandbox;")

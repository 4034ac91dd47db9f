"""``tessera up`` with ``[contributions]``: a fifth of the users' records are label-
flipped at the data provider; the AI provider alone reads each round's group sums,
values them on its own held-out rows and posts its verdicts; the coordinator leaves
the excluded out of the rounds it opens after, and the records say why. Every
round also carries the contributors' data-quality statistics, summed. Then the AI
provider's login link and its report on the coordinator's pages, as ``tessera up``
makes and uploads them, over the deployment's TLS."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import pytest

from tessera.audit import record_key, verify_log
from tessera.config import ContributionsSection, PoisonSection, load_config
from tessera.deploy.local import Deployment
from tessera.deploy.up import page_link, run_job, upload_report
from tessera.storage.keyfile import load_keys
from tessera.weights import Vector, save_file

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
    coordinator_log(dep, result.job_id, result.weights, rounds=6)


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


def coordinator_log(dep: Deployment, job_id: str, weights: Vector, *, rounds: int) -> None:
    """The coordinator's own signed log of the job: every event of a secure job, once."""
    path = dep.out / "audit" / f"{job_id}.jsonl"
    key = load_keys(dep.out / "keys" / "coordinator.key", dep.passphrase, warn_clear=False)
    save_file(dep.out / "model.safetensors", dep.job.layout.unflatten(weights))
    done = verify_log(path, key=key.public.signing.hex(), model=dep.out / "model.safetensors")
    assert (done.rounds, done.status) == (rounds, "finished")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    kinds = [r["kind"] for r in rows]
    assert kinds[0] == "job_submitted" and kinds.count("consent_granted") == NODES
    assert kinds.count("participants") == 1 and kinds.count("beacon") == 1
    trees = [r["body"]["round"] for r in rows if r["kind"] == "tree"]
    committed = [r for r in rows if r["kind"] == "round_committed"]
    assert trees == sorted(set(trees)) and {r["body"]["round"] for r in committed} <= set(trees)
    assert all(len(r["body"]["commitments"]) == 64 for r in committed)
    assert kinds.count("exclusion") == sum(len(r["body"]["excluded"]) for r in committed) > 0
    keys = [record_key(r["kind"], r["body"]) for r in rows]
    assert len(keys) == len(set(keys))

"""The coordinator writes each job's signed audit log, serves it, and resumes it whole.

A tiny plaintext job runs through the service and its API: three consents,
node-c's revocation while round 0 is open (its round-0 update still counts, as
the protocol says), round 1 without it, the end. The log must verify against
the coordinator's key and the final model, hold every event once, and show
that node-c's consent was honoured; a log re-signed to put node-c in round 1
must fail ``--node``, naming the record. Across a restart (the service closed
mid-job, its last records lost or torn) the log goes on without gaps or
duplicates; a log broken in its middle is never written over.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tessera.audit import AuditWriter, BrokenLog, read_log, record_key, verify_log
from tessera.audit.record import AuditRecord
from tessera.consent import revoke_consent
from tessera.coordinator.service import CoordinatorService
from tessera.crypto.auditsig import sign_audit_record
from tessera.crypto.keys import NodeKeys
from tessera.jobs.document import JobSpec
from tessera.runtime.transport.mail import WEIGHTS_MEDIA_TYPE, read_weights_artefact
from tessera.storage import Store
from tessera.training import layout
from tessera.weights import save_file

from .coordinator_kit import (
    AI,
    COORDINATOR_KEYS,
    JOB,
    Harness,
    Node,
    consent_body,
    post_mail,
    receipt,
    registration,
    tiny_job,
)

KEY = COORDINATOR_KEYS.public.signing.hex()
KINDS = [
    "job_submitted",
    "consent_granted",
    "consent_granted",
    "consent_granted",
    "participants",
    "consent_revoked",
    "round_committed",
    "round_committed",
    "model_final",
]


def invoke(*args: str) -> Any:
    from typer.testing import CliRunner

    from tessera.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def coord(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path / "coordinator.db")
    yield harness
    harness.stop()


@pytest.fixture
def nodes(coord: Harness) -> dict[str, Node]:
    """Four nodes registered, the tiny job submitted, a, b and c consented (d did not)."""
    found = {name: Node.make(name) for name in ("node-a", "node-b", "node-c", "node-d")}
    for node in found.values():
        coord.register(node.keys, node.id)
    doc, weights = tiny_job()
    coord.submit(doc, weights)
    for name in ("node-a", "node-b", "node-c"):
        assert coord.consent(doc, found[name]).status_code == 201
    assert coord.status()["state"] == "running"
    return found


def run_with_revocation(coord: Harness, nodes: dict[str, Node]) -> None:
    """Round 0 with a, b and c (c revokes while it is open), round 1 with a and b."""
    a, b, c = nodes["node-a"], nodes["node-b"], nodes["node-c"]
    coordinator = coord.service.keys.public
    for node in (a, b, c):
        [request] = node.train_requests(coord, wait=10)
        assert request.round == 0
    assert c.receipt is not None
    with coord.client() as client:
        client.revoke(JOB, revoke_consent(c.keys, receipt=c.receipt, at=time.time()), c.receipt)
    for node in (a, b, c):
        assert post_mail(coord, node.update(coordinator, 0)).status_code == 202
    coord.wait_for("round 0 closed", lambda s: len(s["rounds"]) == 1)
    for node in (a, b):
        [request] = node.train_requests(coord, wait=10)
        assert request.round == 1
        assert post_mail(coord, node.update(coordinator, 1)).status_code == 202
    coord.wait_for("job finished", lambda s: s["state"] == "finished")


def final_model(store: Store, job_id: str, path: Path) -> Path:
    """The job's final weights as ``tessera up`` saves them: safetensors in layout order."""
    job = store.get_job(job_id)
    spec = _spec(job.document)
    sha = job.final_weights
    assert sha is not None
    weights = read_weights_artefact(store.get_artefact(sha), sha, spec.n_weights)
    save_file(path, layout(spec.model).unflatten(weights))
    return path


def _spec(document: dict[str, Any]) -> JobSpec:
    from tessera.crypto.documents import SignedDocument

    return JobSpec.from_document(SignedDocument.from_json(document))


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def fetch(coord: Harness, out: Path, **who: Any) -> Path:
    """The job's log as the API serves it, written to ``out/audit.jsonl``."""
    answer = coord.get(f"/v1/jobs/{JOB}/audit", **who)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/x-ndjson")
    out.mkdir(exist_ok=True)
    (out / "audit.jsonl").write_bytes(answer.content)
    return out / "audit.jsonl"


def resigned(path: Path, change: Any) -> None:
    """Rewrite the log with ``change`` applied to each record's dict, every record re-signed
    and re-chained with the coordinator's keys: an authentic-looking log of other events."""
    prev, out = "0" * 64, []
    for rec in records(path):
        change(rec)
        fields = {k: v for k, v in rec.items() if k != "signature"}
        fields["prev"] = prev
        signature = sign_audit_record(COORDINATOR_KEYS, fields).hex()
        line = AuditRecord(**fields, signature=signature).to_line()  # type: ignore[arg-type]
        out.append(line)
        prev = hashlib.sha256(line).hexdigest()
    path.write_bytes(b"".join(line + b"\n" for line in out))


def test_the_log_holds_every_event_and_proves_a_revocation_honoured(
    coord: Harness, nodes: dict[str, Node], tmp_path: Path
) -> None:
    run_with_revocation(coord, nodes)
    out = tmp_path / "out"
    log = fetch(coord, out)
    model = final_model(coord.service.store, JOB, out / "model.safetensors")
    done = verify_log(log, key=KEY, model=model, node="node-c")
    assert (done.job, done.rounds, done.status) == ("tiny", 2, "finished")
    rows = records(log)
    assert [r["kind"] for r in rows] == KINDS
    doc, _ = tiny_job()
    assert rows[0]["body"] == {
        "job": "tiny",
        "digest": doc.digest,
        "job_id": JOB,
        "ai_provider": AI.public.fingerprint,
    }
    assert nodes["node-c"].receipt is not None
    granted = {r["body"]["node"]: r["body"]["receipt"] for r in rows[1:4]}
    assert granted["node-c"] == nodes["node-c"].receipt.digest
    assert rows[4]["body"]["nodes"] == ["node-a", "node-b", "node-c"]
    assert rows[5]["body"] == {
        "node": "node-c",
        "receipt": nodes["node-c"].receipt.digest,
        "from_round": 1,  # round 0 was open: its update counts, as the protocol says
    }
    assert rows[6]["body"]["included"] == ["node-a", "node-b", "node-c"]
    assert rows[7]["body"]["included"] == ["node-a", "node-b"]
    assert rows[8]["body"]["hash"] == "weights"
    assert {r["signer"] for r in rows} == {KEY}
    check = done.consent
    assert check is not None and check.honoured
    assert (check.revoked_at, check.rounds_after, check.included_in) == (5, [1], [0])
    server_log = coord.db.parent / "audit" / f"{JOB}.jsonl"
    assert server_log.read_bytes() == log.read_bytes()
    assert server_log.stat().st_mode & 0o777 == 0o600
    assert server_log.parent.stat().st_mode & 0o777 == 0o700

    shown = invoke("audit", "verify", str(log), "--key", KEY, "--node", "node-c")
    assert shown.exit_code == 0, shown.output
    assert "consent honoured" in shown.output

    # The same log, re-signed by the coordinator with node-c in round 1: a finding.
    def put_c_back(rec: dict[str, Any]) -> None:
        if rec["kind"] == "round_committed" and rec["body"]["round"] == 1:
            rec["body"]["included"] = ["node-a", "node-b", "node-c"]

    resigned(log, put_c_back)
    check = verify_log(log, key=KEY, model=model, node="node-c").consent
    assert check is not None and check.violations == [(7, 1)]
    shown = invoke("audit", "verify", str(log), "--key", KEY, "--node", "node-c")
    assert shown.exit_code == 1
    assert "record 7: round 1 includes node-c" in shown.output


def test_the_log_goes_to_the_ai_provider_and_the_participants_only(
    coord: Harness, nodes: dict[str, Node], tmp_path: Path
) -> None:
    a, d = nodes["node-a"], nodes["node-d"]
    fetch(coord, tmp_path / "ai")  # the AI provider
    log = fetch(coord, tmp_path / "a", keys=a.keys, node=a.id)  # a participant
    assert [r["kind"] for r in records(log)][:5] == KINDS[:5]
    stranger = d.get(coord, f"/v1/jobs/{JOB}/audit")
    assert stranger.status_code == 403, stranger.text
    other_keys = coord.get(f"/v1/jobs/{JOB}/audit", keys=NodeKeys.from_seed(b"someone else"))
    assert other_keys.status_code == 403
    assert coord.http.get(f"/v1/jobs/{JOB}/audit").status_code == 401
    assert coord.get("/v1/jobs/nope/audit").status_code == 404
    with a.client(coord) as client:
        assert client.audit_log(JOB) == log.read_bytes()


# -- restart -------------------------------------------------------------------------------


def _service(url: str, audit: Path) -> CoordinatorService:
    return CoordinatorService(Store(url), COORDINATOR_KEYS, audit_dir=audit)


def _wait(what: str, check: Any, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, what
        time.sleep(0.01)


def test_a_restart_loses_and_repeats_no_record(store_url: str, tmp_path: Path) -> None:
    """Closed mid-job with its round-0 records lost and a torn line left (a crash between
    the commit and the records), the service resumes the log: caught up, no duplicates."""
    audit = tmp_path / "audit"
    service = _service(store_url, audit)
    nodes = [Node.make(name) for name in ("node-a", "node-b", "node-c")]
    doc, weights = tiny_job()
    try:
        for node in nodes:
            service.register(registration(node.keys, node.id).to_json())
        service.store.put_artefact(weights, WEIGHTS_MEDIA_TYPE)
        service.submit(doc.to_json())
        for node in nodes:
            body = consent_body(receipt(node.keys, node.id, doc), node.keys, doc)
            service.consent(JOB, body["receipt"], body["attestation"])
        for node in nodes:
            service.post_mail(node.update(COORDINATOR_KEYS.public, 0))
        _wait("round 0 closed", lambda: service.store.get_job(JOB).current_round == 1)
        _wait("round 0 logged", lambda: b"round_committed" in (audit / f"{JOB}.jsonl").read_bytes())
    finally:
        service.close()
        service.store.close()
    path = audit / f"{JOB}.jsonl"
    kept = path.read_bytes().split(b"\n")[:-2]  # round 0's record lost ...
    path.write_bytes(b"".join(line + b"\n" for line in kept) + b'{"seq": 5, "pr')  # ... torn

    service = _service(store_url, audit)
    try:
        service.resume()
        rows = records(path)
        assert [r["kind"] for r in rows] == [*KINDS[:5], "round_committed"]  # caught up
        for node in nodes:
            service.post_mail(node.update(COORDINATOR_KEYS.public, 1))
        _wait("finished", lambda: service.store.get_job(JOB).state == "finished")
        _wait("logged", lambda: service.audits.ended(JOB))
    finally:
        service.close()
        service.store.close()
    model = tmp_path / "model.safetensors"
    with Store(store_url) as store:
        final_model(store, JOB, model)
    done = verify_log(path, key=KEY, model=model)  # seq without gaps, the chain whole
    assert done.rounds == 2
    rows = records(path)
    assert [r["seq"] for r in rows] == list(range(len(rows)))
    keys = [record_key(r["kind"], r["body"]) for r in rows]
    assert len(keys) == len(set(keys)), keys
    assert [r["kind"] for r in rows] == [
        *KINDS[:5],
        "round_committed",
        "round_committed",
        "model_final",
    ]


# -- resuming a log ------------------------------------------------------------------------


def _log(path: Path, n: int = 3) -> bytes:
    writer = AuditWriter(path, COORDINATOR_KEYS, clock=lambda: 1.7e9)
    writer.job_submitted("job", "ab" * 32, "job-1")
    for i in range(n - 1):
        writer.consent_granted(f"node-{i}", "cd" * 32)
    writer.close()
    return path.read_bytes()


def test_a_torn_last_line_is_dropped_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "job.jsonl"
    whole = _log(path)
    path.write_bytes(whole + b'{"body":{"node":"no')
    writer = AuditWriter.resume(path, COORDINATOR_KEYS)
    assert writer.seq == 3
    assert path.read_bytes() == whole
    assert writer.append("consent_granted", {"node": "node-0", "receipt": "cd" * 32}) is None
    writer.consent_granted("node-9", "ef" * 32)
    writer.close()
    rows = read_log(path.read_bytes(), signer=KEY)
    assert [r.seq for r in rows] == [0, 1, 2, 3]
    assert rows[3].body["node"] == "node-9"
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_log_broken_in_its_middle_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "job.jsonl"
    lines = _log(path).split(b"\n")
    lines[1] = lines[1].replace(b"node-0", b"node-X")
    broken = b"\n".join(lines)
    path.write_bytes(broken)
    with pytest.raises(BrokenLog, match="record 1: bad signature"):
        AuditWriter.resume(path, COORDINATOR_KEYS)
    assert path.read_bytes() == broken
    _log(tmp_path / "other.jsonl")  # whole, but signed by other keys than the resuming ones
    with pytest.raises(BrokenLog, match="record 0: signed by"):
        AuditWriter.resume(tmp_path / "other.jsonl", NodeKeys.from_seed(b"x" * 32))


def test_a_running_job_whose_log_is_broken_fails_and_its_log_is_kept(
    coord: Harness, nodes: dict[str, Node]
) -> None:
    path = coord.db.parent / "audit" / f"{JOB}.jsonl"
    coord.stop()
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"consent_granted", b"consent_revoked")
    path.write_bytes(b"\n".join(lines))
    broken = path.read_bytes()
    coord.start()  # resumes the job: its log refused, the job failed saying why
    status = coord.status()
    assert status["state"] == "failed"
    assert "audit log" in status["error"] and "record 2" in status["error"]
    assert path.read_bytes() == broken

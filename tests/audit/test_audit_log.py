"""The audit log: written, verified, and every kind of tampering named by its record."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.audit import AuditWriter, BrokenLog, verify_log
from tessera.audit.record import AuditRecord
from tessera.crypto.auditsig import sign_audit_record
from tessera.crypto.keys import NodeKeys
from tessera.jobs.records import RoundRecord

KEYS = NodeKeys.from_seed(b"audit-log-test-coordinator-keys!")
OTHER = NodeKeys.from_seed(b"audit-log-test-someone-else-keys")
KEY = KEYS.public.signing.hex()
NODES = [f"node-{i:06d}" for i in range(4)]


def _round(n: int, included: list[str], **kw: object) -> RoundRecord:
    return RoundRecord(
        round=n,
        selected=len(NODES),
        participants=len(included),
        skipped=False,
        included=tuple(included),
        **kw,  # type: ignore[arg-type]
    )


def write_log(
    out: Path, *, revoke_at: int | None = None, include_after: bool = False, rounds: int = 4
) -> Path:
    """A job of ``rounds`` rounds over NODES; node-000001 revokes before round ``revoke_at``."""
    out.mkdir(parents=True, exist_ok=True)
    audit = AuditWriter(out / "audit.jsonl", KEYS, clock=lambda: 1.7e9)
    audit.job_submitted("test", "ab" * 32, "job-1")
    audit.participants(NODES)
    for node in NODES:
        audit.consent_granted(node)
    weights = np.zeros(8, np.float32)
    revoked = False
    for n in range(1, rounds + 1):
        if revoke_at == n:
            audit.consent_revoked("node-000001")
            revoked = True
        included = [x for x in NODES if not (revoked and x == "node-000001" and not include_after)]
        extra = {"excluded": ("node-000003: flagged",)} if n == 2 else {}
        if n == 3:
            extra = {"blamed": ("agg-1: sum failed its audit",)}
        weights = weights + n
        audit.round_closed(_round(n, included, **extra), weights)  # type: ignore[arg-type]
    (out / "model.safetensors").write_bytes(b"model bytes " + weights.tobytes())
    audit.model_final(out / "model.safetensors", rounds=rounds, status="finished")
    return out / "audit.jsonl"


def signed(keys: NodeKeys, **fields: object) -> bytes:
    """A record of ``fields`` (all but the signature), signed by ``keys``: its line."""
    return AuditRecord(**fields, signature=sign_audit_record(keys, fields).hex()).to_line()  # type: ignore[arg-type]


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def put(path: Path, rows: list[bytes]) -> None:
    path.write_bytes(b"".join(r + b"\n" for r in rows))


def broken(path: Path, **kw: object) -> BrokenLog:
    with pytest.raises(BrokenLog) as caught:
        verify_log(path, **{"key": KEY, **kw})  # type: ignore[arg-type]
    return caught.value


def test_a_written_log_verifies(tmp_path: Path) -> None:
    path = write_log(tmp_path)
    done = verify_log(path, key=KEY)
    kinds = [json.loads(x)["kind"] for x in lines(path)]
    assert kinds[:2] == ["job_submitted", "participants"] and kinds[-1] == "model_final"
    assert {"audit", "exclusion", "round_committed"} <= set(kinds)
    assert done.rounds == 4 and done.trusted == "--key" and done.signer == KEY
    assert done.records == len(kinds) and done.job == "test"
    assert verify_log(path, trust_first=True).trusted == "first record"
    first = json.loads(lines(path)[0])
    assert first["seq"] == 0 and first["prev"] == "0" * 64


def test_a_round_records_who_and_the_aggregate(tmp_path: Path) -> None:
    path = write_log(tmp_path, rounds=1)
    (rec,) = [json.loads(x) for x in lines(path) if b"round_committed" in x]
    body = rec["body"]
    assert body["included"] == NODES and body["round"] == 1 and not body["skipped"]
    expected = hashlib.sha256(np.ones(8, "<f4").tobytes()).hexdigest()
    assert body["aggregate"] == expected


def test_a_changed_body_names_its_record(tmp_path: Path) -> None:
    path = write_log(tmp_path)
    rows = lines(path)
    rows[3] = rows[3].replace(b'"node":"node-000001"', b'"node":"node-000002"')
    put(path, rows)
    err = broken(path)
    assert err.seq == 3 and "signature" in str(err) and str(err).startswith("record 3:")


def test_swapped_records_are_named(tmp_path: Path) -> None:
    path = write_log(tmp_path)
    rows = lines(path)
    rows[6], rows[7] = rows[7], rows[6]
    put(path, rows)
    err = broken(path)
    assert err.seq == 6 and "seq" in err.reason


def test_a_removed_record_is_named(tmp_path: Path) -> None:
    path = write_log(tmp_path)
    rows = lines(path)
    del rows[4]
    put(path, rows)
    assert broken(path).seq == 4


def test_a_truncated_log_names_the_missing_final_record(tmp_path: Path) -> None:
    path = write_log(tmp_path)
    rows = lines(path)
    put(path, rows[:-2])
    err = broken(path)
    assert err.seq == len(rows) - 2 and "model_final" in err.reason
    path.write_bytes(b"".join(r + b"\n" for r in rows)[:-30])  # cut inside the last line
    assert broken(path).seq == len(rows) - 1


def test_a_record_resigned_by_someone_else_is_named(tmp_path: Path) -> None:
    path = write_log(tmp_path)
    rows = lines(path)
    rec = AuditRecord.parse(3, rows[3])
    rows[3] = signed(OTHER, **{**rec.unsigned(), "signer": OTHER.public.signing.hex()})
    put(path, rows)
    err = broken(path)
    assert err.seq == 3 and "signed by" in err.reason


def test_a_whole_log_signed_by_someone_else(tmp_path: Path) -> None:
    """With --key, record 0 is named; trusting the first record, it passes: integrity only."""
    out = tmp_path / "forged"
    out.mkdir()
    audit = AuditWriter(out / "audit.jsonl", OTHER)
    audit.job_submitted("test", "cd" * 32)
    (out / "model.safetensors").write_bytes(b"m")
    audit.model_final(out / "model.safetensors", rounds=0, status="finished")
    assert broken(out / "audit.jsonl").seq == 0
    assert verify_log(out / "audit.jsonl", trust_first=True).signer == OTHER.public.signing.hex()


def test_a_wrong_model_file_is_named(tmp_path: Path) -> None:
    path = write_log(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"another model")
    err = broken(path)
    assert err.seq == len(lines(path)) - 1 and "hashes to" in err.reason
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"x")
    assert "hashes to" in broken(path, model=other).reason


def test_a_record_after_the_final_one_is_named(tmp_path: Path) -> None:
    path = write_log(tmp_path)
    rows = lines(path)
    put(path, [*rows, rows[0]])
    assert broken(path).seq == len(rows)


def test_an_unknown_kind_or_missing_field_is_named(tmp_path: Path) -> None:
    out = tmp_path / "odd"
    audit = AuditWriter(out / "audit.jsonl", KEYS)
    audit.job_submitted("test", "ab" * 32)
    with pytest.raises(BrokenLog):  # the writer refuses it too
        audit.append("round_committed", {"round": 1})
    audit.close()
    rows = lines(out / "audit.jsonl")
    rec = AuditRecord.parse(0, rows[0])
    prev = hashlib.sha256(rows[0]).hexdigest()
    odd = signed(KEYS, **{**rec.unsigned(), "seq": 1, "prev": prev, "kind": "x"})
    put(out / "audit.jsonl", [rows[0], odd])
    err = broken(out / "audit.jsonl")
    assert err.seq == 1 and "unknown kind" in err.reason


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_flipped_byte_is_caught_at_its_record_or_the_next(
    tmp_path: Path, data: st.DataObject
) -> None:
    path = tmp_path / "audit.jsonl"
    if not path.exists():
        write_log(tmp_path)
    clean = lines(path)
    rows = list(clean)
    n = data.draw(st.integers(0, len(rows) - 1), label="line")
    at = data.draw(st.integers(0, len(rows[n]) - 1), label="byte")
    flip = data.draw(st.integers(1, 255), label="xor")
    row = bytearray(rows[n])
    row[at] ^= flip
    rows[n] = bytes(row)
    put(path, rows)
    try:
        with pytest.raises(BrokenLog) as caught:
            verify_log(path, key=KEY)
        assert caught.value.seq in (n, n + 1), (n, str(caught.value))
    finally:
        put(path, clean)


def test_consent_honoured_after_revocation(tmp_path: Path) -> None:
    path = write_log(tmp_path, revoke_at=3)
    done = verify_log(path, key=KEY, node="node-000001")
    check = done.consent
    assert check is not None and check.honoured and check.revoked_at is not None
    assert check.rounds_after == [3, 4] and check.included_in == [1, 2]


def test_consent_not_honoured_is_found(tmp_path: Path) -> None:
    path = write_log(tmp_path, revoke_at=3, include_after=True)
    check = verify_log(path, key=KEY, node="node-000001").consent
    assert check is not None and not check.honoured
    assert [r for _, r in check.violations] == [3, 4]


def test_a_node_that_never_revoked(tmp_path: Path) -> None:
    check = verify_log(write_log(tmp_path), key=KEY, node="node-000002").consent
    assert check is not None and check.revoked_at is None and check.included_in == [1, 2, 3, 4]


def test_a_deployment_fetches_the_coordinators_log(tmp_path: Path) -> None:
    """``tessera up``'s DIR/audit.jsonl (``deploy.up.UpAudit``): the coordinator's own log,
    fetched after each round and once it ends, over a stand-in deployment; the final
    record hashes the flat weights, which ``verify_log`` rebuilds from the safetensors."""
    from contextlib import contextmanager
    from types import SimpleNamespace

    from tessera.deploy.up import UpAudit
    from tessera.storage.keyfile import save_keys
    from tessera.weights import Layout, save_file

    (tmp_path / "keys").mkdir()
    save_keys(KEYS, tmp_path / "keys" / "coordinator.key", None, warn_clear=False)
    served = tmp_path / "coordinator-job-7.jsonl"  # what the coordinator writes
    coordinator = AuditWriter(served, KEYS)
    coordinator.job_submitted("up-job", "ab" * 32, "job-7")
    asked: list[str] = []

    @contextmanager
    def client() -> Iterator[SimpleNamespace]:
        yield SimpleNamespace(audit_log=lambda job_id: asked.append(job_id) or served.read_bytes())

    dep = SimpleNamespace(out=tmp_path, passphrase=None, client=client)
    out = tmp_path / "out"
    out.mkdir()
    audit = UpAudit(dep, out, wait=5.0)  # type: ignore[arg-type]
    seen: list[object] = []
    audit.started(seen.append)("job-7")
    weights = np.arange(8, dtype=np.float32)
    coordinator.round_closed(_round(1, NODES), weights)
    audit.round(lambda rec, w: seen.append(rec.round))(_round(1, NODES), weights)
    assert lines(out / "audit.jsonl") == lines(served)  # as far as it went
    lay = Layout(("w", "b"), ((2, 3), (2,)))  # the model's order; the file sorts its names
    save_file(out / "model.safetensors", lay.unflatten(weights))
    coordinator.model_weights(weights, tensors=lay.names, rounds=1, status="finished")
    assert audit.finish({"m": 1}, rounds=1) == {"m": 1}
    assert seen == ["job-7", 1] and set(asked) == {"job-7"}
    assert (out / "audit.key.pub").read_text().strip() == KEY
    done = verify_log(out / "audit.jsonl", key=KEY)
    assert done.rounds == 1 and done.job == "up-job" and done.status == "finished"
    save_file(out / "model.safetensors", lay.unflatten(weights + 1))
    with pytest.raises(BrokenLog, match="record 2: model_final says"):
        verify_log(out / "audit.jsonl", key=KEY)


def test_a_revocation_holds_from_the_round_its_record_names(tmp_path: Path) -> None:
    """The coordinator's revocation says ``from_round``: the round open when it came may
    still take the node's update, every later one must not."""
    path = tmp_path / "audit.jsonl"
    audit = AuditWriter(path, KEYS)
    audit.job_submitted("test", "ab" * 32, "job-1")
    audit.append("consent_revoked", {"node": "node-000001", "receipt": "cd" * 32, "from_round": 2})
    for n, included in ((1, NODES), (2, NODES[:1]), (3, NODES)):
        audit.round_closed(_round(n, list(included)), np.zeros(8, np.float32))
    audit.model_weights(None, tensors=[], rounds=3, status="failed", error="stopped")
    done = verify_log(path, key=KEY, node="node-000001")
    check = done.consent
    assert done.model == "" and done.status == "failed"  # no model: nothing to match
    assert check is not None and check.from_round == 2
    assert check.rounds_after == [2, 3] and check.violations == [(4, 3)]

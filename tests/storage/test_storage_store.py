"""Every Store method, on SQLite and PostgreSQL: results, idempotency and typed errors."""

from __future__ import annotations

import hashlib
import math
import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

import tessera.storage
from tessera.errors import TesseraError
from tessera.jobs.records import RoundRecord
from tessera.storage import (
    Conflict,
    ConsentRecord,
    EventRecord,
    MailItem,
    NotFound,
    Replayed,
    Store,
    StoreError,
)
from tessera.storage import models as m


def closed(round: int, at: float, weights: str, **more: Any) -> RoundRecord:
    """A stored round record: one contributor, the new model's artefact ``weights``."""
    return RoundRecord(
        round=round,
        selected=1,
        participants=1,
        skipped=False,
        closed_at=at,
        weights=weights,
        **more,
    )


def mail(
    n: int, *, recipient: str = "node-b", sender: str = "node-a", size: int = 4
) -> dict[str, Any]:
    return {
        "job_id": "job-1",
        "recipient": recipient,
        "sender": sender,
        "round": n,
        "kind": 7,
        "nonce": n.to_bytes(8, "big"),
        "data": bytes([n % 256]) * size,
    }


def test_exports_are_the_documented_api() -> None:
    assert sorted(tessera.storage.__all__) == sorted(
        [
            "Store",
            "StoreError",
            "Conflict",
            "NotFound",
            "OverQuota",
            "Replayed",
            "Unavailable",
            "JobRecord",
            "NodeRecord",
            "ConsentRecord",
            "MailItem",
            "EventRecord",
        ]
    )
    for name in ("Conflict", "NotFound", "OverQuota", "Replayed", "Unavailable"):
        assert issubclass(getattr(tessera.storage, name), StoreError)
    assert issubclass(StoreError, TesseraError)


# -- artefacts ------------------------------------------------------------------


def test_artefact_roundtrip_is_content_addressed(store: Store) -> None:
    data = b"\x00weights\xff" * 1000
    digest = store.put_artefact(data, "application/vnd.safetensors")
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.put_artefact(data, "application/other") == digest  # idempotent
    assert store.has_artefact(digest)
    assert store.get_artefact(digest) == data
    assert store.put_artefact(b"", "text/plain") == hashlib.sha256(b"").hexdigest()
    assert store.get_artefact(hashlib.sha256(b"").hexdigest()) == b""


def test_missing_artefact(store: Store) -> None:
    assert not store.has_artefact("00" * 32)
    with pytest.raises(NotFound):
        store.get_artefact("00" * 32)


def test_corrupted_artefact_is_refused(store_url: str) -> None:
    with Store(store_url) as s:
        digest = s.put_artefact(b"good bytes", "text/plain")
        engine = s._engine  # tamper from below, as a disk or an operator could
        with engine.begin() as conn:
            conn.execute(text("UPDATE artefact SET data = :d"), {"d": b"evil bytes"})
        with pytest.raises(StoreError, match="corrupted"):
            s.get_artefact(digest)


def test_a_large_artefact_lies_in_a_file_and_streams_out(store_url: str, tmp_path: Path) -> None:
    """With a blob folder, an artefact over ``INLINE_ARTEFACT_BYTES`` (a model's weights)
    is a file named by its SHA-256 (0600), its row holds no bytes, and it reads back
    whole or a chunk at a time; a small one stays in its row. A file changed on disk
    is refused."""
    from tessera.storage.blobs import BlobStore
    from tessera.storage.store import INLINE_ARTEFACT_BYTES

    folder = tmp_path / "mail"
    large = np.random.default_rng(0).bytes(INLINE_ARTEFACT_BYTES * 3 + 5)
    with Store(store_url, blobs=BlobStore(folder)) as s:
        digest = s.put_artefact(large, "application/vnd.safetensors")
        assert s.put_artefact(large, "application/vnd.safetensors") == digest  # idempotent
        path = folder / "artefacts" / digest
        assert path.read_bytes() == large and path.stat().st_mode & 0o077 == 0
        with s._engine.begin() as conn:
            row = conn.execute(text("SELECT data, blob FROM artefact")).one()
        assert bytes(row.data) == b"" and row.blob
        assert s.get_artefact(digest) == large
        size, chunks = s.artefact_chunks(digest)
        pieces = list(chunks)
        assert size == len(large) and b"".join(pieces) == large and len(pieces) == 4
        small = s.put_artefact(b"small", "text/plain")
        assert not (folder / "artefacts" / small).exists()
        assert s.artefact_chunks(small)[0] == 5 and s.get_artefact(small) == b"small"
        path.write_bytes(large[:-1] + b"!")  # tamper from below
        with pytest.raises(StoreError, match="does not match its name"):
            s.get_artefact(digest)
    with Store(store_url) as s, pytest.raises(StoreError, match="has no folder"):
        s.get_artefact(digest)  # reopened without its folder: said, not guessed


# -- nodes ----------------------------------------------------------------------


def test_nodes(store: Store) -> None:
    store.register_node("node-b", b"keys-b", None, {"addr": "b"})
    store.register_node("node-a", b"keys-a", "school", {"addr": "a", "n": [1, 2.5]})
    store.register_node("node-a", b"keys-a", "other", {"addr": "changed"})  # idempotent
    a = store.get_node("node-a")
    assert (a.node_id, a.public_keys, a.organisation) == ("node-a", b"keys-a", "school")
    assert a.document == {"addr": "a", "n": [1, 2.5]}
    assert isinstance(a.registered_at, float)
    assert [n.node_id for n in store.list_nodes()] == ["node-a", "node-b"]
    assert store.get_node("node-b").organisation is None
    with pytest.raises(Conflict):
        store.register_node("node-a", b"other-keys", "school", {})
    assert store.get_node("node-a").public_keys == b"keys-a"
    with pytest.raises(NotFound):
        store.get_node("node-z")


# -- jobs -----------------------------------------------------------------------


def test_jobs(store: Store) -> None:
    assert store.list_jobs() == []
    store.add_job("job-1", "digest-1", {"rounds": 3}, 2)
    store.add_job("job-1", "digest-1", {"rounds": 3}, 2)  # idempotent
    with pytest.raises(Conflict):
        store.add_job("job-1", "digest-2", {"rounds": 3}, 2)
    job = store.get_job("job-1")
    assert (job.job_id, job.digest, job.document, job.min_consents) == (
        "job-1",
        "digest-1",
        {"rounds": 3},
        2,
    )
    assert job.state == "waiting"
    assert job.participants is None
    assert (job.started_at, job.finished_at, job.final_weights, job.error) == (None,) * 4
    assert job.current_round is None
    store.add_job("job-2", "digest-2", {}, 1)
    assert [j.job_id for j in store.list_jobs()] == ["job-1", "job-2"]
    with pytest.raises(NotFound):
        store.get_job("job-3")


def test_update_job_sets_only_given_fields(store: Store) -> None:
    store.add_job("job-1", "d", {}, 1)
    store.update_job("job-1", state="running", participants=["n1", "n2"], started_at=10.5)
    store.update_job("job-1", current_round=0)
    store.update_job("job-1")  # nothing to change, still checks the job exists
    job = store.get_job("job-1")
    assert (job.state, job.participants, job.started_at, job.current_round) == (
        "running",
        ["n1", "n2"],
        10.5,
        0,
    )
    store.update_job("job-1", state="failed", finished_at=11.0, error="boom", final_weights="ab")
    job = store.get_job("job-1")
    assert (job.state, job.finished_at, job.error, job.final_weights) == (
        "failed",
        11.0,
        "boom",
        "ab",
    )
    assert job.participants == ["n1", "n2"]
    with pytest.raises(NotFound):
        store.update_job("job-2", state="running")
    with pytest.raises(NotFound):
        store.update_job("job-2")


def test_injected_clock_stamps_records(store_url: str) -> None:
    with Store(store_url, clock=lambda: 1234.5) as s:
        s.add_job("job-1", "d", {}, 1)
        s.register_node("n", b"k", None, {})
        assert s.get_job("job-1").created_at == 1234.5
        assert s.get_node("n").registered_at == 1234.5


# -- consents -------------------------------------------------------------------


def test_consents_add_revoke_and_order(store: Store) -> None:
    store.add_job("job-1", "d", {}, 1)
    store.add_consent("job-1", "node-b", "c1", document={"grant": 1}, expires_at=100.0)
    store.add_consent("job-1", "node-a", "c2", document={"grant": 2}, expires_at=200.0)
    # the first again: idempotent
    store.add_consent(
        "job-1", "node-b", "c1", document={"grant": 1}, expires_at=100.0
    )  # idempotent
    got = store.consents("job-1")
    assert [(c.node_id, c.digest, c.document) for c in got] == [
        ("node-b", "c1", {"grant": 1}),
        ("node-a", "c2", {"grant": 2}),
    ]
    assert all(c.revoked_at is None and c.revocation is None for c in got)
    store.revoke_consent("job-1", "node-b", {"revoke": True}, revoked_at=50.0)
    store.revoke_consent("job-1", "node-b", {"revoke": "again"}, revoked_at=60.0)  # no-op
    b, a = store.consents("job-1")
    assert (b.revoked_at, b.revocation) == (50.0, {"revoke": True})
    assert (a.revoked_at, a.revocation) == (None, None)
    assert isinstance(b, ConsentRecord) and b.expires_at == 100.0 and b.added_at > 0
    # a fresh grant after a revocation is a new, unrevoked receipt
    store.add_consent("job-1", "node-b", "c3", document={"grant": 3}, expires_at=300.0)
    assert store.consents("job-1")[-1].revoked_at is None
    with pytest.raises(NotFound):
        store.revoke_consent("job-1", "node-z", {}, revoked_at=1.0)
    with pytest.raises(NotFound):
        store.add_consent("job-9", "node-a", "c", document={}, expires_at=1.0)
    assert store.consents("job-9") == []


# -- mailbox --------------------------------------------------------------------


def test_mailbox_post_read_and_replay(store: Store) -> None:
    assert store.last_message_id() == 0
    assert store.messages_for("node-b", 0) == []
    ids = [store.post_message(**mail(n)) for n in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert store.last_message_id() == ids[-1]
    other = store.post_message(**mail(99, recipient="node-c"))
    items = store.messages_for("node-b", 0)
    assert [i.id for i in items] == ids
    assert items[0] == MailItem(
        id=ids[0],
        job_id="job-1",
        recipient="node-b",
        sender="node-a",
        round=0,
        kind=7,
        data=b"\0" * 4,
    )
    assert [i.id for i in store.messages_for("node-b", ids[2])] == ids[3:]
    assert [i.id for i in store.messages_for("node-b", 0, limit=2)] == ids[:2]
    assert store.get_message(other).recipient == "node-c"
    with pytest.raises(Replayed):
        store.post_message(**mail(3))
    with pytest.raises(Replayed):
        store.post_message(**{**mail(3), "recipient": "node-x", "data": b"different"})
    # the same nonce from another sender is a different message
    store.post_message(**mail(3, sender="node-z"))
    with pytest.raises(NotFound):
        store.get_message(10**9)


def test_round_traffic_counts_and_sums_bytes_per_kind(store: Store) -> None:
    assert store.round_traffic("job-1", 0) == {}

    def post(n: int, *, kind: int, size: int, round: int = 2, job_id: str = "job-1") -> None:
        store.post_message(**{**mail(n, size=size), "kind": kind, "round": round, "job_id": job_id})

    post(1, kind=20, size=100)
    post(2, kind=20, size=150)
    post(3, kind=1, size=1000)
    post(4, kind=22, size=0)
    post(5, kind=20, size=7, round=3)  # another round
    post(6, kind=20, size=9, job_id="job-2")  # another job
    assert store.round_traffic("job-1", 2) == {20: (2, 250), 1: (1, 1000), 22: (1, 0)}
    assert store.round_traffic("job-1", 3) == {20: (1, 7)}
    assert store.round_traffic("job-2", 2) == {20: (1, 9)}


def test_messages_for_respects_max_bytes(store: Store) -> None:
    ids = [store.post_message(**mail(n, size=100)) for n in range(5)]
    assert [i.id for i in store.messages_for("node-b", 0, max_bytes=250)] == ids[:2]
    assert [i.id for i in store.messages_for("node-b", 0, max_bytes=300)] == ids[:3]
    # one message larger than the budget still comes, alone
    assert [i.id for i in store.messages_for("node-b", 0, max_bytes=10)] == ids[:1]
    with pytest.raises(ValueError, match="positive"):
        store.messages_for("node-b", 0, limit=0)


# -- commit_step ----------------------------------------------------------------


def test_commit_step_writes_everything(store: Store) -> None:
    store.add_job("job-1", "d", {}, 1)
    weights = b"round-0 weights"
    digest = hashlib.sha256(weights).hexdigest()
    ids = store.commit_step(
        EventRecord("job-1", 0, "message", 5.0, mail_id=None, node="node-a"),
        outgoing=[mail(0), mail(1, recipient="node-c")],
        rounds=[
            RoundRecord(
                round=0,
                selected=1,
                participants=1,
                skipped=False,
                closed_at=5.0,
                train_loss=0.5,
                weights=digest,
            )
        ],
        artefacts=[(weights, "application/octet-stream")],
        job_update={"state": "running", "current_round": 1},
    )
    assert len(ids) == 2 and ids[0] < ids[1]
    assert store.events("job-1") == [
        EventRecord("job-1", 0, "message", 5.0, mail_id=None, timer=None, node="node-a")
    ]
    assert store.rounds("job-1") == [
        RoundRecord(
            round=0,
            selected=1,
            participants=1,
            skipped=False,
            closed_at=5.0,
            train_loss=0.5,
            weights=digest,
        )
    ]
    assert store.get_artefact(digest) == weights
    assert store.get_message(ids[1]).recipient == "node-c"
    job = store.get_job("job-1")
    assert (job.state, job.current_round) == ("running", 1)
    # an event without effects; a round record replaced; order of events by seq
    assert store.commit_step(EventRecord("job-1", 2, "timer", 7.0, timer="deadline")) == []
    store.commit_step(
        EventRecord("job-1", 1, "message", 6.0, mail_id=ids[0]),
        rounds=[
            RoundRecord(
                round=0,
                selected=1,
                participants=1,
                skipped=False,
                closed_at=6.0,
                train_loss=0.25,
                weights=digest,
            )
        ],
    )
    assert [e.seq for e in store.events("job-1")] == [0, 1, 2]
    assert store.events("job-1")[1].mail_id == ids[0]
    assert store.events("job-1")[2].timer == "deadline"
    assert store.rounds("job-1") == [
        RoundRecord(
            round=0,
            selected=1,
            participants=1,
            skipped=False,
            closed_at=6.0,
            train_loss=0.25,
            weights=digest,
        )
    ]
    assert store.events("job-2") == [] and store.rounds("job-2") == []


@pytest.mark.parametrize("traffic", [True, False], ids=["with-traffic", "before-traffic"])
def test_a_round_row_written_by_older_versions_still_loads(store: Store, traffic: bool) -> None:
    """Rows the coordinator stored before the record was typed: its untyped dict, as it was.

    Older still, before traffic was counted, the bytes were missing: they read as 0.
    """
    store.add_job("job-1", "d", {}, 1)
    digest = store.put_artefact(b"round-4 weights", "application/octet-stream")
    old = {  # the driver's _round_record (+ _with_traffic), verbatim from that version
        "round": 4,
        "selected": 3,
        "participants": 2,
        "included": ["node-a", "node-c"],
        "num_samples": 96,
        "train_loss": None,  # NaN was stored as null
        "skipped": False,
        "blamed": ["agg-1: partial sum does not match its commitment"],
        "closed_at": 12.5,
    }
    if traffic:
        old |= {"bytes_up": 4000, "bytes_down": 9000, "bytes_aggregation": 700}
    with store._engine.begin() as conn:  # as the old Store wrote it, column for column
        conn.execute(
            m.round_.insert().values(
                job_id="job-1", round=4, closed_at=12.5, record=old, weights=digest
            )
        )
    (record,) = store.rounds("job-1")
    assert (record.round, record.selected, record.participants, record.skipped) == (4, 3, 2, False)
    assert record.included == ("node-a", "node-c") and record.num_samples == 96
    assert record.blamed == ("agg-1: partial sum does not match its commitment",)
    assert (record.closed_at, record.weights) == (12.5, digest)
    assert math.isnan(record.train_loss) and math.isnan(record.value)  # value: the AI provider's
    bytes_ = (record.bytes_up, record.bytes_down, record.bytes_aggregation)
    assert bytes_ == ((4000, 9000, 700) if traffic else (0, 0, 0))


def test_a_damaged_round_row_is_refused_naming_the_field(store: Store) -> None:
    store.add_job("job-1", "d", {}, 1)
    digest = store.put_artefact(b"w", "application/octet-stream")
    row = {"round": 0, "selected": "three", "participants": 1, "skipped": False}
    with store._engine.begin() as conn:
        conn.execute(
            m.round_.insert().values(
                job_id="job-1", round=0, closed_at=1.0, record=row, weights=digest
            )
        )
    with pytest.raises(StoreError, match=r"round 0 of job .job-1. is corrupted.*selected"):
        store.rounds("job-1")


def snapshot(store: Store) -> tuple[object, ...]:
    return (
        store.events("job-1"),
        store.rounds("job-1"),
        store.get_job("job-1"),
        store.last_message_id(),
        store.messages_for("node-b", 0),
        store.has_artefact(hashlib.sha256(b"new artefact").hexdigest()),
    )


@pytest.mark.parametrize(
    "failure",
    [
        "duplicate seq",
        "nonce replayed from the mailbox",
        "nonce repeated in the step",
        "unknown weights",
        "unknown job_update key",
        "bad outgoing field",
    ],
)
def test_failed_commit_step_writes_nothing(store: Store, failure: str) -> None:
    store.add_job("job-1", "d", {}, 1)
    store.commit_step(EventRecord("job-1", 0, "start", 1.0), outgoing=[mail(0)])
    before = snapshot(store)
    seq, outgoing, rounds, job_update = 1, [mail(1), mail(2)], [], {"state": "running"}
    expected: type[Exception] = StoreError
    if failure == "duplicate seq":
        seq, expected = 0, Conflict
    elif failure == "nonce replayed from the mailbox":
        outgoing, expected = [mail(1), mail(0)], Replayed
    elif failure == "nonce repeated in the step":
        outgoing, expected = [mail(1), mail(1)], Replayed
    elif failure == "unknown weights":
        rounds, expected = (
            [
                RoundRecord(
                    round=0,
                    selected=1,
                    participants=1,
                    skipped=False,
                    closed_at=1.0,
                    weights="ab" * 32,
                )
            ],
            NotFound,
        )
    elif failure == "unknown job_update key":
        job_update, expected = {"state": "running", "colour": "red"}, TypeError
    else:
        outgoing, expected = [mail(1), {**mail(2), "priority": 1}], TypeError
    with pytest.raises(expected):
        store.commit_step(
            EventRecord("job-1", seq, "message", 2.0),
            outgoing=outgoing,
            rounds=rounds,
            artefacts=[(b"new artefact", "text/plain")],
            job_update=job_update,
        )
    assert snapshot(store) == before


def test_commit_step_for_unknown_job(store: Store) -> None:
    with pytest.raises(NotFound):
        store.commit_step(EventRecord("job-x", 0, "start", 1.0))


# -- lifecycle and URLs ---------------------------------------------------------


def test_closed_store_refuses_calls(store_url: str) -> None:
    s = Store(store_url)
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.last_message_id()


def test_unsupported_url() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        Store("mysql://localhost/db")


def test_sqlite_pragmas_and_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "store.db"
    with Store(f"sqlite:///{path}") as s:
        with s._engine.connect() as conn:
            pragmas = {
                p: conn.exec_driver_sql(f"PRAGMA {p}").scalar()
                for p in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
            }
        assert pragmas == {
            "journal_mode": "wal",
            "foreign_keys": 1,
            "busy_timeout": 30000,
            "synchronous": 2,
        }
    assert path.exists()


def test_in_memory_sqlite_is_shared_across_threads() -> None:
    with Store("sqlite://") as s:
        s.add_job("job-1", "d", {}, 1)
        errors: list[BaseException] = []

        def post(k: int) -> None:
            try:
                for n in range(20):
                    s.post_message(**mail(1000 * k + n))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=post, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(s.messages_for("node-b", 0)) == 80
        assert s.get_job("job-1").state == "waiting"


def test_reads_during_a_write_transaction_do_not_block(tmp_path: Path) -> None:
    """WAL: a reader proceeds while another connection holds the write lock."""
    path = tmp_path / "store.db"
    with Store(f"sqlite:///{path}") as s:
        s.post_message(**mail(0))
        writer = sqlite3.connect(path, isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("CREATE TABLE scratch (x)")
            assert len(s.messages_for("node-b", 0)) == 1
            writer.execute("ROLLBACK")
        finally:
            writer.close()

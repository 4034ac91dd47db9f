"""What must survive: a close and reopen, a SIGKILL mid-write, and concurrent threads."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

from sqlalchemy import create_engine, text

from tessera.jobs.records import RoundRecord
from tessera.storage import EventRecord, Store

# The child logs one step per line after its commit returns; each step posts
# three messages (rounds = seq), stores an artefact, closes a round every
# fifth step and moves the job's current_round.
CHILD = textwrap.dedent(
    """
    import sys
    from tessera.jobs.records import RoundRecord
    from tessera.storage import EventRecord, Store

    store = Store(sys.argv[1])
    store.add_job("job-1", "d", {}, 1)
    weights = store.put_artefact(b"w", "application/octet-stream")
    seq = 0
    while True:
        store.commit_step(
            EventRecord("job-1", seq, "tick", float(seq)),
            outgoing=[
                {"job_id": "job-1", "recipient": f"r{k}", "sender": "coordinator",
                 "round": seq, "kind": k, "nonce": f"{seq}:{k}".encode(),
                 "data": bytes(2000)}
                for k in range(3)
            ],
            rounds=[RoundRecord(round=seq, selected=seq, participants=1, skipped=False,
                                closed_at=float(seq), weights=weights)]
            if seq % 5 == 0 else [],
            artefacts=[(f"artefact {seq}".encode(), "text/plain")],
            job_update={"current_round": seq},
        )
        print(seq, flush=True)
        seq += 1
    """
)


def test_everything_survives_reopening(store_url: str) -> None:
    with Store(store_url) as s:
        digest = s.put_artefact(b"weights", "application/octet-stream")
        s.register_node("node-a", b"keys", "org", {"a": 1})
        s.add_job("job-1", "d", {"rounds": 2}, 1)
        s.add_consent("job-1", "node-a", "c1", document={"ok": True}, expires_at=9.0)
        s.revoke_consent("job-1", "node-a", {"no": True}, revoked_at=5.0)
        mail_id = s.post_message(
            job_id="job-1",
            recipient="node-a",
            sender="coord",
            round=0,
            kind=1,
            nonce=b"n",
            data=b"x",
        )
        s.commit_step(
            EventRecord("job-1", 0, "message", 1.0, mail_id=mail_id),
            rounds=[
                RoundRecord(
                    round=0,
                    selected=1,
                    participants=1,
                    skipped=False,
                    closed_at=1.0,
                    train_loss=1.0,
                    weights=digest,
                )
            ],
            job_update={"state": "running", "participants": ["node-a"]},
        )
        before = (
            s.get_node("node-a"),
            s.get_job("job-1"),
            s.consents("job-1"),
            s.messages_for("node-a", 0),
            s.events("job-1"),
            s.rounds("job-1"),
        )
    with Store(store_url) as s:
        after = (
            s.get_node("node-a"),
            s.get_job("job-1"),
            s.consents("job-1"),
            s.messages_for("node-a", 0),
            s.events("job-1"),
            s.rounds("job-1"),
        )
        assert after == before
        assert s.get_artefact(digest) == b"weights"
        assert s.last_message_id() == mail_id
        next_id = s.post_message(
            job_id="job-1",
            recipient="node-a",
            sender="coord",
            round=0,
            kind=1,
            nonce=b"m",
            data=b"",
        )
        assert next_id > mail_id


def test_a_database_an_older_version_made_gains_the_new_nullable_columns(
    store_url: str,
) -> None:
    """An older version's event table had no ``payload``: opening it adds the column,
    and the rows written before keep their values."""
    with Store(store_url) as s:
        s.add_job("job-1", "d", {"rounds": 2}, 1)
        s.commit_step(EventRecord("job-1", 0, "start", 1.0))
    engine = create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(text('ALTER TABLE "event" DROP COLUMN "payload"'))
    engine.dispose()
    with Store(store_url) as s:
        verdict = {"excluded": {"node-a": "harm"}, "weights": {}}
        s.commit_step(EventRecord("job-1", 1, "rate", 2.0, payload=verdict))
        events = s.events("job-1")
    assert [(e.kind, e.payload) for e in events] == [("start", None), ("rate", verdict)]


def test_sigkill_leaves_a_gap_free_log_with_all_effects(store_url: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, store_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    acknowledged = -1
    try:
        deadline = time.monotonic() + 15
        while acknowledged < 40 and time.monotonic() < deadline:
            line = child.stdout.readline()
            assert line, f"child died: {child.stderr.read() if child.stderr else ''}"
            acknowledged = int(line)
        time.sleep(0.01)  # let it get into the middle of further commits
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    assert acknowledged >= 40

    with Store(store_url) as s:
        seqs = [e.seq for e in s.events("job-1")]
        last = seqs[-1]
        assert seqs == list(range(last + 1)), "the log must be a gap-free prefix"
        assert last >= acknowledged, "an acknowledged step was lost"
        for k in range(3):
            items = s.messages_for(f"r{k}", 0, limit=10_000)
            assert [i.round for i in items] == list(range(last + 1))
            assert all(i.kind == k and i.data == bytes(2000) for i in items)
        assert [r.round for r in s.rounds("job-1")] == list(range(0, last + 1, 5))
        assert s.get_job("job-1").current_round == last
        for seq in (0, last):
            assert s.has_artefact(hashlib.sha256(f"artefact {seq}".encode()).hexdigest())
        assert not s.has_artefact(hashlib.sha256(f"artefact {last + 1}".encode()).hexdigest())


def test_concurrent_posters_and_a_reader(store_url: str) -> None:
    """A reader paging by id never skips a message that commits after a larger id."""
    writers, per_writer = 4, 40
    expected = {(f"w{w}", n) for w in range(writers) for n in range(per_writer)}
    errors: list[BaseException] = []
    with Store(store_url) as s:

        def post(w: int) -> None:
            try:
                for n in range(per_writer):
                    s.post_message(
                        job_id="job-1",
                        recipient="r",
                        sender=f"w{w}",
                        round=n,
                        kind=0,
                        nonce=n.to_bytes(4, "big"),
                        data=b"x" * 64,
                    )
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=post, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        seen: list[tuple[str, int]] = []
        ids: list[int] = []
        after = 0
        deadline = time.monotonic() + 15
        while len(seen) < len(expected) and time.monotonic() < deadline:
            page = s.messages_for("r", after, limit=7)
            for item in page:
                assert item.id > after
                after = item.id
                ids.append(item.id)
                seen.append((item.sender, item.round))
            if not page:
                time.sleep(0.001)  # poll like a client: a spinning reader hogs the GIL
        for t in threads:
            t.join()
        assert errors == []
        assert ids == sorted(set(ids))
        assert len(seen) == len(expected) and set(seen) == expected
        assert s.messages_for("r", after) == []

"""A coordinator killed mid-round at round 50 restarts from its snapshot, not from round 0.

The service runs in-process over a SQLite file (its job driver in its own
thread, as deployed); three nodes answer every round with updates that
depend on node and round. One run goes uninterrupted; in the other the
coordinator dies while round 50 is half consumed (every step it took was
committed, nothing else survives) and a new one resumes on the same
database. The final models must be the same bits, and the restart must have
replayed only the events since the last snapshot.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tessera.ai_provider.client import build_job
from tessera.coordinator.service import CoordinatorService
from tessera.crypto.documents import SignedDocument
from tessera.jobs.document import JobSpec
from tessera.runtime.transport.mail import WEIGHTS_MEDIA_TYPE, read_weights_artefact
from tessera.storage import Store

from .coordinator_kit import (
    AI,
    COORDINATOR_KEYS,
    CREATED_AT,
    PROVIDER,
    PURPOSE,
    Node,
    consent_body,
    job_id,
    preprocessing,
    receipt,
    registration,
    tiny_config,
)

ROUNDS = 60
KILL_AT = 50
NAME = "long"


@functools.cache
def long_job() -> tuple[SignedDocument, bytes]:
    cfg = tiny_config(NAME, rounds=ROUNDS)
    cfg = cfg.model_copy(update={"strategy": cfg.strategy.model_copy(update={"name": "fedadam"})})
    return build_job(
        cfg,
        AI,
        provider=PROVIDER,
        dataset="records",
        user_field="school",
        preprocessing=preprocessing(),
        min_consents=3,
        purpose=PURPOSE,
        created_at=CREATED_AT,
    )


JOB = job_id(long_job()[0])  # derived from the document


def wait(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.002)


class Coordinator:
    """The coordinator's service over one SQLite file, which can be killed and restarted."""

    def __init__(self, db: Path) -> None:
        self.url = f"sqlite:///{db}"
        self.store = Store(self.url)
        self.service = CoordinatorService(self.store, COORDINATOR_KEYS)

    def kill_and_restart(self) -> int:
        """Only what was committed survives; returns the events the new one replayed."""
        self.service.close()
        self.store.close()
        self.store = Store(self.url)
        self.service = CoordinatorService(self.store, COORDINATOR_KEYS)
        self.service.resume()
        return self.service.drivers[JOB].replayed

    def events(self) -> int:
        return len(self.store.events(JOB))

    def round(self) -> int | None:
        return self.store.get_job(JOB).current_round


def run(db: Path, *, kill_at: int | None) -> tuple[np.ndarray, int, int]:
    """The job's final weights, the events replayed on restart, and the log's length then."""
    coordinator = Coordinator(db)
    nodes = [Node.make(name) for name in ("node-a", "node-b", "node-c")]
    for node in nodes:
        coordinator.service.register(registration(node.keys, node.id).to_json())
    doc, weights = long_job()
    spec = JobSpec.from_document(doc)
    assert spec.job_id == JOB
    coordinator.store.put_artefact(weights, WEIGHTS_MEDIA_TYPE)
    coordinator.service.submit(doc.to_json())
    for node in nodes:
        body = consent_body(receipt(node.keys, node.id, doc), node.keys, doc)
        coordinator.service.consent(JOB, body["receipt"], body["attestation"])
    replayed = logged = -1
    try:
        for r in range(ROUNDS):
            wait(f"round {r} open", lambda r=r: coordinator.round() == r)
            for i, node in enumerate(nodes):
                value = 0.01 * (i + 1) * ((r % 5) - 2) + 0.001 * r
                mail = node.update(COORDINATOR_KEYS.public, r, job_id=JOB, value=value)
                # Counted before the mail is posted: the driver may log it at once.
                logged = coordinator.events() + 1 if r == kill_at and i == 0 else logged
                coordinator.service.post_mail(mail)
                if r == kill_at and i == 0:
                    wait("the update consumed", lambda n=logged: coordinator.events() == n)
                    replayed = coordinator.kill_and_restart()
        wait("the job finished", lambda: coordinator.store.get_job(JOB).state == "finished")
        sha = coordinator.store.get_job(JOB).final_weights
        assert sha is not None
        final = read_weights_artefact(coordinator.store.get_artefact(sha), sha, spec.n_weights)
    finally:
        coordinator.service.close()
        coordinator.store.close()
    return final, replayed, logged


@pytest.mark.xdist_group("restart")
def test_a_restart_at_round_50_replays_one_round_and_ends_with_the_same_model(
    tmp_path: Path,
) -> None:
    uninterrupted, _, _ = run(tmp_path / "a.db", kill_at=None)
    restarted, replayed, logged = run(tmp_path / "b.db", kill_at=KILL_AT)
    assert np.array_equal(restarted, uninterrupted)
    assert logged == 1 + 3 * KILL_AT + 1  # the start, three updates a round, one of round 50
    assert 1 <= replayed <= 2  # the event that closed round 49 is in the snapshot

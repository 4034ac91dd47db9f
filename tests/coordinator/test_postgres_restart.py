"""The coordinator's PostgreSQL server restarts (or crashes) under a running job.

A private server (``private_postgres``) holds the coordinator's store. With one
update of round 0 logged, the server is stopped, fast (sessions ended) or
immediate (a crash), and stays down past the round's deadline. Meanwhile a
request is answered 503 with Retry-After, not 500, and the job's driver,
whose timer fell due in the outage, must not lose it. Once the server is back,
the round closes on its deadline with the logged update, and the job runs
to its end over the same connections' replacements.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Literal

import pytest

from tessera.testing.postgres import PostgresCluster

from .coordinator_kit import Harness, Node, job_id, post_mail, tiny_job

NAMES = ("node-a", "node-b", "node-c")
ROUND_TIMEOUT = 4.0  # past the first update's commit, on a busy machine too


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_database_restart_is_a_503_and_loses_nothing(
    tmp_path: Path,
    private_postgres: PostgresCluster,
    caplog: pytest.LogCaptureFixture,
    mode: Literal["fast", "immediate"],
) -> None:
    caplog.set_level(logging.INFO, logger="tessera")
    doc, weights = tiny_job("pg-restart", round_timeout=ROUND_TIMEOUT)
    job = job_id(doc)
    coord = Harness(tmp_path / "coordinator.db", db_url=private_postgres.url)
    try:
        nodes = [Node.make(name) for name in NAMES]
        for node in nodes:
            coord.register(node.keys, node.id)
        coord.submit(doc, weights)
        for node in nodes:
            assert coord.consent(doc, node).status_code == 201
        opened = time.monotonic()  # the job starts, round 0 with it, at the last consent
        coordinator = coord.service.keys.public
        for node in nodes:
            [request] = node.train_requests(coord, job_id=job)
            assert request.round == 0
        assert post_mail(coord, nodes[0].update(coordinator, 0, job_id=job)).status_code == 202
        store = coord.service.store
        end = time.monotonic() + 5
        while not any(e.kind == "mail" for e in store.events(job)):  # the driver took it
            assert time.monotonic() < end, "the update was never logged"
            time.sleep(0.02)
        assert time.monotonic() - opened < ROUND_TIMEOUT, "too slow: the round closed already"
        committed = coord.snapshot()

        private_postgres.stop(mode)
        answer = post_mail(coord, nodes[1].update(coordinator, 0, job_id=job))
        assert answer.status_code == 503, answer.text
        assert "database is unavailable" in answer.json()["detail"]
        assert answer.headers["retry-after"] == "5"
        answer = coord.get(f"/v1/jobs/{job}")
        assert (answer.status_code, answer.headers.get("retry-after")) == (503, "5"), answer.text
        time.sleep(max(0.0, opened + ROUND_TIMEOUT + 2.0 - time.monotonic()))  # the timer fired
        private_postgres.start()

        # The round's deadline fell in the outage: the driver did not lose its timer.
        coord.wait_for("round 0 closed", lambda s: len(s["rounds"]) == 1, job_id=job, timeout=20)
        assert coord.status(job)["rounds"][0]["included"] == ["node-a"]
        after = coord.snapshot()
        assert after["nodes"] == committed["nodes"]
        assert after["jobs"][job]["consents"] == committed["jobs"][job]["consents"]
        for node in nodes:  # everyone is asked for round 1, and every answer is taken
            [request] = node.train_requests(coord, wait=5.0, job_id=job)
            assert request.round == 1
            assert post_mail(coord, node.update(coordinator, 1, job_id=job)).status_code == 202
        coord.wait_for("the job ended", lambda s: s["state"] == "finished", job_id=job, timeout=20)
        assert coord.status(job)["rounds"][1]["included"] == list(NAMES)
    finally:
        coord.stop()
    # The outage is logged once by the driver, not once a poll, and with no traceback.
    driver = [r for r in caplog.records if r.name == "tessera.coordinator"]
    assert not [r for r in driver if r.exc_info], [r.getMessage() for r in driver]
    assert len([r for r in driver if "database unavailable" in r.getMessage()]) == 1

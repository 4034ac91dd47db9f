"""A full disk on the coordinator: a clear 507 with Retry-After, nothing committed lost.

The coordinator's database (SQLite, with its WAL) and mail folder sit on a small
tmpfs the test mounts; a filler file takes the rest of it. A node's update is then
refused as 507 ("disk is full"), the store unchanged; once there is room again the
same update is taken and the job runs to its end. Needs root (to mount): CI runs as
root, so under CI=true a missing right fails instead of skipping.
"""

from __future__ import annotations

from pathlib import Path

from tests.full_disk import fill

from .coordinator_kit import JOB, Harness, Node, post_mail, tiny_job

NAMES = ("node-a", "node-b", "node-c")


def test_a_full_disk_is_a_507_that_loses_nothing(small_disk: Path) -> None:
    coord = Harness(small_disk / "coordinator.db")
    try:
        nodes = [Node.make(name) for name in NAMES]
        for node in nodes:
            coord.register(node.keys, node.id)
        doc, weights = tiny_job(min_consents=3)
        coord.submit(doc, weights)
        for node in nodes:
            assert coord.consent(doc, node).status_code == 201
        coordinator = coord.service.keys.public
        for node in nodes:
            [request] = node.train_requests(coord)
            assert request.round == 0

        filler = fill(small_disk)
        before = coord.snapshot()
        answer = post_mail(coord, nodes[0].update(coordinator, 0))
        assert answer.status_code == 507, answer.text
        assert "disk is full: nothing of this request was stored" in answer.json()["detail"]
        assert answer.headers["retry-after"] == "30"
        assert coord.snapshot() == before  # nothing half-written

        filler.unlink()  # room again: the sender's retry is taken
        for node in nodes:
            assert post_mail(coord, node.update(coordinator, 0)).status_code == 202
        coord.wait_for("round 0 closed", lambda s: len(s["rounds"]) == 1, job_id=JOB)
        assert coord.status(JOB)["rounds"][0]["included"] == list(NAMES)
    finally:
        coord.stop()

"""A full disk on a node: a clear error, nothing it kept lost or left half-written.

The node's state folder (its beacon secrets, consent receipts, mailbox cursor)
sits on a small tmpfs the test mounts (``small_disk``), against a real
coordinator; a filler file takes the rest of it. Every write must then fail
whole: the file as it was (or absent), no empty or torn file that a restart
would read as a secret or a cursor, and an error that says the disk is full.
The mailbox cursor is the one write the node goes on without (it only saves
re-reading mail after a restart).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.coordinator.coordinator_kit import Harness, tiny_job
from tests.full_disk import fill

from tessera.jobs.document import JobSpec
from tessera.node.agent import AgentConfig, NodeAgent
from tessera.storage.errors import DiskFull


@pytest.fixture
def agent(small_disk: Path, tmp_path: Path) -> Iterator[NodeAgent]:
    harness = Harness(tmp_path / "coordinator.db")  # its database is not on the small disk
    node = NodeAgent(
        AgentConfig(
            node_id="node-1",
            coordinator=harness.url,
            insecure_loopback=True,
            keys_path=tmp_path / "node.key",
            state_dir=small_disk / "state",
        )
    )
    try:
        yield node
    finally:
        node.client.close()
        harness.stop()


def left_over(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and p.suffix == ".tmp")


def test_a_beacon_secret_is_written_whole_or_not_at_all(agent: NodeAgent, small_disk: Path) -> None:
    doc, _ = tiny_job()
    spec = JobSpec.from_document(doc)
    filler = fill(small_disk)
    with pytest.raises(DiskFull, match=r"disk .* is full"):
        agent._beacon_secret(spec)
    secrets = agent.cfg.state_dir / "beacon"
    assert not any(secrets.glob("*.secret")), "an empty secret would be read back as b''"
    assert left_over(agent.cfg.state_dir) == []
    filler.unlink()
    secret = agent._beacon_secret(spec)
    assert len(secret) == 32 and agent._beacon_secret(spec) == secret  # drawn once, kept


def test_a_receipt_or_cursor_write_on_a_full_disk_keeps_the_old_one(
    agent: NodeAgent, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent.cursor = 7
    agent._save_cursor()
    cursor = agent.cfg.state_dir / "cursor"
    filler = fill(small_disk)
    agent.cursor = 9
    with caplog.at_level(logging.ERROR, logger="tessera.node"):
        agent._save_cursor()  # the node goes on: the cursor only saves re-reading mail
        agent._save_cursor()
    assert cursor.read_text() == "7"
    full = [r for r in caplog.records if "disk" in r.getMessage() and "full" in r.getMessage()]
    assert len(full) == 1, "said once, not at every poll"
    assert left_over(agent.cfg.state_dir) == []
    filler.unlink()
    agent._save_cursor()
    assert cursor.read_text() == "9"

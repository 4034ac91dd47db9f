"""A node whose coordinator is unreachable for longer than its client's patience.

It used to exit ("unreachable"), so a node cut off for a minute (a network
partition, a laptop closed) never took part again: the network fault test
(tests/e2e/test_faults_network.py) found it. Now it waits, says so once, and
carries on once the coordinator answers again, on the same address.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from tests.coordinator.coordinator_kit import Harness

from tessera.node.agent import AgentConfig, NodeAgent


def test_a_node_waits_out_an_unreachable_coordinator(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tessera.node.agent.OFFLINE_RETRY_S", 0.2)
    harness = Harness(tmp_path / "coordinator.db")
    agent = NodeAgent(
        AgentConfig(
            node_id="node-1",
            coordinator=harness.url,
            insecure_loopback=True,
            keys_path=tmp_path / "node.key",
            state_dir=tmp_path / "state",
            poll_wait=0.5,
        )
    )
    agent.register()
    agent.client.patience = 0.5
    stop = threading.Event()
    serving = threading.Thread(target=agent._serve, args=(stop,), daemon=True)
    try:
        harness.stop()  # the coordinator goes away
        with caplog.at_level(logging.WARNING, logger="tessera.node"):
            serving.start()
            time.sleep(3.0)  # six times the client's patience
            assert serving.is_alive(), "the node gave up"
            harness.start(same_port=True)  # back, on the same address
            end = time.monotonic() + 20
            while "reachable again" not in caplog.text and time.monotonic() < end:
                time.sleep(0.1)
        said = [r.getMessage() for r in caplog.records]
        assert sum("waiting for it to come back" in m for m in said) == 1, said  # once
        assert any("reachable again" in m for m in said), said
        assert serving.is_alive()
    finally:
        stop.set()
        serving.join(10)
        agent.client.close()
        harness.stop()
    assert not serving.is_alive()

"""A node whose sandbox memory limit is too small for the job, in a real deployment.

Issue 17: memory limits on nodes are respected. Every node runs under
``--memory-limit`` (``tessera up --node-memory``); one is given 256 MiB, less
than Python and torch take before any training. That node's agent keeps
running: each round its sandbox fails with the limit named in its log, it
declines the round, and the round closes without it, at once (not on its
deadline), its record naming the node and why; the other nodes train as usual
and the job finishes. (A secure job's round also takes the decline for its
record, but closes on its deadline: its aggregators wait for the node's shares.)
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tessera.config import load_config
from tessera.deploy.local import Deployment
from tessera.deploy.up import run_job

EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "tessera" / "examples"
NODES, ROUNDS, SHORT = 3, 3, 0
MiB = 1 << 20


# The fault group: about 30 s (a whole deployment, three rounds).
@pytest.mark.faults
@pytest.mark.usefixtures("one_deployment_at_a_time")
def test_a_node_short_of_memory_declines_and_the_job_goes_on(tmp_path: Path) -> None:
    cfg = load_config(EXAMPLES / "chem97.toml")
    cfg = cfg.model_copy(
        update={
            "federation": cfg.federation.model_copy(
                # Deadlines far beyond the run: a round must close on the decline.
                update={"rounds": ROUNDS, "fraction": 1.0, "min_participants": 1}
            ),
            "secure": cfg.secure.model_copy(update={"enabled": False}),
            "baseline": cfg.baseline.model_copy(update={"enabled": False}),
        }
    )
    dep = Deployment(
        cfg,
        NODES,
        tmp_path / "up",
        tls=False,
        node_memory=2048 * MiB,
        node_memory_of={SHORT: 256 * MiB},
    )
    short = dep.node_id(SHORT)
    t0 = time.monotonic()
    try:
        result = run_job(dep, timeout=300, poll=0.05)
        seconds = time.monotonic() - t0
        assert dep.processes[short].alive() or dep.processes[short].popen.returncode == 0
    finally:
        report = dep.close()
    assert seconds < cfg.federation.round_timeout, "a round waited for its deadline"
    assert [r.round for r in result.rounds] == list(range(ROUNDS))
    for r in result.rounds:
        assert not r.skipped, r
        assert (r.selected, r.participants) == (NODES, NODES - 1), r
        assert short not in r.included and len(r.included) == NODES - 1
        # Counted as dropped, not late: it said why, and the record keeps it.
        assert (r.dropped, r.late) == (1, 0), r
        (declined,) = r.declined
        assert declined.startswith(f"{short} (") and "memory limit of 256 MiB" in declined
    said = dep.processes[short].log.read_text()
    failures = [ln for ln in said.splitlines() if "local training failed" in ln]
    assert len(failures) == ROUNDS, said[-3000:]
    assert all("exceeded its memory limit of 256 MiB" in ln for ln in failures), failures
    assert "Traceback" not in said
    for i in set(range(NODES)) - {SHORT}:  # the others, under 2 GiB, never failed
        assert "local training failed" not in dep.processes[dep.node_id(i)].log.read_text()
    assert report.killed == ()  # every party stopped on SIGTERM, none hung

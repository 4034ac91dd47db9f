"""A node agent's weight, and how ``tessera up`` starts its nodes and notices them failing.

The agent process loads neither torch (only its sandbox child trains) nor the
coordinator service's stack. ``start_nodes`` runs against a scripted
coordinator and real (tiny) processes standing in for node agents.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tessera.deploy.local import Process
from tessera.deploy.up import StartFailed, start_nodes
from tessera.node.agent import AgentConfig, NodeAgent
from tessera.sandbox import SandboxLimits


def _python(code: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        check=True,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout.strip()


def test_the_agent_module_loads_neither_torch_nor_the_coordinator_service(
    tmp_path: Path,
) -> None:
    out = _python(
        """
        import sys
        import tessera.node.agent
        print(sorted(m for m in ("torch", "sqlalchemy", "fastapi", "tessera.coordinator.service")
                     if m in sys.modules))
        """,
        tmp_path,
    )
    assert out == "[]"


def test_a_node_agents_catalogue_check_does_not_import_torch(tmp_path: Path) -> None:
    out = _python(
        """
        import sys
        from pathlib import Path
        from tessera.node.agent import AgentConfig, NodeAgent
        from tessera.sandbox import SandboxRefused
        from tessera.training import ModelSpec, Recipe

        agent = NodeAgent(AgentConfig(
            node_id="node-1", coordinator="http://127.0.0.1:9", insecure_loopback=True,
            keys_path=Path("node.key"), state_dir=Path("state"),
        ))
        agent.cfg.catalogue.check(
            ModelSpec("mlp", (20,), 3, hidden=(64, 32)), Recipe("cross_entropy"), 100
        )
        try:  # a refusal counts the parameters too
            agent.cfg.catalogue.check(
                ModelSpec("mlp", (4096,), 3, hidden=(4096, 4096)), Recipe("cross_entropy"), 100
            )
        except SandboxRefused as exc:
            print("refused:", exc)
        print("torch" in sys.modules, "sqlalchemy" in sys.modules)
        """,
        tmp_path,
    )
    refusal, modules = out.splitlines()
    assert "parameters" in refusal
    assert modules == "False False"


def test_the_agent_gives_its_sandbox_the_configured_limits(tmp_path: Path) -> None:
    def agent(**kwargs: Any) -> NodeAgent:
        return NodeAgent(
            AgentConfig(
                node_id="node-1",
                coordinator="http://127.0.0.1:9",
                insecure_loopback=True,
                keys_path=tmp_path / "node.key",
                state_dir=tmp_path / "state",
                **kwargs,
            )
        )

    assert agent().sandbox.limits == SandboxLimits()
    slow = agent(sandbox_limits=SandboxLimits(start_timeout=300.0))
    assert slow.sandbox.limits.start_timeout == 300.0
    slow.client.close()


# -- starting the nodes -----------------------------------------------------------------


@dataclass
class FakeDeployment:
    """What ``start_nodes`` uses of a ``Deployment``; node ``i`` runs ``scripts[i]``."""

    out: Path
    scripts: list[str]
    wait_for_exit: bool = False
    processes: dict[str, Process] = field(default_factory=dict)
    starts: list[int] = field(default_factory=list)

    @property
    def n_nodes(self) -> int:
        return len(self.scripts)

    def start_node(self, i: int, job_id: str) -> Process:
        self.starts.append(i)
        log = self.out / "logs" / f"node-{i}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as handle:
            popen = subprocess.Popen(
                [sys.executable, "-c", self.scripts[i]], stdout=handle, stderr=subprocess.STDOUT
            )
        proc = Process(f"node-{i}", popen, log)
        self.processes[proc.name] = proc
        if self.wait_for_exit:
            popen.wait(30)
        return proc

    def exited(self) -> list[Process]:
        return [p for p in self.processes.values() if not p.alive()]

    def close(self) -> None:
        for proc in self.processes.values():
            proc.stop(kill=True)


@dataclass
class FakeCoordinator:
    """``status`` answers: every started node has consented; the job starts once all have."""

    dep: FakeDeployment
    consent: bool = True
    seen: list[int] = field(default_factory=list)

    def status(self, job_id: str) -> dict[str, Any]:
        consented = len(self.dep.processes) if self.consent else 0
        self.seen.append(consented)
        running = consented == self.dep.n_nodes
        return {"state": "running" if running else "waiting", "valid_consents": consented}


SLEEP = "import time; time.sleep(30)"


@pytest.fixture
def deployment(tmp_path: Path) -> Any:
    deps: list[FakeDeployment] = []

    def make(scripts: list[str], **kwargs: Any) -> FakeDeployment:
        deps.append(FakeDeployment(tmp_path, scripts, **kwargs))
        return deps[-1]

    yield make
    for dep in deps:
        dep.close()


def test_a_node_that_dies_before_the_job_starts_is_named_with_its_log(deployment: Any) -> None:
    dying = "print('starting'); print('sandbox did not start within 60 s'); raise SystemExit(2)"
    dep = deployment([SLEEP, dying, SLEEP])
    coordinator = FakeCoordinator(dep, consent=False)
    with pytest.raises(StartFailed) as info:
        start_nodes(dep, coordinator, "job-1", timeout=30, poll=0.02)  # type: ignore[arg-type]
    message = str(info.value)
    assert "node-1 exited with status 2" in message
    assert "sandbox did not start within 60 s" in message  # the tail of its log
    assert str(dep.out / "logs" / "node-1.log") in message
    assert "0 of 3 nodes had consented" in message


def test_a_job_that_does_not_start_in_time_fails_clearly(deployment: Any) -> None:
    dep = deployment([SLEEP, SLEEP])
    coordinator = FakeCoordinator(dep, consent=False)
    with pytest.raises(StartFailed, match=r"did not start within 0 s: 0 of 2 nodes consented"):
        start_nodes(dep, coordinator, "job-1", timeout=0.2, poll=0.02)  # type: ignore[arg-type]
    assert all(p.alive() for p in dep.processes.values())  # the caller stops them


def test_nodes_start_in_batches_once_the_last_batch_consented(deployment: Any) -> None:
    dep = deployment([SLEEP] * 5)
    coordinator = FakeCoordinator(dep)
    heard: list[tuple[int, int]] = []
    started_after: list[int] = []
    start = dep.start_node

    def start_node(i: int, job_id: str) -> Process:
        started_after.append(coordinator.seen[-1] if coordinator.seen else 0)
        return start(i, job_id)

    dep.start_node = start_node
    start_nodes(
        dep,  # type: ignore[arg-type]
        coordinator,  # type: ignore[arg-type]
        "job-1",
        batch=2,
        poll=0.02,
        on_consents=lambda _job, consented, started: heard.append((consented, started)),
    )
    assert dep.starts == [0, 1, 2, 3, 4]
    assert started_after == [0, 0, 2, 2, 4]  # consents seen before each start
    assert heard == []  # each batch had consented at the first look


def test_a_node_that_ends_after_the_job_started_is_no_start_failure(deployment: Any) -> None:
    dep = deployment(["pass", "pass"], wait_for_exit=True)
    start_nodes(dep, FakeCoordinator(dep), "job-1", poll=0.02)  # type: ignore[arg-type]
    assert len(dep.exited()) == 2

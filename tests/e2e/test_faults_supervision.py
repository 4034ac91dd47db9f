"""``tessera up`` under an operator's signals, over real processes (the fault group).

SIGTERM (what ``timeout``, systemd, Docker and CI send) used to leave the
coordinator, the provider and every node running with no parent. Now: a
node killed mid-job is reported with the end of its log; SIGTERM stops every
party in order and says so, exit status 128 + 15; a ``tessera up`` killed
outright (SIGKILL: no cleanup at all) leaves nothing running either, since
each party stops itself once its parent is gone; Ctrl-C while the nodes are still
starting leaves no party and no sandbox behind. ``tessera up --resume OUT``
picks a stopped deployment up where it stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "tessera" / "examples"
NODES = 3

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("one_deployment_at_a_time")]


def _config(tmp_path: Path, rounds: int) -> Path:
    """Chem97, plaintext (three nodes can run it), long rounds: the test stops it."""
    text = (EXAMPLES / "chem97.toml").read_text()
    text = text.replace("[secure]\n", "[secure]\nenabled = false\n")
    text = text.replace("rounds = 150", f"rounds = {rounds}")
    text = text.replace("min_participants = 50", "min_participants = 1")
    text = text.replace("fraction = 0.2", "fraction = 1.0")
    path = tmp_path / "job.toml"
    path.write_text(text)
    return path


def _up(
    tmp_path: Path,
    rounds: int,
    *,
    resume: bool = False,
    log_name: str = "up.log",
    nodes: int = NODES,
    start_batch: int | None = None,
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    out, log = tmp_path / "out", tmp_path / log_name
    args = ["up", str(_config(tmp_path, rounds)), "--nodes", str(nodes), "--out", str(out)]
    if start_batch is not None:
        args += ["--start-batch", str(start_batch)]
    if resume:
        args = ["up", "--resume", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tessera.cli", *args],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )
    return proc, out, log


def _pids_of(out: Path) -> list[int]:
    """Processes whose command line names the deployment's folder (its parties)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(out).encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def _node_pid(out: Path, node: str) -> int | None:
    for pid in _pids_of(out):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"node" in cmdline and node.encode() in cmdline:
            return pid
    return None


def _sandboxes() -> set[int]:
    """Sandbox workers running (their working folder is the sandbox's home,
    ``tessera-sandbox-*``)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and "tessera-sandbox-" in os.readlink(entry / "cwd"):
                found.add(int(entry.name))
        except OSError:
            continue
    return found


def _until(what: str, check: Callable[[], bool], timeout: float) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.2)


def test_sigterm_stops_every_party_after_reporting_a_dead_node(tmp_path: Path) -> None:
    proc, out, log = _up(tmp_path, rounds=200)
    try:
        _until("round 1 closed", (out / "metrics.json").exists, 240)
        victim = _node_pid(out, "node-000001")
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        _until("the dead node reported", lambda: "node-000001 was killed" in log.read_text(), 60)
        assert len(_pids_of(out)) == NODES - 1 + 2 + 1  # nodes left, provider, coordinator, up

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    said = log.read_text()
    assert "stopped by SIGTERM: stopping every party it started" in said
    assert f"stopped {NODES - 1} node processes, the provider, the coordinator in" in said
    assert "last lines of" in said  # the dead node's log, quoted
    assert _pids_of(out) == []
    for party in ("coordinator", "provider"):  # a clean stop: no request died mid-way
        assert "Traceback" not in (out / "logs" / f"{party}.log").read_text()


def test_ctrl_c_while_nodes_start_leaves_no_party_nor_sandbox(tmp_path: Path) -> None:
    before = _sandboxes()  # deployments run one at a time: new ones are ours
    nodes = 8  # started two at a time: the first are up, with their sandboxes, while the
    proc, out, log = _up(tmp_path, rounds=200, nodes=nodes, start_batch=2)  # rest start
    try:
        _until("a node's sandbox started", lambda: bool(_sandboxes() - before), 240)
        assert len(list((out / "logs").glob("node-*.log"))) < nodes, "all started: too late"
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(60) == 128 + signal.SIGINT
    finally:
        if proc.poll() is None:
            proc.kill()
    said = log.read_text()
    assert "stopping every party it started" in said, said[-2000:]
    _until("every party gone", lambda: not _pids_of(out), 20)
    _until("every sandbox gone", lambda: not _sandboxes() - before, 20)
    assert not (out / "metrics.json").exists()  # stopped before the job ran


def test_a_killed_up_leaves_no_party_running(tmp_path: Path) -> None:
    proc, out, _ = _up(tmp_path, rounds=200)
    try:
        _until(
            "every node started",
            lambda: (
                len(list((out / "logs").glob("node-*.log"))) == NODES
                if (out / "logs").exists()
                else False
            ),
            240,
        )
        assert len(_pids_of(out)) >= NODES + 2
        proc.kill()  # no cleanup at all: the parties must notice on their own
        proc.wait(10)
        _until("every party gone", lambda: _pids_of(out) == [], 20)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_stopped_up_resumes_where_it_stopped(tmp_path: Path) -> None:
    rounds = 4
    proc, out, _ = _up(tmp_path, rounds=rounds)
    try:
        _until("round 1 closed", (out / "metrics.json").exists, 240)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _pids_of(out) == []

    again, _, log2 = _up(tmp_path, rounds=rounds, resume=True, log_name="resume.log")
    try:
        assert again.wait(400) == 0, log2.read_text()[-3000:]
    finally:
        if again.poll() is None:
            again.kill()
    records = json.loads((out / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in records] == list(range(rounds))  # every round, once
    for r in records:  # a round lost to the stop says so, and why
        assert r["skipped"] == (r.get("skip_reason") is not None), r
    assert not records[-1]["skipped"]
    assert (out / "model.safetensors").exists()
    assert f"stopped {NODES} node processes" in log2.read_text()
    assert _pids_of(out) == []

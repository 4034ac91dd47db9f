"""Finding 7: a hostile training step inside the real sandbox cannot escape it.

Each test asks the real worker, through the test-only ``probe`` entry point
(refused unless the sandbox was started with ``--test-probes``), to run the
code an exploited training step could run: read the node's key, reach a
service on 127.0.0.1, fork without bound, fill the disk, call a syscall that
training never needs. Where bubblewrap or user namespaces are missing the
tests skip, naming what is missing (``isolate_network="required"`` refuses to
train there anyway).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.sandbox import Sandbox, SandboxLimits, SandboxRefused, jail

HOSTILE = "-----BEGIN PRIVATE KEY-----\nnot really a key\n"


class ProbeSandbox(Sandbox):
    """A sandbox whose worker accepts probes: tests only, never a node's."""

    def _worker_flags(self) -> list[str]:
        return ["--test-probes"]


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    _, problem = jail.find_isolation()
    if problem:
        pytest.skip(f"no sandbox isolation here: {problem}")
    with ProbeSandbox(SandboxLimits(call_timeout=60, processes=32)) as sandbox:
        yield sandbox


def test_a_node_sandbox_refuses_probes() -> None:
    with Sandbox(isolate_network="best_effort") as plain, pytest.raises(SandboxRefused):
        plain.run_probe("result = 1")


def test_the_node_key_and_home_are_invisible(box: Sandbox, tmp_path: Path) -> None:
    state = tmp_path / "node-state"
    state.mkdir()
    (state / "node.key").write_text(HOSTILE)
    (state / "notes.txt").write_text("beside the key")
    code = f"""
import os
seen = []
for path in {[str(state / "node.key"), str(state / "notes.txt")]!r}:
    try:
        seen.append(open(path).read())
    except OSError as exc:
        seen.append(type(exc).__name__)
for path in {[str(tmp_path), "/home", "/etc/passwd", "/etc/ssh", "/var"]!r}:
    seen.append(path + (" visible" if os.path.exists(path) else " absent"))
home = {str(Path.home())!r}
result = (seen, sorted(os.listdir(home)) if os.path.isdir(home) else [])
"""
    seen, home = eval(box.run_probe(code))
    assert HOSTILE.strip() not in str(seen) and "beside the key" not in str(seen), seen
    assert not [s for s in seen if s.endswith("visible")], seen
    # The home directory exists only where the interpreter lives below it
    # (pyenv's ~/.pyenv): then it shows that one entry and nothing else.
    below = {
        Path(r).relative_to(Path.home()).parts[0]
        for r in jail._python_roots()
        if Path(r).is_relative_to(Path.home())
    }
    assert set(home) <= below, f"the home directory shows {home}"


def test_other_processes_are_invisible(box: Sandbox) -> None:
    """Its own pid namespace: the node's process and its environment are not in /proc."""
    code = f"""
import os
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
result = (pids, os.path.exists("/proc/{os.getpid()}/environ"))
"""
    pids, parent_visible = eval(box.run_probe(code))
    assert not parent_visible
    assert len(pids) <= 3, pids  # bwrap's init, the worker (and a probe's child at most)


def test_no_socket_reaches_a_local_listener(box: Sandbox) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
    result = "connected"
except OSError as exc:
    result = "refused: " + str(exc)
"""
        assert box.run_probe(code).startswith("refused"), "the sandbox reached 127.0.0.1"
        code = """
import socket
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
    result = "socket made"
except OSError as exc:
    result = exc.errno
"""
        assert box.run_probe(code) == "1", "socket(AF_INET) must be refused (EPERM)"


def test_a_fork_bomb_is_stopped(box: Sandbox) -> None:
    """At most 64 tries, each child sleeping 2 s then exiting: bounded either way."""
    code = """
import os, time
made, error = 0, None
for _ in range(64):
    try:
        pid = os.fork()
    except OSError as exc:
        error = exc.strerror
        break
    if pid == 0:
        time.sleep(2)
        os._exit(0)
    made += 1
result = (made, error)
"""
    made, error = eval(box.run_probe(code))
    assert made == 0, f"the sandbox forked {made} processes"
    assert error is not None


def test_the_disk_cannot_be_filled(box: Sandbox) -> None:
    code = """
import os
failures = []
for path in ("/tmp/fill", "fill", os.path.expanduser("~/fill")):
    try:
        with open(path, "wb") as f:
            for _ in range(64):
                f.write(b"\\0" * (1 << 20))
        failures.append(path + " written")
    except OSError as exc:
        failures.append(exc.errno)
made = 0
for i in range(1000):
    try:
        os.mkdir(f"/tmp/d{i}")
        made += 1
    except OSError:
        break
result = (failures, made)
"""
    failures, made = eval(box.run_probe(code))
    assert all(isinstance(f, int) for f in failures), failures
    assert made == 0, f"the sandbox made {made} directories"


@pytest.mark.parametrize(
    ("call", "args"),
    [
        ("ptrace", "0, 0, None, None"),
        ("unshare", "0x10000000"),
        ("mount", "b'x', b'/tmp', b'tmpfs', 0, None"),
    ],
    ids=["ptrace-traceme", "unshare-newuser", "mount"],
)
def test_syscalls_training_never_needs_are_refused(box: Sandbox, call: str, args: str) -> None:
    code = f"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
rc = libc.{call}({args})
result = (rc, ctypes.get_errno())
"""
    rc, errno = eval(box.run_probe(code))
    assert (rc, errno) == (-1, 1), (
        f"{call} returned {rc} (errno {errno}); the filter must say EPERM"
    )
    assert os.getpid() > 0

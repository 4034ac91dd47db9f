"""Process supervision (deploy.supervise): a signal stops the command's children in
order and within a bounded time; a child whose parent died stops itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tessera.deploy.supervise import PARENT_ENV, Stopped, stop_all, stop_on_signals

# A child that notes its name and the time it got SIGTERM, then ends (or ignores it).
_CHILD = """
import signal, sys, time
name, stubborn, log = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
def on_term(*_):
    with open(log, "a") as f:
        f.write(f"{name} {time.monotonic()}\\n")
    if not stubborn:
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


@dataclass
class _Child:
    name: str
    popen: subprocess.Popen[bytes]


def _start(name: str, log: Path, *, stubborn: bool = False) -> _Child:
    popen = subprocess.Popen(
        [sys.executable, "-c", _CHILD, name, "1" if stubborn else "0", str(log)],
        stdout=subprocess.PIPE,
    )
    assert popen.stdout is not None and popen.stdout.readline() == b"ready\n"
    return _Child(name, popen)


def test_children_stop_in_order_and_a_stubborn_one_is_killed(tmp_path: Path) -> None:
    log = tmp_path / "terms.log"
    children = [
        _start("coordinator", log),
        _start("node-1", log),
        _start("provider", log),
        _start("node-2", log, stubborn=True),
    ]
    t0 = time.monotonic()
    report = stop_all(children, grace=1.0)
    assert time.monotonic() - t0 < 10
    assert all(c.popen.poll() is not None for c in children)
    order = [line.split()[0] for line in log.read_text().splitlines()]
    assert order[-2:] == ["provider", "coordinator"]  # after every node
    assert set(order[:2]) == {"node-1", "node-2"}
    assert report.killed == ("node-2",)
    assert children[3].popen.returncode == -signal.SIGKILL
    line = report.line()
    assert line.startswith("stopped 2 node processes, the provider, the coordinator in ")
    assert line.endswith("(1 killed: node-2)")


def test_a_child_that_already_ended_is_no_trouble(tmp_path: Path) -> None:
    child = _start("node-1", tmp_path / "terms.log")
    child.popen.kill()
    child.popen.wait()
    report = stop_all([child], grace=0.5)
    assert (report.stopped, report.killed) == ((), ())
    assert report.line().startswith("stopped nothing in ")


# A parent that starts a watching child, prints its pid, then waits to be killed.
_PARENT = f"""
import os, subprocess, sys, time
env = {{**os.environ, "{PARENT_ENV}": str(os.getpid())}}
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=env)
print(child.pid, flush=True)
time.sleep(120)
"""

_WATCHER = """
import os, sys, time
from tessera.deploy.supervise import PARENT_ENV, watch_parent
watch_parent(every=0.05)
assert PARENT_ENV not in os.environ  # its own children do not watch the wrong parent
time.sleep(120)
"""


def test_a_child_stops_itself_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, _WATCHER], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    time.sleep(1.0)  # the child imported tessera and watches
    assert _alive(child)
    parent.kill()
    parent.wait()
    end = time.monotonic() + 10
    while _alive(child) and time.monotonic() < end:
        time.sleep(0.05)
    assert not _alive(child), "the orphaned child is still running"


def _signal_myself(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(1.0)  # the handler runs between bytecodes, well before this ends


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_without_the_variable_nothing_is_watched() -> None:
    env: dict[str, str] = {}
    from tessera.deploy.supervise import watch_parent

    watch_parent(env)  # no thread, no signal: returns at once
    env[PARENT_ENV] = str(os.getppid())
    watch_parent(env, every=60.0)  # our parent is alive: we go on
    assert PARENT_ENV not in env


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_raises_stopped_in_the_block(signum: int) -> None:
    before = signal.getsignal(signum)
    with stop_on_signals(), pytest.raises(Stopped) as caught:
        _signal_myself(signum)
    assert caught.value.signum == signum
    assert str(caught.value) == f"stopped by {signal.Signals(signum).name}"
    assert signal.getsignal(signum) is before  # restored

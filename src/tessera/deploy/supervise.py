"""Process supervision for a local deployment: what ``tessera up`` does when told to stop.

Three duties, each for a way an operator or the machine ends a run:

- A signal (SIGTERM from ``timeout``, systemd, Docker or CI; SIGHUP from a
  closed terminal) becomes ``Stopped``, an exception the command's cleanup
  sees, like Ctrl-C's KeyboardInterrupt: its ``finally`` stops every child.
  Python's default for SIGTERM is to die on the spot, children left running.
- ``stop_all`` stops the children in order (nodes, then the provider, then
  the coordinator: no party outlives what it talks to), each group at once
  and within a bounded time: SIGTERM, ``grace`` seconds, then SIGKILL.
- ``watch_parent`` (in each child, from ``python -m tessera.cli``): a party
  whose parent ``tessera up`` died without cleaning up (SIGKILL, a crash,
  the OOM killer) stops itself within a second. The children run in their
  own sessions (a Ctrl-C on the terminal reaches ``up`` only, which then
  stops them in order), so nothing else would tell them.

Stdlib only: ``python -m tessera.cli`` imports it before anything else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Protocol

__all__ = [
    "PARENT_ENV",
    "StopReport",
    "Stopped",
    "ignoring_stop_signals",
    "stop_all",
    "stop_on_signals",
    "watch_parent",
]

#: Set by a deployment in each party's environment: the pid of the ``tessera up`` that
#: started it. The party stops itself when its parent is no longer that process.
PARENT_ENV = "TESSERA_STOP_WITH_PARENT"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(BaseException):
    """A signal asked the command to stop (BaseException: no ``except Exception`` eats it)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


@contextmanager
def stop_on_signals(signals: Sequence[int] = STOP_SIGNALS) -> Iterator[None]:
    """Within the block, each of ``signals`` raises ``Stopped`` in the main thread."""

    def raise_stopped(signum: int, _: FrameType | None) -> None:
        raise Stopped(signum)

    previous = {s: signal.signal(s, raise_stopped) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def ignoring_stop_signals(signals: Sequence[int] = STOP_SIGNALS) -> Iterator[None]:
    """Within the block (a cleanup under way), ``signals`` are ignored."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class _Child(Protocol):
    name: str
    popen: subprocess.Popen[bytes]


@dataclass(frozen=True)
class StopReport:
    stopped: tuple[str, ...]  # running, then ended on SIGTERM (those ended before: neither)
    killed: tuple[str, ...]  # still running after the grace period: SIGKILL
    seconds: float

    def line(self) -> str:
        nodes = sum(1 for n in self.stopped + self.killed if n not in ("provider", "coordinator"))
        services = [n for n in ("provider", "coordinator") if n in self.stopped + self.killed]
        parts = [f"{nodes} node processes"] if nodes else []
        parts += [f"the {s}" for s in services]
        what = ", ".join(parts) or "nothing"
        killed = f" ({len(self.killed)} killed: {', '.join(self.killed)})" if self.killed else ""
        return f"stopped {what} in {self.seconds:.1f} s{killed}"


def stop_all(children: Sequence[_Child], *, grace: float = 10.0) -> StopReport:
    """Stop ``children`` in order: nodes, then the provider, then the coordinator.

    Each group is sent SIGTERM at once and given ``grace`` seconds; what still
    runs then is killed. At most about 3 * (grace + 5) seconds in all.
    """
    t0 = time.monotonic()
    groups: list[list[_Child]] = [
        [c for c in children if c.name not in ("provider", "coordinator")],
        [c for c in children if c.name == "provider"],
        [c for c in children if c.name == "coordinator"],
    ]
    stopped: list[str] = []
    killed: list[str] = []
    for group in groups:
        group = [c for c in group if c.popen.poll() is None]  # noqa: PLW2901 - the living
        for child in group:
            _signal(child, signal.SIGTERM)
        end = time.monotonic() + grace
        for child in group:
            try:
                child.popen.wait(max(0.0, end - time.monotonic()))
                stopped.append(child.name)
            except subprocess.TimeoutExpired:
                _signal(child, signal.SIGKILL)
                child.popen.wait(5)
                killed.append(child.name)
    return StopReport(tuple(stopped), tuple(killed), time.monotonic() - t0)


def _signal(child: _Child, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # ended between the check and the signal
        child.popen.send_signal(signum)


def watch_parent(environ: dict[str, str] | None = None, *, every: float = 0.5) -> None:
    """In a party's process: if ``PARENT_ENV`` names its parent, stop (SIGTERM to
    itself) once the parent is gone. The variable is taken out of the environment,
    so the party's own children (a node's sandbox) do not watch the wrong parent."""
    env = os.environ if environ is None else environ
    value = env.pop(PARENT_ENV, None)
    if value is None:
        return
    parent = int(value)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os.kill(os.getpid(), signal.SIGTERM)

    if os.getppid() != parent:  # already orphaned before we looked
        os.kill(os.getpid(), signal.SIGTERM)
        return
    threading.Thread(target=watch, name="watch-parent", daemon=True).start()

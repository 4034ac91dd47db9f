"""One worker process: spawned limited and isolated, spoken to with a deadline.

The OS-facing half of the sandbox, kept apart from ``runner.py``'s policy:
finding a working ``unshare``, spawning the worker with a minimal
environment, lowering its resource limits with ``resource.prlimit`` (safe in
a threaded parent, unlike ``preexec_fn``), moving its CPU-time soft limit
before each call, exchanging one request and reply over non-blocking pipes
under a wall-clock deadline, and explaining its death (signal, status, the
last lines of stderr). Linux only (``unshare``, ``/proc``, ``prlimit``).
"""

from __future__ import annotations

import math
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import tessera
from tessera.sandbox.errors import FrameError, SandboxError
from tessera.sandbox.frames import FrameReader, Message

if TYPE_CHECKING:
    from tessera.sandbox.runner import SandboxLimits

UNSHARE_ARGS = ("--user", "--map-root-user", "--net", "--")
MAX_OPEN_FILES = 64
#: A child's lifetime CPU budget (its hard RLIMIT_CPU) is this many calls' worth.
CPU_LIFETIME_CALLS = 10
#: CPU seconds a call may not need but a budget keeps in reserve (startup, rounding).
CPU_GRACE = 2
HOW_TO_ISOLATE = (
    "Network isolation needs unprivileged user namespaces: enable them with "
    "`sysctl -w kernel.unprivileged_userns_clone=1` (Debian), or "
    "`sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` (Ubuntu 23.10+), or allow "
    "unshare(2) in the container's seccomp profile; or pass isolate_network='best_effort' "
    "to train without network isolation."
)
IO_CHUNK = 1 << 20
_STDERR_KEEP = 1 << 14


class TimedOut(Exception):
    """The call's wall-clock deadline passed."""


class Gone(Exception):
    """The child closed its stdout: it has exited or is exiting."""


def find_unshare() -> tuple[str | None, str]:
    """The unshare binary if ``unshare --user --map-root-user --net`` works, else why not."""
    path = shutil.which("unshare")
    if path is None:
        return None, "the unshare command (util-linux) is not installed"
    try:
        done = subprocess.run(
            [path, *UNSHARE_ARGS, sys.executable, "-S", "-c", ""],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"unshare could not run ({exc})"
    if done.returncode:
        lines = done.stderr.decode(errors="replace").strip().splitlines() or ["no output"]
        return None, f"`unshare {' '.join(UNSHARE_ARGS[:-1])}` failed ({lines[-1]})"
    return path, ""


def child_env(home: str, threads: int) -> dict[str, str]:
    src = str(Path(tessera.__file__).resolve().parent.parent)
    n = str(threads)
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": src,
        "HOME": home,
        "TMPDIR": home,
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
    }


def lifetime_cpu(limits: SandboxLimits) -> int:
    return CPU_LIFETIME_CALLS * limits.cpu_seconds + CPU_GRACE


def cpu_used(pid: int) -> float:
    """User plus system CPU seconds ``pid`` has used (Linux ``/proc``)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; fields[0] is field 3
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def apply_limits(pid: int, limits: SandboxLimits) -> None:
    """Lower the child's resource limits (never raising one the parent already has lower)."""
    wanted = {
        resource.RLIMIT_AS: (limits.memory_bytes, limits.memory_bytes),
        resource.RLIMIT_CPU: (lifetime_cpu(limits),) * 2,
        resource.RLIMIT_NOFILE: (MAX_OPEN_FILES, MAX_OPEN_FILES),
        resource.RLIMIT_FSIZE: (0, 0),
        resource.RLIMIT_CORE: (0, 0),
    }
    for res, (soft, hard) in wanted.items():
        current = resource.prlimit(pid, res)[1]
        bound = hard if current == resource.RLIM_INFINITY else min(hard, current)
        resource.prlimit(pid, res, (min(soft, bound), bound))


class Child:
    """One running worker, its three pipes (non-blocking) and the tail of its stderr."""

    def __init__(self, command: list[str], limits: SandboxLimits) -> None:
        self.limits = limits
        self.out_of_step = False
        self.home = tempfile.mkdtemp(prefix="tessera-sandbox-")
        try:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self.home,
                env=child_env(self.home, limits.threads),
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            shutil.rmtree(self.home, ignore_errors=True)
            raise SandboxError(f"could not start the sandbox: {exc}") from None
        pipes = (self.proc.stdin, self.proc.stdout, self.proc.stderr)
        self._in, self._out, self._err = (f.fileno() for f in pipes if f is not None)
        for fd in (self._in, self._out, self._err):
            os.set_blocking(fd, False)
        self._stderr = bytearray()
        try:
            apply_limits(self.proc.pid, limits)
        except OSError as exc:
            self.kill()
            raise SandboxError(f"could not set the sandbox's resource limits ({exc})") from None

    def budget_cpu(self, seconds: int) -> bool:
        """Allow the next call ``seconds`` of CPU; False if the lifetime budget can't."""
        try:
            used = math.ceil(cpu_used(self.proc.pid))
            hard = resource.prlimit(self.proc.pid, resource.RLIMIT_CPU)[1]
            if hard != resource.RLIM_INFINITY and used + seconds + CPU_GRACE > hard:
                return False
            resource.prlimit(self.proc.pid, resource.RLIMIT_CPU, (used + seconds, hard))
        except (OSError, ValueError, IndexError):  # it is exiting: the exchange will say why
            return True
        return True

    def exchange(self, frame: bytes, timeout: float, max_reply: int) -> Message:
        """Write ``frame``, return the reply; raises _TimedOut, _Gone or FrameError."""
        reader = FrameReader(max_reply)
        view, sent = memoryview(frame), 0
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self._in, selectors.EVENT_WRITE)
            sel.register(self._out, selectors.EVENT_READ)
            sel.register(self._err, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimedOut
                for key, _ in sel.select(left):
                    if key.fd == self._in:
                        try:
                            sent += os.write(self._in, view[sent : sent + IO_CHUNK])
                        except BlockingIOError:
                            continue
                        except BrokenPipeError:  # it stopped reading: its reply or exit says why
                            self.out_of_step = True
                            sent = len(view)
                        if sent >= len(view):
                            sel.unregister(self._in)
                        continue
                    try:
                        data = os.read(key.fd, IO_CHUNK)
                    except BlockingIOError:
                        continue
                    if key.fd == self._err:
                        self._keep_stderr(data) if data else sel.unregister(self._err)
                        continue
                    if not data:
                        raise Gone
                    reader.feed(data)
                    message = reader.next_message()
                    if message is not None:
                        if reader.pending:
                            raise FrameError("bytes after the reply")
                        self.out_of_step |= sent < len(view)
                        return message

    def _keep_stderr(self, data: bytes) -> None:
        self._stderr += data
        del self._stderr[:-_STDERR_KEEP]

    def _drain_stderr(self) -> None:
        while True:
            try:
                data = os.read(self._err, IO_CHUNK)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            self._keep_stderr(data)

    def stderr_tail(self, lines: int = 5) -> str:
        text = self._stderr.decode(errors="replace").strip().splitlines()
        return " | ".join(line.strip() for line in text[-lines:])[-1000:]

    def exit_reason(self) -> str:
        """Why the child ended: a limit, a signal or a status, with its last stderr lines."""
        try:
            rc = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._drain_stderr()
        tail = self.stderr_tail()
        if rc == -signal.SIGXCPU:
            what = (
                f"the sandbox exceeded its CPU-time limit of {self.limits.cpu_seconds} s "
                "(killed by SIGXCPU)"
            )
        elif rc == -signal.SIGKILL:
            what = (
                "the sandbox was killed by SIGKILL (its lifetime CPU-time limit, "
                "or the system ran out of memory)"
            )
        elif rc < 0:
            what = f"the sandbox crashed ({signal_name(-rc)})"
        elif "MemoryError" in tail or "can't allocate memory" in tail:
            what = "the sandbox exceeded its memory limit"
        else:
            what = f"the sandbox exited unexpectedly (status {rc})"
        return f"{what}; its last output: {tail}" if tail else what

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._release()

    def close(self) -> None:
        """Close stdin so the worker exits on its own; kill it if it lingers."""
        try:
            assert self.proc.stdin
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self._release()

    def _release(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        shutil.rmtree(self.home, ignore_errors=True)


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"

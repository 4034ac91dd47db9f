"""One worker process: spawned jailed, spoken to with a deadline.

The OS-facing half of the sandbox, kept apart from ``runner.py``'s policy:
spawning the worker behind the jail's ``bwrap`` prefix (``jail.py``) with a
minimal environment and the resource limits it sets on itself before reading
(``worker_limits``), tracking the lifetime CPU budget it reports, exchanging
one request and reply over non-blocking pipes under a wall-clock deadline,
and explaining its death (signal, status, the last lines of stderr).
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import tessera
from tessera.sandbox.errors import FrameError, SandboxError, size_text
from tessera.sandbox.frames import FrameReader, Message
from tessera.sandbox.jail import LIB

if TYPE_CHECKING:
    from tessera.sandbox.runner import SandboxLimits

MAX_OPEN_FILES = 64
#: A child's lifetime CPU budget (its hard RLIMIT_CPU) is this many calls' worth.
CPU_LIFETIME_CALLS = 10
#: CPU seconds a call may not need but a budget keeps in reserve (startup, rounding).
CPU_GRACE = 2
IO_CHUNK = 1 << 20
_STDERR_KEEP = 1 << 14
# How running out of address space reads in a dead worker's stderr: Python's
# MemoryError, torch's allocator, or the loader mapping a library (libseccomp, loaded
# after the limits: a limit too small to start in reads as a failed syscall filter).
_OUT_OF_MEMORY = ("MemoryError", "can't allocate memory", "failed to map segment")


class TimedOut(Exception):
    """The call's wall-clock deadline passed."""


class Gone(Exception):
    """The child closed its stdout: it has exited or is exiting."""


def child_env(home: str, threads: int, *, jailed: bool) -> dict[str, str]:
    """A minimal environment; in the jail, its own paths (``/tmp``, the bound package)."""
    src = LIB if jailed else str(Path(tessera.__file__).resolve().parent.parent)
    home = "/tmp" if jailed else home
    n = str(threads)
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": src,
        "HOME": home,
        "TMPDIR": home,
        "USER": "sandbox",  # so getpass.getuser() reads no passwd database
        "LOGNAME": "sandbox",
        # torch's lazy imports make this cache directory; the jail's /tmp is
        # read-only, and an existing directory satisfies makedirs(exist_ok=True).
        "TORCHINDUCTOR_CACHE_DIR": home,
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
    }


def lifetime_cpu(limits: SandboxLimits) -> int:
    return CPU_LIFETIME_CALLS * limits.cpu_seconds + CPU_GRACE


def worker_limits(limits: SandboxLimits, *, jailed: bool) -> dict[str, int]:
    """The resource limits the worker sets on itself before it reads a request.

    ``nproc`` only in the jail: outside a fresh user namespace RLIMIT_NPROC
    counts every process of the node's user, not the worker's.
    """
    wanted = {
        "as": limits.memory_bytes,
        "cpu": lifetime_cpu(limits),
        "cpu_call": limits.cpu_seconds,
        "nofile": MAX_OPEN_FILES,
        "fsize": 0,
        "core": 0,
    }
    if jailed:
        wanted["nproc"] = limits.processes
    return wanted


class Child:
    """One running worker, its three pipes (non-blocking) and the tail of its stderr.

    ``prefix`` is the jail's ``bwrap`` arguments (empty: no jail). ``cpu_left``
    is the lifetime CPU budget the worker reported in its last reply.
    """

    def __init__(self, prefix: list[str], command: list[str], limits: SandboxLimits) -> None:
        self.limits = limits
        self.jailed = bool(prefix)
        self.out_of_step = False
        self.cpu_left = float(lifetime_cpu(limits))
        self.home = tempfile.mkdtemp(prefix="tessera-sandbox-")
        env = child_env(self.home, limits.threads, jailed=self.jailed)
        rlimits = json.dumps(worker_limits(limits, jailed=self.jailed))
        try:
            self.proc = subprocess.Popen(
                [*prefix, *command, "--limits", rlimits],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self.home,
                env=env,
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

    def can_afford(self, seconds: int) -> bool:
        """Whether the worker's lifetime CPU budget covers one more call of ``seconds``."""
        return self.cpu_left >= seconds + CPU_GRACE

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
                        self._note_budget(message)
                        return message

    def _note_budget(self, reply: Message) -> None:
        budget = reply.get("cpu_left")
        if isinstance(budget, int | float) and not isinstance(budget, bool):
            self.cpu_left = float(budget)

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
        if self.jailed and rc > 128:  # bwrap exits 128 + N for a worker killed by signal N
            rc = 128 - rc
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
        elif any(sign in tail for sign in _OUT_OF_MEMORY):
            what = f"the sandbox exceeded its memory limit of {size_text(self.limits.memory_bytes)}"
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

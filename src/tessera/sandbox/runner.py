"""The parent side of the sandbox: one persistent, isolated, limited worker process.

Theory of operation. The AI provider is not trusted on a node, so its job is
never trained in the node's own process. ``Sandbox`` starts one child,
``python -m tessera.sandbox.worker``, lazily on first use and reuses it across
rounds (importing torch costs a second or two each start):

- jail: the child runs under bubblewrap (``jail.py``) in fresh user, mount,
  pid, network, IPC and UTS namespaces, without capabilities: a read-only
  root holding only the Python install and the tessera package, no home, no
  node state directory (its keys), no other process, no network (not even
  the node's own services on 127.0.0.1). Where bubblewrap or user namespaces
  are unavailable, ``isolate_network="required"`` (the default; the name is
  kept from when only the network was isolated) refuses to train and says
  how to enable them; ``"best_effort"`` logs a warning and trains without
  the namespaces (the limits and the syscall filter still hold).
- syscalls: after its imports, before it reads a request, the worker loads a
  seccomp allow-list (``syscalls.py``): no new processes, no sockets, no
  ptrace, mount or namespace calls.
- limits: the worker sets its own RLIMIT_AS, RLIMIT_CPU, RLIMIT_NOFILE,
  RLIMIT_FSIZE (0: it writes no files), RLIMIT_CORE and, in the jail,
  RLIMIT_NPROC (``SandboxLimits.processes``, threads included) from
  ``--limits`` before it reads the first request, so no untrusted byte
  reaches it before they hold; it reports them on ``ping``.
- CPU time per call: RLIMIT_CPU counts a process's whole life, and the child
  lives for many rounds. So its hard limit is a lifetime budget
  (``_child.CPU_LIFETIME_CALLS`` calls' worth) and, before each request, the
  worker moves its soft limit to the CPU time used so far plus
  ``cpu_seconds``: a call that overruns gets SIGXCPU. Each reply carries the
  budget left; a child that cannot cover another call is replaced first.
- environment: PATH, PYTHONPATH, HOME/TMPDIR/cwd in an empty directory (the
  jail's read-only ``/tmp``), one thread per math library; nothing else of
  the parent's environment.
- channel: length-prefixed msgpack frames on stdin/stdout (``frames.py``),
  stderr kept (its last lines) for error reports, a wall-clock deadline on
  every call.

A child that crashes, hits a limit, times out or breaks the protocol is
discarded; the call raises ``SandboxError`` saying why, and the next call
starts a fresh child. Linux only (bubblewrap, seccomp, ``resource``).

Tests only: ``run_probe`` runs Python code in the worker as an exploited
training step would; the worker refuses it unless a test's subclass adds
``--test-probes`` through ``_worker_flags`` (``tests/security``).
"""

from __future__ import annotations

import logging
import math
import operator
import sys
import threading
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt
from safetensors.numpy import save

from tessera.errors import ConfigError, DataError
from tessera.sandbox._child import Child, Gone, TimedOut
from tessera.sandbox.catalogue import DEFAULT_CATALOGUE, NodeCatalogue
from tessera.sandbox.errors import FrameError, SandboxError, SandboxRefused, size_text
from tessera.sandbox.frames import Message, encode
from tessera.sandbox.jail import HOW_TO_ISOLATE, find_isolation

if TYPE_CHECKING:
    from tessera.training.recipe import Recipe
    from tessera.training.spec import ModelSpec

log = logging.getLogger(__name__)

GiB = 1 << 30
Isolation = Literal["required", "best_effort"]
_SMALL_REPLY = 1 << 16
_REPLY_SLACK = 1 << 16  # room beside the delta for the reply's scalar fields


@dataclass(frozen=True)
class SandboxLimits:
    """Bounds on the child: address space; CPU and wall-clock seconds per call; tasks.

    ``processes`` bounds the jail's tasks, threads included (RLIMIT_NPROC).
    """

    memory_bytes: int = 4 * GiB
    cpu_seconds: int = 600
    call_timeout: float = 300.0
    start_timeout: float = 60.0
    threads: int = 1
    processes: int = 64

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "cpu_seconds", "threads", "processes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"sandbox.{name}", f"must be a positive integer, got {value!r}")
        for name in ("call_timeout", "start_timeout"):
            value = getattr(self, name)
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"sandbox.{name}", f"must be a positive number, got {value!r}")


@dataclass(frozen=True)
class TrainOutcome:
    """One node's update: ``delta`` float32 in the model's flat layout; with
    ``quality``, its records' data-quality statistics (``BatchedTrainer``'s)."""

    delta: npt.NDArray[np.float32]
    num_samples: int
    loss: float
    loss_before: float | None = None
    norm: float | None = None  # the update's L2 norm before clipping
    labels: tuple[int, ...] = ()


def _quality(raw: object, classes: int) -> tuple[float, float, tuple[int, ...]] | None:
    """(loss before, norm, labels) of a worker's reply, or None when malformed."""
    if not isinstance(raw, dict) or set(raw) != {"loss_before", "norm", "labels"}:
        return None
    before, norm, labels = raw["loss_before"], raw["norm"], raw["labels"]
    numbers = all(isinstance(v, float | int) and not isinstance(v, bool) for v in (before, norm))
    if not numbers or not isinstance(labels, list) or len(labels) != classes:
        return None
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in labels):
        return None
    if not (math.isfinite(before) and math.isfinite(norm) and before >= 0 and norm >= 0):
        return None
    return float(before), float(norm), tuple(labels)


class Sandbox:
    """Trains one node's job in an isolated, resource-limited child process."""

    def __init__(
        self,
        limits: SandboxLimits = SandboxLimits(),
        *,
        isolate_network: Isolation = "required",
        catalogue: NodeCatalogue = DEFAULT_CATALOGUE,
    ) -> None:
        if isolate_network not in ("required", "best_effort"):
            raise ConfigError(
                "sandbox.isolate_network",
                f"must be 'required' or 'best_effort', got {isolate_network!r}",
            )
        self.limits = limits
        self.catalogue = catalogue
        self._isolate = isolate_network
        self._prefix: list[str] | None = None
        self._child: Child | None = None
        self._lock = threading.Lock()

    @property
    def isolated(self) -> bool | None:
        """Whether the child runs jailed (``jail.py``); None until it first starts."""
        return None if self._prefix is None else bool(self._prefix)

    def train(
        self,
        spec: ModelSpec,
        recipe: Recipe,
        x: npt.ArrayLike,
        y: npt.ArrayLike,
        weights: npt.ArrayLike,
        *,
        seed: int,
        shuffle_id: int,
        prox_mu: float | None = None,
        round: int = 0,
        quality: bool = False,
    ) -> TrainOutcome:
        """Train the node's records ``(x, y)`` from ``weights`` as node ``shuffle_id``.

        The result equals ``BatchedTrainer`` row ``shuffle_id`` of the simulator
        for the same seed and ``round`` (which sets the recipe's learning rate).
        Raises ``SandboxRefused`` (outside the catalogue),
        ``ConfigError``/``DataError`` (job or records unusable) or
        ``SandboxError`` (a limit, a crash, a timeout, no isolation).
        """
        # Counted from the spec's shapes: the parent (a node agent) never loads torch.
        from tessera.training.spec import parameter_count

        x_arr = np.ascontiguousarray(x, dtype=np.float32)
        if x_arr.ndim < 1:
            raise DataError("x must hold one row per record")
        y_arr = _targets(y)
        self.catalogue.check(spec, recipe, len(x_arr))
        size = parameter_count(spec)
        w = np.asarray(weights)
        if w.shape != (size,):
            raise DataError(f"weights have shape {w.shape}, expected ({size},)")
        request = {
            "op": "train",
            "spec": spec.to_json(),
            "recipe": recipe.to_json(),
            "x": save({"x": x_arr}),
            "y": save({"y": y_arr}),
            "weights": w.astype("<f4").tobytes(),
            "seed": operator.index(seed),
            "shuffle_id": operator.index(shuffle_id),
            "prox_mu": None if prox_mu is None else float(prox_mu),
            "round": operator.index(round),
            "quality": bool(quality),
        }
        reply = self._call(request, self.limits.call_timeout, 4 * size + _REPLY_SLACK, "training")
        delta, n, loss = reply.get("delta"), reply.get("num_samples"), reply.get("loss")
        if (
            not isinstance(delta, bytes)
            or len(delta) != 4 * size
            or n != len(x_arr)
            or isinstance(loss, bool)
            or not isinstance(loss, float | int)
        ):
            with self._lock:
                self._discard()
            raise SandboxError("the sandbox sent a malformed training reply")
        delta_arr = np.frombuffer(delta, "<f4").astype(np.float32)
        outcome = TrainOutcome(delta_arr, len(x_arr), float(loss))
        if not quality:
            return outcome
        measured = _quality(
            reply.get("quality"), spec.n_outputs if recipe.loss == "cross_entropy" else 0
        )
        if measured is None:
            with self._lock:
                self._discard()
            raise SandboxError("the sandbox sent malformed quality statistics")
        return replace(outcome, loss_before=measured[0], norm=measured[1], labels=measured[2])

    def ping(self) -> Message:
        """Start the child if needed; its thread count, resource limits, seccomp state,
        and ``pid``: the host pid of the process the node started (``bwrap`` in the jail)."""
        reply = self._call({"op": "ping"}, self.limits.start_timeout, _SMALL_REPLY, "ping")
        with self._lock:
            if self._child is not None:
                reply["pid"] = self._child.proc.pid
        return reply

    def probe_network(self, host: str, port: int) -> str | None:
        """Try a TCP connect from inside the sandbox: None if it connected, else why not."""
        request = {"op": "probe_network", "host": str(host), "port": operator.index(port)}
        reply = self._call(request, self.limits.call_timeout, _SMALL_REPLY, "network probe")
        return None if reply.get("connected") is True else str(reply.get("error", "no connection"))

    def run_probe(self, code: str) -> str:
        """Tests only: run Python ``code`` in the child as a hostile step would; ``result``.

        The worker refuses this (``SandboxRefused``) unless ``_worker_flags`` asks
        for ``--test-probes``, which only a test's subclass does.
        """
        reply = self._call(
            {"op": "probe", "code": code}, self.limits.call_timeout, _SMALL_REPLY, "probe"
        )
        return str(reply.get("result"))

    def _worker_flags(self) -> list[str]:
        """Extra worker arguments; a test's subclass adds ``--test-probes``."""
        return []

    def close(self) -> None:
        """Stop the child (it exits when its stdin closes) and remove its directory."""
        with self._lock:
            if self._child is not None:
                self._child.close()
                self._child = None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- one call --------------------------------------------------------------

    def _call(self, request: Message, timeout: float, max_reply: int, what: str) -> Message:
        frame = encode(request)
        with self._lock:
            if self._child is not None and self._child.proc.poll() is not None:
                log.warning(
                    "the sandbox had ended (%s); starting a fresh one", self._child.exit_reason()
                )
                self._discard()
            child = self._child or self._start()
            if not child.can_afford(self.limits.cpu_seconds):
                log.info("replacing the sandbox: its lifetime CPU budget is spent")
                self._discard()
                child = self._start()
            return self._exchange(child, frame, timeout, max_reply, what)

    def _start(self) -> Child:
        prefix = self._isolation_prefix()
        command = [
            sys.executable,
            "-s",
            "-B",
            "-m",
            "tessera.sandbox.worker",
            "--threads",
            str(self.limits.threads),
            "--catalogue",
            self.catalogue.to_json(),
            "--seccomp",
            self._isolate,
            *self._worker_flags(),
        ]
        child = Child(prefix, command, self.limits)
        self._child = child
        ping = encode({"op": "ping"})
        self._exchange(child, ping, self.limits.start_timeout, _SMALL_REPLY, "starting the sandbox")
        return child

    def _exchange(
        self, child: Child, frame: bytes, timeout: float, max_reply: int, what: str
    ) -> Message:
        try:
            reply = child.exchange(frame, timeout, max_reply)
        except TimedOut:
            self._discard()
            raise SandboxError(f"{what} timed out after {timeout:g} s") from None
        except Gone:
            reason = child.exit_reason()
            self._discard()
            raise SandboxError(f"{what} failed: {reason}") from None
        except FrameError as exc:
            self._discard()
            raise SandboxError(f"the sandbox broke the protocol: {exc}") from None
        if child.out_of_step:
            self._discard()
        ok = reply.get("ok")
        if ok is True:
            return reply
        if ok is not False:
            self._discard()
            raise SandboxError("the sandbox sent a reply without 'ok'")
        raise self._failure(reply)

    def _failure(self, reply: Message) -> Exception:
        kind, error = reply.get("kind"), str(reply.get("error", "unknown error"))
        if kind == "refused":
            return SandboxRefused(error)
        if kind == "config":
            return ConfigError(str(reply.get("field", "job")), error)
        if kind == "data":
            return DataError(error)
        if kind == "memory":
            self._discard()  # a fresh child rather than a fragmented heap
            limit = size_text(self.limits.memory_bytes)
            return SandboxError(
                f"training failed: the sandbox exceeded its memory limit of {limit} ({error})"
            )
        if kind == "invalid":
            return SandboxError(f"the sandbox rejected a malformed request: {error}")
        return SandboxError(f"training failed in the sandbox: {error}")

    def _discard(self) -> None:
        if self._child is not None:
            self._child.kill()
            self._child = None

    def _isolation_prefix(self) -> list[str]:
        if self._prefix is None:
            prefix, problem = find_isolation()
            if prefix is not None:
                self._prefix = prefix
            elif self._isolate == "required":
                raise SandboxError(f"sandbox isolation is unavailable: {problem}. {HOW_TO_ISOLATE}")
            else:
                log.warning("training WITHOUT the sandbox's namespaces: %s", problem)
                self._prefix = []
        return self._prefix


def _targets(y: npt.ArrayLike) -> npt.NDArray[np.int64] | npt.NDArray[np.float32]:
    """Labels as int64 or regression targets as float32, the two dtypes the worker takes."""
    arr = np.ascontiguousarray(y)
    if arr.ndim < 1:
        raise DataError("y must hold one entry per record")
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32)
    raise DataError(f"y must be integer labels or float targets, got {arr.dtype}")

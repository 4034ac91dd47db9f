"""The child side of the sandbox: ``python -m tessera.sandbox.worker``.

Theory of operation. The parent (``runner.py``) starts this module inside
fresh user and network namespaces and lowers its resource limits before
sending anything. It then reads one request frame from stdin, answers with
one reply frame on stdout, and repeats until stdin closes. The worker trusts
no byte it reads: every field is checked for type, size and shape before use,
the model comes only as a declarative ``ModelSpec`` (JSON) with raw float32
weights, and the job is checked against the node's catalogue again here.

Every well-framed request gets a reply, ``{"ok": True, ...}`` or
``{"ok": False, "kind": ..., "error": ...}``; ``kind`` tells the parent whose
fault it was (``invalid``: a malformed request; ``refused``: outside the
catalogue; ``config``/``data``: the job or the records; ``memory``: the memory
limit; ``failed``: anything else). A framing error (truncated or oversized)
desynchronises the stream, so the worker replies once and exits.

Stray output would corrupt the protocol, so the protocol keeps private copies
of fds 0 and 1, fd 1 is pointed at stderr and fd 0 at /dev/null. The worker
may write no file (RLIMIT_FSIZE 0), yet torch's lazy imports (``torch.func``
pulls in dynamo) call ``tempfile.gettempdir()``, whose first call proves a
directory writable by writing to it; naming the temp directory up front skips
that probe.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import socket
import sys
import tempfile
from typing import BinaryIO, TypeVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load

from tessera.errors import ConfigError, DataError
from tessera.sandbox.catalogue import NodeCatalogue
from tessera.sandbox.errors import FrameError, SandboxRefused
from tessera.sandbox.frames import MAX_FRAME_BYTES, Message, decode, encode, read_body
from tessera.sandbox.syscalls import install as install_syscall_filter
from tessera.training.batched import BatchedTrainer
from tessera.training.recipe import MAX_ROUNDS, Recipe
from tessera.training.spec import ModelSpec, layout

TRAIN_FIELDS = frozenset(
    {"op", "spec", "recipe", "x", "y", "weights", "seed", "shuffle_id", "prox_mu", "round"}
    | {"quality"}
)
MAX_ERROR_CHARS = 2000
PROBE_TIMEOUT = 2.0
_LIMITS = {
    "as": resource.RLIMIT_AS,
    "cpu": resource.RLIMIT_CPU,
    "nofile": resource.RLIMIT_NOFILE,
    "fsize": resource.RLIMIT_FSIZE,
    "core": resource.RLIMIT_CORE,
    "nproc": resource.RLIMIT_NPROC,
}
_state = {"seccomp": False, "cpu_call": 0}

T = TypeVar("T")


class _Invalid(ValueError):
    """The request itself is malformed."""


def _error(kind: str, message: str, **extra: object) -> Message:
    return {"ok": False, "kind": kind, "error": message[:MAX_ERROR_CHARS], **extra}


def _only(request: Message, allowed: frozenset[str]) -> None:
    unknown = sorted(set(request) - allowed)
    if unknown:
        raise _Invalid(f"unknown fields {unknown}")
    missing = sorted(allowed - set(request))
    if missing:
        raise _Invalid(f"missing fields {missing}")


def _typed(request: Message, key: str, kind: type[T]) -> T:
    value = request.get(key)
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise _Invalid(f"{key} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _int(request: Message, key: str, lo: int, hi: int) -> int:
    value: int = _typed(request, key, int)
    if not lo <= value <= hi:
        raise _Invalid(f"{key} must lie in [{lo}, {hi}], got {value}")
    return value


def _array(request: Message, key: str, dtypes: tuple[type, ...]) -> np.ndarray:
    """One array named ``key`` from safetensors bytes."""
    try:
        tensors = load(_typed(request, key, bytes))
    except SafetensorError as exc:
        raise _Invalid(f"{key} is not a valid safetensors payload ({exc})") from None
    if set(tensors) != {key}:
        raise _Invalid(f"{key} must hold exactly one tensor named {key!r}, got {sorted(tensors)}")
    arr = tensors[key]
    if arr.dtype.type not in dtypes or arr.ndim < 1:
        raise _Invalid(f"{key} has dtype {arr.dtype} and shape {arr.shape}")
    return arr


def _train(request: Message, catalogue: NodeCatalogue) -> Message:
    _only(request, TRAIN_FIELDS)
    spec = ModelSpec.from_json(_typed(request, "spec", str))
    recipe = Recipe.from_json(_typed(request, "recipe", str))
    x = _array(request, "x", (np.float32,))
    catalogue.check(spec, recipe, len(x))
    y = _array(request, "y", (np.int64, np.float32))
    raw = _typed(request, "weights", bytes)
    size = layout(spec).size
    if len(raw) != 4 * size:
        raise _Invalid(f"weights hold {len(raw):,} bytes, expected {4 * size:,} (float32)")
    weights = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    seed = _int(request, "seed", -(1 << 63), (1 << 64) - 1)
    shuffle_id = _int(request, "shuffle_id", 0, (1 << 63) - 1)
    round_ = _int(request, "round", 0, MAX_ROUNDS)
    mu = request["prox_mu"]
    if mu is not None and (isinstance(mu, bool) or not isinstance(mu, float | int)):
        raise _Invalid(f"prox_mu must be a number or nil, got {type(mu).__name__}")
    quality = _typed(request, "quality", bool)
    trainer = BatchedTrainer(
        spec, recipe, x, y, np.array([0, len(x)]), shuffle_ids=np.array([shuffle_id])
    )
    result = trainer.train(
        weights, np.zeros(1, np.int64), seed, prox_mu=mu, round=round_, quality=quality
    )
    measured = None
    if result.loss_before is not None and result.norm is not None and result.labels is not None:
        measured = {
            "loss_before": float(result.loss_before[0]),
            "norm": float(result.norm[0]),
            "labels": [int(c) for c in result.labels[0]],
        }
    return {
        "ok": True,
        "delta": result.deltas[0].astype("<f4").tobytes(),
        "num_samples": int(result.num_samples[0]),
        "loss": float(result.loss[0]),
        "quality": measured,
    }


def _probe(request: Message) -> Message:
    """Try a TCP connection from inside the sandbox and report what happened."""
    _only(request, frozenset({"op", "host", "port"}))
    host: str = _typed(request, "host", str)
    if len(host) > 255:
        raise _Invalid("host is too long")
    port = _int(request, "port", 1, 65535)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT):
            return {"ok": True, "connected": True}
    except OSError as exc:
        return {"ok": True, "connected": False, "error": str(exc)}


def _probe_code(request: Message, allowed: bool) -> Message:
    """Tests only: run ``code`` here, as a hostile training step would, and return ``result``."""
    if not allowed:
        raise SandboxRefused("probes are for tests: this sandbox was not started with them")
    _only(request, frozenset({"op", "code"}))
    scope: dict[str, object] = {"__name__": "tessera_probe"}
    exec(_typed(request, "code", str), scope)  # the documented test entry point
    return {"ok": True, "result": str(scope.get("result"))}


def _ping(request: Message) -> Message:
    _only(request, frozenset({"op"}))
    limits = {name: list(resource.getrlimit(res)) for name, res in _LIMITS.items()}
    return {
        "ok": True,
        "pid": os.getpid(),
        "threads": torch.get_num_threads(),
        "limits": limits,
        "seccomp": _state["seccomp"],
    }


def _is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError)
        and ("can't allocate memory" in text or "not enough memory" in text)
    )


def handle(request: Message, catalogue: NodeCatalogue, *, probes: bool = False) -> Message:
    """The reply to one decoded request; never raises for bad input."""
    ops = {
        "train": lambda: _train(request, catalogue),
        "probe_network": lambda: _probe(request),
        "probe": lambda: _probe_code(request, probes),
    }
    op = request.get("op")
    try:
        if op == "ping":
            return _ping(request)
        if not isinstance(op, str) or op not in ops:
            return _error("invalid", f"unknown op {op!r}")
        return ops[op]()
    except _Invalid as exc:
        return _error("invalid", f"malformed {op} request: {exc}")
    except SandboxRefused as exc:
        return _error("refused", exc.reason)
    except ConfigError as exc:
        return _error("config", exc.message, field=exc.field)
    except DataError as exc:
        return _error("data", str(exc))
    except Exception as exc:  # report, never die: the parent decides what to do
        if _is_out_of_memory(exc):
            return _error("memory", f"out of memory ({exc})")
        return _error("failed", f"{type(exc).__name__}: {exc}")


def serve(
    reader: BinaryIO,
    writer: BinaryIO,
    catalogue: NodeCatalogue,
    *,
    max_frame: int = MAX_FRAME_BYTES,
    probes: bool = False,
) -> int:
    """Answer requests until the reader ends; returns the process exit status."""
    while True:
        try:
            body = read_body(reader, max_frame)
        except FrameError as exc:  # the stream cannot be resynchronised: answer once, stop
            _send(writer, _error("invalid", str(exc)))
            return 2
        except MemoryError:
            _send(writer, _error("memory", "out of memory while reading a request"))
            return 3
        if body is None:
            return 0
        _budget_call()
        try:
            reply = handle(decode(body), catalogue, probes=probes)
        except FrameError as exc:
            reply = _error("invalid", str(exc))
        if not _send(writer, {**reply, "cpu_left": _cpu_left()}):
            return 0


def _cpu_used() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return math.ceil(usage.ru_utime + usage.ru_stime)


def _budget_call() -> None:
    """Move the CPU soft limit to the time used so far plus one call's worth.

    RLIMIT_CPU counts the worker's whole life; its hard limit is the lifetime
    budget and a call that overruns its share gets SIGXCPU.
    """
    seconds = _state["cpu_call"]
    if seconds:
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        soft = _cpu_used() + seconds
        resource.setrlimit(resource.RLIMIT_CPU, (min(soft, hard), hard))


def _cpu_left() -> float:
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    return float("inf") if hard == resource.RLIM_INFINITY else float(hard - _cpu_used())


def set_limits(wanted: dict[str, int]) -> None:
    """Lower this process's limits, never raising one it already has lower."""
    _state["cpu_call"] = wanted.get("cpu_call", 0)
    for name, value in wanted.items():
        if name not in _LIMITS:
            continue
        res = _LIMITS[name]
        current = resource.getrlimit(res)[1]
        bound = value if current == resource.RLIM_INFINITY else min(value, current)
        resource.setrlimit(res, (bound, bound))


def _send(writer: BinaryIO, reply: Message) -> bool:
    """Write one reply; False when the parent has gone away."""
    try:
        try:
            frame = encode(reply)
        except MemoryError:
            frame = encode(_error("memory", "out of memory while encoding the reply"))
        writer.write(frame)
        writer.flush()
    except (BrokenPipeError, ValueError):  # ValueError: the pipe object was closed
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tessera.sandbox.worker")
    parser.add_argument("--catalogue", required=True, help="NodeCatalogue as JSON")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limits", default="{}", help="resource limits as JSON")
    parser.add_argument("--seccomp", choices=("required", "best_effort", "off"), default="required")
    parser.add_argument("--test-probes", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    set_limits(json.loads(args.limits))
    catalogue = NodeCatalogue.from_json(args.catalogue)
    tempfile.tempdir = os.environ.get("TMPDIR") or os.getcwd()
    torch.set_num_threads(max(1, args.threads))
    torch.set_num_interop_threads(1)
    reader = os.fdopen(os.dup(0), "rb")
    writer = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    if args.seccomp != "off":
        try:
            install_syscall_filter()
            _state["seccomp"] = True
        except (OSError, RuntimeError) as exc:
            if args.seccomp == "required":
                print(f"the syscall filter could not be loaded: {exc}", file=sys.stderr)
                return 4
            print(f"training WITHOUT the syscall filter: {exc}", file=sys.stderr)
    with reader, writer:
        return serve(reader, writer, catalogue, probes=args.test_probes)


if __name__ == "__main__":
    sys.exit(main())

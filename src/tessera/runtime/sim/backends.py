"""Where the simulator does its virtual nodes' heavy, pure work: here, in processes, or on Ray.

Theory of operation: the simulator plays every node on one thread, so one
``tessera run`` used one core. Most of a secure round's time is node
cryptography that depends on nothing but its inputs and the nodes' keys: a
contributor's sharing step (``protocol.sharing_job``: encode, split, seal k
envelopes) and each aggregator's opening of the shares sealed for it
(``protocol.wire.open_checked``: signature, key agreement, decryption). A
``Backend`` runs that work in batches on other cores, ahead of the virtual
time it is needed: one ``NodeWork`` per contributor does its sharing and
then opens each of its envelopes as its aggregator would. The simulator
hands the results in (``LocalUpdateReady.shared``; the aggregators'
``Openings``); every other sealed message sent to a node (sums, evidence,
commitments) is opened ahead the same way (``OpenJob``), between its send and
its delivery. Each machine takes them only if they were made for
exactly the step it is about to take, so the protocol, its checks and its
results are those of the in-process run (``inprocess``, no backend: every
step done by the machine itself, on this thread).

Payloads stay small: a worker gets the job seed and the public directory
once, re-derives any node's keys from the seed (``simulation_keys``, as
``build_secure`` does; never a deployment's keys), and each task carries one
node's vector and tree seats. Nothing in a task draws from process state:
the rounding and noise coins are keyed by (node keys, job, round); the masks
and envelope nonces are fresh OS randomness (the masks cancel in the total), so
the aggregate and the model are the same on every backend.

Backends: ``processes`` (``workers`` local processes, spawned: no fork of a
process holding torch) and ``ray`` (``workers`` actors on a Ray cluster: a
local instance this process starts, or an existing one at ``address``; Ray is
imported only then). Neither changes the simulation's virtual times; both
are incompatible with charging compute (the work done elsewhere would go
uncounted).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from tessera.crypto.envelope import Envelope, peek
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.errors import ConfigError, InvalidEnvelope
from tessera.ids import NodeId
from tessera.protocol.limits import MAX_ENVELOPE_BYTES
from tessera.protocol.sharing_job import ShareJob, share
from tessera.protocol.wire import open_checked
from tessera.runtime.sim.secure import simulation_keys

BACKENDS = ("inprocess", "processes", "ray")


@dataclass(frozen=True)
class WorkerContext:
    """What every worker gets once: the seed its nodes' keys derive from, the directory."""

    seed: int
    directory: Mapping[NodeId, PublicKeys]


# One node's work done: its envelopes, and each opened for its aggregator (None where
# opening failed: the aggregator then opens it and says why).
NodeDone = tuple[tuple[bytes, ...], tuple[Envelope | None, ...]]


# A sealed envelope to open as its recipient would: (recipient, envelope bytes, job id).
OpenJob = tuple[NodeId, bytes, str]


class Pending(Protocol):
    def result(self) -> Any: ...


class Backend(Protocol):
    """Runs batches of ``ShareJob``s elsewhere; ``start`` once before, ``close`` after."""

    name: str
    workers: int

    def start(self, context: WorkerContext) -> None: ...

    def submit(self, batch: Sequence[ShareJob]) -> Pending: ...

    def submit_opens(self, batch: Sequence[OpenJob]) -> Pending: ...

    def close(self) -> None: ...


class _Worker:
    """A worker's state: the context, and the keys it derived so far."""

    def __init__(self, context: WorkerContext) -> None:
        self.context = context
        self._keys: dict[str, NodeKeys] = {}

    def keys(self, node: str) -> NodeKeys:
        found = self._keys.get(node)
        if found is None:
            found = self._keys[node] = simulation_keys(self.context.seed, node)
        return found

    def run(self, batch: Sequence[ShareJob]) -> list[NodeDone]:
        return [self.one(job) for job in batch]

    def open_many(self, batch: Sequence[OpenJob]) -> list[Envelope | None]:
        """Open each envelope as its recipient's aggregator would, in the round its
        header names (None: it does not open; the machine will say why)."""
        out: list[Envelope | None] = []
        for recipient, data, job_id in batch:
            try:
                out.append(
                    open_checked(
                        data,
                        node=recipient,
                        job_id=job_id,
                        keys=self.keys(recipient),
                        directory=self.context.directory,
                        round=peek(data).round,
                        max_bytes=MAX_ENVELOPE_BYTES,
                        replay=None,
                    )
                )
            except InvalidEnvelope:
                out.append(None)
        return out

    def one(self, job: ShareJob) -> NodeDone:
        directory = self.context.directory
        done = share(job, self.keys(job.node), directory)
        opened: list[Envelope | None] = []
        for aggregator, data in zip(job.aggregators, done.envelopes, strict=True):
            try:
                opened.append(
                    open_checked(
                        data,
                        node=aggregator,
                        job_id=job.job_id,
                        keys=self.keys(aggregator),
                        directory=directory,
                        round=job.round,
                        max_bytes=MAX_ENVELOPE_BYTES,
                        replay=None,
                    )
                )
            except InvalidEnvelope:
                opened.append(None)
        return done.envelopes, tuple(opened)


_PROCESS_WORKER: _Worker | None = None  # a pool process's own


def _process_init(context: WorkerContext) -> None:
    global _PROCESS_WORKER  # noqa: PLW0603 -- one per pool process, set by its initializer
    _PROCESS_WORKER = _Worker(context)


def _process_run(batch: Sequence[ShareJob]) -> list[NodeDone]:
    assert _PROCESS_WORKER is not None
    return _PROCESS_WORKER.run(batch)


def _process_open(batch: Sequence[OpenJob]) -> list[Envelope | None]:
    assert _PROCESS_WORKER is not None
    return _PROCESS_WORKER.open_many(batch)


class ProcessBackend:
    """``workers`` local processes (spawned), each holding the context once."""

    name = "processes"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._pool: ProcessPoolExecutor | None = None

    def start(self, context: WorkerContext) -> None:
        self._pool = ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_process_init,
            initargs=(context,),
        )

    def submit(self, batch: Sequence[ShareJob]) -> Pending:
        assert self._pool is not None, "start the backend first"
        future: Future[list[NodeDone]] = self._pool.submit(_process_run, list(batch))
        return future

    def submit_opens(self, batch: Sequence[OpenJob]) -> Pending:
        assert self._pool is not None, "start the backend first"
        future: Future[list[Envelope | None]] = self._pool.submit(_process_open, list(batch))
        return future

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


class _RayPending:
    def __init__(self, get: Callable[[Any], Any], ref: Any) -> None:
        self._get, self._ref = get, ref

    def result(self) -> Any:
        return self._get(self._ref)


class RayBackend:
    """``workers`` Ray actors (one CPU each) on the cluster at ``address``; without an
    address, the Ray instance this process already started, else a local one it starts
    (and stops on ``close``)."""

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        self._ray = import_ray()
        self.address = address
        self._workers = workers
        self.workers = workers or 0
        self._actors: list[Any] = []
        self._next = 0
        self._started = False

    def start(self, context: WorkerContext) -> None:
        ray = self._ray
        if not ray.is_initialized():
            if self.address is None:  # a local instance: on loopback, no dashboard
                ray.init(
                    num_cpus=self._workers or os.cpu_count() or 1,
                    include_dashboard=False,
                    _node_ip_address="127.0.0.1",
                    log_to_driver=False,
                )
            else:
                ray.init(address=self.address, log_to_driver=False)
            self._started = True
        if not self.workers:
            self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        actor = ray.remote(num_cpus=1)(_Worker)
        shared = ray.put(context)  # once in the object store, not once per actor
        self._actors = [actor.remote(shared) for _ in range(self.workers)]

    def submit(self, batch: Sequence[ShareJob]) -> Pending:
        actor = self._actors[self._next % len(self._actors)]
        self._next += 1
        return _RayPending(self._ray.get, actor.run.remote(list(batch)))

    def submit_opens(self, batch: Sequence[OpenJob]) -> Pending:
        actor = self._actors[self._next % len(self._actors)]
        self._next += 1
        return _RayPending(self._ray.get, actor.open_many.remote(list(batch)))

    def close(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors = []
        if self._started:
            self._ray.shutdown()
            self._started = False


def import_ray() -> Any:
    """Ray, imported now (it is slow, and optional); a clear error when absent."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--backend", "ray needs Ray: pip install 'tessera[ray]' (ray==2.60.0)"
        ) from None
    return ray


def make_backend(
    name: str, *, workers: int | None = None, address: str | None = None
) -> Backend | None:
    """The backend ``name`` (None for ``inprocess``: every step on this thread)."""
    if name not in BACKENDS:
        raise ConfigError("--backend", f"{name!r}: choose one of {', '.join(BACKENDS)}")
    if workers is not None and workers < 1:
        raise ConfigError("--workers", f"{workers}: at least 1")
    if address is not None and name != "ray":
        raise ConfigError("--address", f"a Ray cluster's address: use --backend ray, not {name}")
    if name == "inprocess":
        if workers is not None:
            raise ConfigError(
                "--workers", "inprocess runs on this process: workers are for processes or ray"
            )
        return None
    if name == "processes":
        return ProcessBackend(workers)
    return RayBackend(workers, address)

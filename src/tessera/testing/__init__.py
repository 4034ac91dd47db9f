"""Tessera's public testing kit: the pieces its own tests are built from.

- ``MiniFederation`` (+ ``plaintext_federation``, ``secure_federation``,
  ``fixed_updates``, ``Update``): real machines in real hosts on an
  in-memory network, driven step by step;
- ``ManualClock`` and ``InMemoryNetwork`` (+ ``Wire``, ``partition``): the
  hosts' clock and outbox for such tests;
- ``TableTrainer``: the simulator's trainer, with updates a test can sum by hand,
  and ``table_rounds``: secure rounds over it in the simulator, in one call;
- ``chem97_job``, ``example_config``: real data, offline;
- adversaries: ``TamperingAggregator``, ``SilentAggregator``,
  ``TruncatingContributor``, ``UnclippedContributor``, ``Replaying``, ``replay``;
- ``tessera.testing.provider``: the real data-provider service on loopback
  over a job's records (``serve_provider``; imported apart: it loads the web stack);
- ``tessera.testing.strategies``: hypothesis strategies (needs hypothesis);
- ``tessera.testing.postgres``: a private PostgreSQL server a test may stop,
  crash and restart (``PostgresCluster``; needs PostgreSQL's initdb and pg_ctl);
- ``tessera.testing.netns``: a deployment's parties each in a network namespace
  of its own, whose links a test cuts, makes lossy or caps (``FaultNetwork``;
  needs root, iproute2 and nftables).

docs/testing.md shows how to test a strategy of your own with them.
"""

from tessera.testing.adversaries import (
    Replaying,
    SilentAggregator,
    TamperingAggregator,
    TruncatingContributor,
    UnclippedContributor,
    replay,
)
from tessera.testing.clock import ManualClock
from tessera.testing.data import chem97_job, example_config
from tessera.testing.federation import (
    MiniFederation,
    Update,
    fixed_updates,
    plaintext_federation,
    secure_federation,
)
from tessera.testing.network import InMemoryNetwork, Wire, partition
from tessera.testing.rounds import table_rounds
from tessera.testing.trainers import QuadraticTrainer, TableTrainer

__all__ = [
    "InMemoryNetwork",
    "ManualClock",
    "MiniFederation",
    "QuadraticTrainer",
    "Replaying",
    "SilentAggregator",
    "TableTrainer",
    "TamperingAggregator",
    "TruncatingContributor",
    "UnclippedContributor",
    "Update",
    "Wire",
    "chem97_job",
    "example_config",
    "fixed_updates",
    "partition",
    "plaintext_federation",
    "replay",
    "secure_federation",
    "table_rounds",
]

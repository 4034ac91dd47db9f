"""Tessera's public testing kit: the pieces its own tests are built from.

- ``MiniFederation`` (+ ``plaintext_federation``, ``secure_federation``,
  ``fixed_updates``): real machines in real hosts on an in-memory network,
  driven step by step;
- ``ManualClock`` and ``InMemoryNetwork`` (+ ``partition``): the hosts'
  clock and outbox for such tests;
- ``chem97_job``, ``example_config``: real data, offline;
- adversaries: ``TamperingAggregator``, ``SilentAggregator``,
  ``TruncatingContributor``, ``replay``;
- ``tessera.testing.strategies``: hypothesis strategies (needs hypothesis).

docs/testing.md shows how to test a strategy of your own with them.
"""

from tessera.testing.adversaries import (
    SilentAggregator,
    TamperingAggregator,
    TruncatingContributor,
    replay,
)
from tessera.testing.clock import ManualClock
from tessera.testing.data import chem97_job, example_config
from tessera.testing.federation import (
    MiniFederation,
    fixed_updates,
    plaintext_federation,
    secure_federation,
)
from tessera.testing.network import InMemoryNetwork, Wire, partition

__all__ = [
    "InMemoryNetwork",
    "ManualClock",
    "MiniFederation",
    "SilentAggregator",
    "TamperingAggregator",
    "TruncatingContributor",
    "Wire",
    "chem97_job",
    "example_config",
    "fixed_updates",
    "partition",
    "plaintext_federation",
    "replay",
    "secure_federation",
]

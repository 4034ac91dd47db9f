"""Sans-I/O protocol core: role machines fed events and ``now``, returning effects.

No sockets, clocks, threads, torch or databases here; runtimes carry effects out.
"""

from tessera.protocol.contributor import Contributor
from tessera.protocol.coordinator import Coordinator, select_cohort
from tessera.protocol.params import RoundParams
from tessera.protocol.strategies import STRATEGIES, Strategy, make_strategy

__all__ = [
    "STRATEGIES",
    "Contributor",
    "Coordinator",
    "RoundParams",
    "Strategy",
    "make_strategy",
    "select_cohort",
]

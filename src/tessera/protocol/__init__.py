"""Sans-I/O protocol core: role machines fed events and ``now``, returning effects.

No sockets, clocks, threads, torch or databases here; runtimes carry effects out.
Plaintext rounds: ``Coordinator`` + ``Contributor``. Secure rounds:
``SecureCoordinator`` + ``Node`` (a ``Contributor`` with a ``SecureContext`` and
an ``Aggregator``), over the tree of ``protocol.topology``.
"""

from tessera.protocol.aggregator import Aggregator
from tessera.protocol.contributor import Contributor, SecureContext
from tessera.protocol.coordinator import Coordinator, select_cohort
from tessera.protocol.node import Node
from tessera.protocol.params import RoundParams
from tessera.protocol.secure_coordinator import SecureCoordinator, SecureParams
from tessera.protocol.strategies import STRATEGIES, Strategy, make_strategy
from tessera.protocol.topology import Tree, TreeParams, derive_tree, verify_tree
from tessera.protocol.treecheck import TreeCheck

__all__ = [
    "STRATEGIES",
    "Aggregator",
    "Contributor",
    "Coordinator",
    "Node",
    "RoundParams",
    "SecureContext",
    "SecureCoordinator",
    "SecureParams",
    "Strategy",
    "Tree",
    "TreeCheck",
    "TreeParams",
    "derive_tree",
    "make_strategy",
    "select_cohort",
    "verify_tree",
]

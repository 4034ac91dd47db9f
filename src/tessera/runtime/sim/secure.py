"""Wire a secure simulated federation: real keys, real sealing, real bytes.

Every virtual node gets its own long-term keys (derived from the job seed so
runs repeat; a deployment generates them with ``NodeKeys.generate``), a
contributor and an aggregator machine. The directory of public keys is what
the coordinator's node registry will hold in a deployment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.ids import COORDINATOR, NodeId
from tessera.protocol.aggregator import Aggregator
from tessera.protocol.contributor import Contributor, SecureContext
from tessera.protocol.node import Node
from tessera.protocol.params import RoundParams
from tessera.protocol.secure_coordinator import SecureCoordinator, SecureParams
from tessera.protocol.strategies import Strategy
from tessera.protocol.treecheck import TreeCheck
from tessera.weights import Vector


def simulation_keys(seed: int, name: str) -> NodeKeys:
    """Deterministic keys for a virtual node (simulation only, never production)."""
    return NodeKeys.from_seed(hashlib.sha256(f"tessera-sim|{seed}|{name}".encode()).digest())


def build_secure(
    node_ids: Sequence[NodeId],
    *,
    params: RoundParams,
    secure: SecureParams,
    initial_weights: Vector,
    strategy: Strategy,
    seed: int,
    organisations: Sequence[str | None] | None = None,
) -> tuple[SecureCoordinator, list[Node]]:
    """Keys, a contributor and an aggregator for every node, and the coordinator."""
    keys = [simulation_keys(seed, n) for n in node_ids]
    coordinator_keys = simulation_keys(seed, COORDINATOR)
    directory: dict[NodeId, PublicKeys] = {n: k.public for n, k in zip(node_ids, keys, strict=True)}
    directory[COORDINATOR] = coordinator_keys.public
    # Every node checks the tree it is handed; in one process they share the derivation.
    orgs = dict(zip(node_ids, organisations, strict=True)) if organisations else None
    check = TreeCheck(
        params,
        node_ids,
        secure.tree,
        orgs,
        audit=(secure.audit, secure.audit_fraction),
        beacon=secure.beacon,
        statistics=0 if secure.statistics is None else secure.statistics.rounds,
        group_sums=secure.disclosure,
    )
    nodes = [
        Node(
            Contributor(
                n,
                params.job_id,
                SecureContext(
                    keys=k,
                    directory=directory,
                    tree_check=check,
                    privacy=secure.privacy,
                ),
            ),
            Aggregator(n, params.job_id, k, directory, check),
        )
        for n, k in zip(node_ids, keys, strict=True)
    ]
    coordinator = SecureCoordinator(
        params,
        node_ids,
        initial_weights,
        strategy,
        secure=secure,
        keys=coordinator_keys,
        directory=directory,
        organisations=orgs,
    )
    return coordinator, nodes

"""The simulated network's links: latency, and each party's shared up- and downlink.

Theory of operation: without contention every message travels alone, at
``latency + size / rate``, however many others share its ends. With it,
each party has one uplink and one downlink, each a first-in-first-out queue
of capacity at its rate: a message leaves when the sender's uplink is free,
takes its turn on the recipient's downlink after the latency, and arrives
when both have carried it (the stages overlap, as a stream does; a fast
downlink takes several slow uplinks' streams at once). So a coordinator downloading N updates
takes N times one update's transfer on its own link, and a plaintext round
pays for its one-hop fan-in as a secure round pays for its tree.

A node's uplink and downlink run at ``node_rate`` unless ``up_rates`` and
``down_rates`` give that node its own (a device profile's asymmetric links);
the coordinator's, both ways, is ``coordinator_rate``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tessera.ids import COORDINATOR, NodeId


@dataclass
class Links:
    latency: float  # seconds, one way
    node_rate: float  # bytes per second, each way, of a node's link
    coordinator_rate: float | None = None  # the coordinator's (a server's); None: a node's
    contention: bool = False  # False: every message has the whole rate to itself
    up_rates: Mapping[NodeId, float] = field(default_factory=dict)  # a node's own uplink
    down_rates: Mapping[NodeId, float] = field(default_factory=dict)  # its own downlink
    _up_free: dict[NodeId, float] = field(default_factory=dict, repr=False)
    _down_free: dict[NodeId, float] = field(default_factory=dict, repr=False)

    def rate(self, party: NodeId) -> float:
        if party == COORDINATOR and self.coordinator_rate is not None:
            return self.coordinator_rate
        return self.node_rate

    def up_rate(self, party: NodeId) -> float:
        own = self.up_rates.get(party)
        return self.rate(party) if own is None else own

    def down_rate(self, party: NodeId) -> float:
        own = self.down_rates.get(party)
        return self.rate(party) if own is None else own

    def arrival(self, now: float, sender: NodeId, recipient: NodeId, size: int) -> float:
        """When ``size`` bytes sent by ``sender`` at ``now`` are all at ``recipient``."""
        if not self.contention:
            return now + self.latency + size / min(self.up_rate(sender), self.down_rate(recipient))
        up_start = max(now, self._up_free.get(sender, 0.0))
        up_end = up_start + size / self.up_rate(sender)
        self._up_free[sender] = up_end
        # The downlink is busy for size / its rate; a stream from a slower uplink still
        # ends only after its last byte left the sender (concurrent streams share it).
        down_start = max(up_start + self.latency, self._down_free.get(recipient, 0.0))
        self._down_free[recipient] = down_start + size / self.down_rate(recipient)
        return max(self._down_free[recipient], up_end + self.latency)

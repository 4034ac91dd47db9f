"""The simulated links: with contention, a party's messages share its link."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.ids import COORDINATOR, NodeId
from tessera.runtime.sim.links import Links


def test_without_contention_every_message_has_the_whole_rate() -> None:
    links = Links(latency=0.05, node_rate=1e6)
    arrivals = [links.arrival(0.0, NodeId(f"n{i}"), COORDINATOR, 1_000_000) for i in range(10)]
    assert arrivals == [1.05] * 10


def test_a_coordinator_taking_n_updates_at_once_takes_n_transfers() -> None:
    links = Links(latency=0.05, node_rate=1e6, coordinator_rate=4e6, contention=True)
    arrivals = [links.arrival(0.0, NodeId(f"n{i}"), COORDINATOR, 1_000_000) for i in range(8)]
    # each node's uplink sends its megabyte in 1 s; the coordinator's downlink takes
    # them at 4 MB/s, one after another, once the first has crossed
    assert arrivals[0] == 0.05 + 1.0
    assert abs(arrivals[-1] - (0.05 + 8 / 4)) < 1e-9  # 8 MB at its 4 MB/s


def test_one_sender_s_messages_queue_on_its_uplink() -> None:
    links = Links(latency=0.1, node_rate=1e6, contention=True)
    a = links.arrival(0.0, NodeId("s"), NodeId("r1"), 500_000)
    b = links.arrival(0.0, NodeId("s"), NodeId("r2"), 500_000)
    assert (a, b) == (0.6, 1.1)


@settings(max_examples=50, deadline=None)
@given(
    sends=st.lists(
        st.tuples(st.floats(0, 5), st.integers(0, 3), st.integers(0, 2), st.integers(1, 10**6)),
        min_size=1,
        max_size=30,
    )
)
def test_contention_never_beats_a_lone_message_nor_a_link_s_rate(sends) -> None:
    shared = Links(latency=0.05, node_rate=1e6, coordinator_rate=8e6, contention=True)
    alone = Links(latency=0.05, node_rate=1e6, coordinator_rate=8e6)
    names = [COORDINATOR, NodeId("a"), NodeId("b"), NodeId("c")]
    into: dict[NodeId, list[tuple[float, float, int]]] = {}  # recipient -> (sent, at, size)
    for now, s, r, size in sorted(sends):
        sender, recipient = names[s], names[(s + 1 + r) % 4]
        at = shared.arrival(now, sender, recipient, size)
        assert at >= alone.arrival(now, sender, recipient, size) - 1e-9
        into.setdefault(recipient, []).append((now, at, size))
    for recipient, got in into.items():
        first = min(now for now, _, _ in got)
        total = sum(size for _, _, size in got)
        last = max(at for _, at, _ in got)
        assert last >= first + 0.05 + total / shared.rate(recipient) - 1e-9


class _MainLinks:
    """The links as they were before device profiles (one rate per node), kept to
    check that a simulation without per-node rates is unchanged to the bit."""

    def __init__(self, latency: float, node_rate: float, coordinator_rate: float) -> None:
        self.latency, self.node_rate, self.coordinator_rate = latency, node_rate, coordinator_rate
        self.up_free: dict[NodeId, float] = {}
        self.down_free: dict[NodeId, float] = {}

    def rate(self, party: NodeId) -> float:
        return self.coordinator_rate if party == COORDINATOR else self.node_rate

    def arrival(self, now: float, sender: NodeId, recipient: NodeId, size: int, c: bool) -> float:
        if not c:
            return now + self.latency + size / min(self.rate(sender), self.rate(recipient))
        up_start = max(now, self.up_free.get(sender, 0.0))
        up_end = up_start + size / self.rate(sender)
        self.up_free[sender] = up_end
        down_start = max(up_start + self.latency, self.down_free.get(recipient, 0.0))
        self.down_free[recipient] = down_start + size / self.rate(recipient)
        return max(self.down_free[recipient], up_end + self.latency)


@settings(max_examples=50, deadline=None)
@given(
    contention=st.booleans(),
    sends=st.lists(
        st.tuples(st.floats(0, 5), st.integers(0, 3), st.integers(0, 2), st.integers(1, 10**6)),
        min_size=1,
        max_size=30,
    ),
)
def test_without_own_rates_every_arrival_is_as_before(contention, sends) -> None:
    links = Links(latency=0.05, node_rate=1e6, coordinator_rate=8e6, contention=contention)
    before = _MainLinks(0.05, 1e6, 8e6)
    names = [COORDINATOR, NodeId("a"), NodeId("b"), NodeId("c")]
    for now, s, r, size in sorted(sends):
        sender, recipient = names[s], names[(s + 1 + r) % 4]
        got = links.arrival(now, sender, recipient, size)
        assert got == before.arrival(now, sender, recipient, size, contention)  # exactly


@pytest.mark.parametrize("contention", [False, True])
def test_a_node_s_own_slower_uplink_delivers_its_upload_later(contention) -> None:
    slow, fast = NodeId("slow"), NodeId("fast")
    links = Links(
        latency=0.05,
        node_rate=1e6,
        coordinator_rate=1e9,
        contention=contention,
        up_rates={slow: 1e5, fast: 1e6},
        down_rates={slow: 1e7, fast: 1e7},
    )
    assert links.up_rate(slow) == 1e5 and links.down_rate(slow) == 1e7
    assert links.up_rate(COORDINATOR) == links.down_rate(COORDINATOR) == 1e9  # its own
    at_fast = links.arrival(0.0, fast, COORDINATOR, 100_000)
    at_slow = links.arrival(0.0, slow, COORDINATOR, 100_000)
    assert at_fast == pytest.approx(0.05 + 0.1)
    assert at_slow == pytest.approx(0.05 + 1.0)
    # its downlink is its own too: the model reaches it at its 10 MB/s, not 1 MB/s
    assert links.arrival(0.0, COORDINATOR, slow, 1_000_000) == pytest.approx(0.05 + 0.1)

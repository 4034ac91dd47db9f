"""Device profiles in the simulator: own links, availability over time, the default unchanged."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tessera.ids import COORDINATOR, JobId, NodeId
from tessera.protocol import Coordinator, RoundParams, make_strategy
from tessera.protocol.coordinator import select_cohort
from tessera.runtime.sim import DeviceModel, RoundStats, Simulation
from tessera.runtime.sim.devices import Availability
from tessera.testing import TableTrainer

P = 64
RATE = 1e5  # bytes/s: a node's link, each way, without a profile of its own


def simulate(devices: DeviceModel, *, n=20, rounds=3, fraction=1.0, contention=False, seed=1):
    """A plaintext job over ``n`` nodes; returns its rounds, and every message's
    (sender, recipient, message type, sent, arrived)."""
    samples = np.full(n, 10, np.int64)
    nodes = [NodeId(f"node-{i:06d}") for i in range(n)]
    params = RoundParams(
        job_id=JobId("j"), rounds=rounds, fraction=fraction, round_timeout=1e5, seed=seed
    )
    coord = Coordinator(params, nodes, np.zeros(P, np.float32), make_strategy("fedavg"))
    stats: list[RoundStats] = []
    sim = Simulation(
        coord,
        nodes,
        TableTrainer(samples, dim=P),
        devices,
        samples,
        local_epochs=1,
        seed=seed,
        latency=0.05,
        bandwidth_bytes_per_s=RATE,
        coordinator_bandwidth_bytes_per_s=1e9,
        contention=contention,
        on_round=stats.append,
    )
    sent: list[tuple[NodeId, NodeId, str, float, float]] = []
    arrival = sim.links.arrival

    def spy(now: float, sender: NodeId, recipient: NodeId, size: int) -> float:
        at = arrival(now, sender, recipient, size)
        sent.append((sender, recipient, size, now, at))
        return at

    sim.links.arrival = spy  # type: ignore[method-assign]
    sim.run()
    return stats, sent, nodes, params


def plain(n: int, **fields: object) -> DeviceModel:
    """Equal devices (no speed spread, no dropout); ``fields`` add a profile's parts."""
    base = DeviceModel.sample(n, dropout=0.0, speed_sigma=0.0, samples_per_second=50.0, seed=1)
    return replace(base, **fields)


@pytest.mark.parametrize("contention", [False, True])
def test_a_slower_uplink_makes_that_node_s_upload_arrive_later(contention: bool) -> None:
    n = 8
    up = np.full(n, RATE)
    up[3] = RATE / 10  # node 3's uplink: a tenth of the others'
    _, sent, nodes, _ = simulate(plain(n, up_rate=up, down_rate=np.full(n, RATE)), n=n, rounds=1)
    uploads = {s: (t0, t1, size) for s, r, size, t0, t1 in sent if r == COORDINATOR}
    slow, (t0, t1, size) = nodes[3], uploads[nodes[3]]
    assert t1 == pytest.approx(t0 + 0.05 + size / (RATE / 10))
    # every node trained equally long and sent the same bytes: only the link differs
    others = [uploads[node] for node in nodes if node != slow]
    assert all(o[2] == size and o[0] == pytest.approx(t0) for o in others)
    assert all(t1 > o[1] + 0.5 * size / RATE for o in others)


def test_own_downlinks_carry_the_model_at_each_node_s_rate() -> None:
    n = 4
    down = RATE * np.array([1.0, 2.0, 4.0, 8.0])
    _, sent, nodes, _ = simulate(plain(n, up_rate=np.full(n, RATE), down_rate=down), n=n, rounds=1)
    requests = {r: (t0, t1, size) for s, r, size, t0, t1 in sent if s == COORDINATOR}
    for node, rate in zip(nodes, down, strict=True):
        t0, t1, size = requests[node]
        assert t1 == pytest.approx(t0 + 0.05 + size / rate)


def offline_in(at: float, n: int, node: int, day: float = 1e6) -> Availability:
    """Everyone always online but ``node``, which is offline for a moment around ``at``."""
    width = 1e-3  # seconds
    opens, hours = np.zeros(n), np.full(n, 24.0)
    opens[node] = 24.0 * (at + width) / day
    hours[node] = 24.0 - 24.0 * 2 * width / day
    return Availability(opens=opens, hours=hours, day_seconds=day)


def test_a_node_offline_for_one_round_takes_part_again_once_back() -> None:
    n, node = 10, 4
    stats, sent, nodes, _ = simulate(plain(n), n=n)
    # when round 1's request reached the node, in a run with everyone online
    requests = [t1 for s, r, _, _, t1 in sent if s == COORDINATOR and r == nodes[node]]
    assert len(requests) == 3
    away = plain(n, availability=offline_in(requests[1], n, node))
    stats, *_ = simulate(away, n=n)
    included = [set(s.closed.included) for s in stats]
    assert nodes[node] in included[0] and nodes[node] in included[2]
    assert nodes[node] not in included[1]
    assert [s.dropped for s in stats] == [0, 1, 0]  # counted as dropped, not late
    assert [s.closed.participants for s in stats] == [n, n - 1, n]
    assert all(s.late == 0 for s in stats)


def test_every_round_selects_from_all_nodes_whoever_was_offline() -> None:
    n = 40
    # a short day: each node online 8 hours of it, windows spread round the clock
    opens = np.random.default_rng(2).uniform(0, 24, n)
    day = Availability(opens=opens, hours=np.full(n, 8.0), day_seconds=30.0)
    stats, sent, nodes, params = simulate(plain(n, availability=day), n=n, rounds=6, fraction=0.5)
    requests = [(rc, t1) for sd, rc, _, _, t1 in sent if sd == COORDINATOR]
    asked = {}  # (round, node) -> when the request reached it
    for r, s in enumerate(stats):
        cohort = select_cohort(params, nodes, r)  # from every node, each round
        assert s.closed.selected == len(cohort)
        for node, t1 in requests:
            if s.started_at <= t1 <= s.closed_at and node in cohort:
                asked[(r, node)] = t1
        online = {m for m in cohort if day.node_online(nodes.index(m), asked[(r, m)])}
        assert set(s.closed.included) == online
        assert s.dropped == len(cohort) - len(online)
    came_back = [
        m
        for r in range(len(stats) - 1)
        for m in set(select_cohort(params, nodes, r)) - set(stats[r].closed.included)
        if any(m in stats[q].closed.included for q in range(r + 1, len(stats)))
    ]
    assert came_back  # offline once, included in a later round


def test_without_a_profile_a_round_lasts_what_one_link_rate_says() -> None:
    # main's model, worked out by hand: each node's model download, its training
    # (0.2 s + samples / speed) and its upload, each over a link of the one rate
    n = 12
    devices = DeviceModel.sample(n, dropout=0.0, speed_sigma=0.5, samples_per_second=50.0, seed=3)
    stats, sent, nodes, _ = simulate(devices, n=n, rounds=2)
    for s in stats:
        down = {r: size for sd, r, size, t0, _ in sent if sd == COORDINATOR and t0 == s.started_at}
        up = {sd: size for sd, r, size, t0, _ in sent if r == COORDINATOR and t0 >= s.started_at}
        longest = max(
            0.05 + down[node] / RATE + devices.training_seconds(i, 10, 1) + 0.05 + up[node] / RATE
            for i, node in enumerate(nodes)
        )
        assert s.virtual_round_seconds == pytest.approx(longest, rel=1e-12)

"""Network faults between a deployment's parties: loss, slow links and partitions.

Every party runs in a network namespace of its own, joined by one bridge
(``tessera.testing.netns``); the faults act on a party's port of that
bridge, so they hit every connection it has, as a cut cable or a poor link
would. In each test the job must end with the model of an undisturbed run of
the same seed: the simulator replaying who took part in each round and whose
aggregator seats fell silent (tests/e2e/replay.py), bit for bit.

- Lossy, capped links: every frame to and from every party dropped at 3%,
  every node's uplink capped at 2 Mbit/s.
- A partitioned aggregator: a node holding an aggregator seat is cut off
  before that round opens; the seat goes to a backup, the round completes
  without it, and once the link is back the node takes part again.
- A partitioned coordinator: cut off from everyone for longer than a round's
  timeout, then back; the job resumes and ends, a round nobody reached
  recorded as skipped, with the reason.

- Delayed links: every node reaches the coordinator through a relay that
  holds each chunk 100 ms (up to 20 ms more, at random) each way. This
  kernel has no ``netem``, so the delay is made in userspace
  (``tessera.testing.latency``, as Toxiproxy makes it).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tessera.deploy.local import Deployment
from tessera.deploy.up import run_job
from tessera.jobs.prepared import round_params_of, secure_params_of
from tessera.jobs.records import RoundRecord
from tessera.protocol import TreeCheck
from tessera.runtime.transport.client import CoordinatorClient, ServiceRefused
from tessera.testing.latency import DelayRelay
from tessera.testing.netns import FaultNetwork, unavailable
from tessera.weights import Vector

from .replay import assert_replayed, replayable_job, simulation_keyed

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("one_deployment_at_a_time")]


@pytest.fixture
def net() -> Iterator[FaultNetwork]:
    why = unavailable()
    if why is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true needs the network fault tests: {why}")
        pytest.skip(why)
    with FaultNetwork() as network:
        yield network


class Watch(threading.Thread):
    """Polls the coordinator as the AI provider and calls ``act(status)`` until it
    returns True: the moment a fault goes in or comes out."""

    def __init__(self, dep: Deployment, act: Callable[[dict[str, object]], bool]) -> None:
        super().__init__(daemon=True)
        self.dep, self.act = dep, act
        self.job_id = ""
        self.stop = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.job_id:
            if self.stop.wait(0.05):
                return
        with self.dep.client(patience=5) as client:
            while not self.stop.wait(0.02):
                try:
                    status = client.status(self.job_id)
                except (ServiceRefused, OSError):  # not submitted yet, or cut off
                    continue
                if self.act(status):
                    self.done.set()
                    return


def deployed(
    dep: Deployment, watch: Watch, *, timeout: float
) -> tuple[str, list[RoundRecord], list[Vector], Vector]:
    records: list[RoundRecord] = []
    models: list[Vector] = []

    def on_round(rec: RoundRecord, weights: Vector) -> None:
        records.append(rec)
        models.append(weights.copy())

    watch.start()
    try:
        result = run_job(
            dep,
            on_round=on_round,
            on_started=lambda job_id: setattr(watch, "job_id", job_id),
            timeout=timeout,
            poll=0.1,
        )
    finally:
        watch.stop.set()
        watch.join(10)
        report = dep.close()
    assert report.killed == (), report.line()
    assert all(not p.alive() for p in dep.processes.values())
    first = dep.statistics_rounds  # a secure job counts its statistics first
    assert [r.round for r in records] == list(range(first, first + dep.config.federation.rounds))
    for r in records:  # a round lost to a fault says which (this one) and why
        assert r.skipped == (r.skip_reason is not None), r
    return result.job_id, records, models, result.weights


def test_lossy_capped_links_leave_the_model_of_an_undisturbed_run(
    tmp_path: Path, net: FaultNetwork
) -> None:
    nodes = 4
    dep = Deployment(
        replayable_job(rounds=8, secure=False, round_timeout=20.0),
        nodes,
        tmp_path / "up",
        place=net.place,
    )
    for name in ("coordinator", "provider", *(dep.node_id(i) for i in range(nodes))):
        net.place(name)
        net.lose(name, 0.03)
    for i in range(nodes):
        net.limit(dep.node_id(i), 2000)
    job_id, records, models, final = deployed(dep, Watch(dep, lambda _s: True), timeout=400)
    assert sum(len(r.included) for r in records) >= len(records) * nodes // 2, records
    assert_replayed(dep, records, models, final, job_id=job_id, secure=False)


def test_delayed_links_leave_the_model_of_an_undisturbed_run(
    tmp_path: Path, net: FaultNetwork
) -> None:
    nodes, delay, jitter = 4, 0.1, 0.02
    relays: list[DelayRelay] = []

    def through_relay(url: str) -> str:
        # Made once the coordinator's port is known (a restart keeps it).
        if not relays:
            parts = urlsplit(url)
            assert parts.hostname is not None and parts.port is not None
            relay = DelayRelay(net.host_address, parts.hostname, parts.port, delay, jitter)
            relays.append(relay.start())
        return f"{urlsplit(url).scheme}://{relays[0].address}"

    dep = Deployment(
        replayable_job(rounds=4, secure=False, round_timeout=20.0),
        nodes,
        tmp_path / "up",
        place=net.place,
        node_coordinator=through_relay,
        cert_hosts=(net.host_address,),
    )
    rtt: dict[str, float] = {}

    def measure(status: dict[str, object]) -> bool:
        """A signed request's round trip, least of five, to the coordinator and through
        the relay, while the job runs (the connection already open: no handshakes)."""
        if not isinstance(status.get("current_round"), int):
            return False
        relayed = through_relay(dep.coordinator_url)
        for way, url in (("direct", dep.coordinator_url), ("relayed", relayed)):
            with CoordinatorClient(url, verify=dep.verify, keys=dep.ai_provider_keys) as client:
                client.status(watch.job_id)
                times = []
                for _ in range(5):
                    start = time.monotonic()
                    client.status(watch.job_id)
                    times.append(time.monotonic() - start)
            rtt[way] = min(times)
        return True

    watch = Watch(dep, measure)
    try:
        job_id, records, models, final = deployed(dep, watch, timeout=300)
    finally:
        for relay in relays:
            relay.close()
    assert watch.done.is_set(), "the job ended before the round trips were measured"
    assert rtt["relayed"] >= 2 * delay, rtt
    assert rtt["relayed"] - rtt["direct"] >= 2 * delay * 0.9, rtt  # the delay, not the hop
    seen = relays[0].relayed
    assert seen.connections >= nodes + 1, seen  # each node's, and the measuring client's
    assert seen.chunks_up > 2 * len(records) * nodes, seen  # every node asked every round
    assert all(r.included for r in records), records
    assert_replayed(dep, records, models, final, job_id=job_id, secure=False)


@dataclass(frozen=True)
class Cut:
    """Whom to cut off and when: ``victim`` holds no seat nor a backup's in round ``at``
    (cut once it is open) nor in ``healed`` (its link back once that is open), and serves
    an aggregator's seat in ``at + 1``. Cut from the start of every round in between, it
    is exactly a silent aggregator there, whatever the machine's pace."""

    victim: str
    at: int
    healed: int
    serving: tuple[int, ...]  # the rounds in between in which it holds an aggregator seat


def plan_cut(dep: Deployment, job_id: str, beacon: bytes, *, open: int) -> Cut:
    """The first cut that starts after round ``open`` (rounds as the protocol counts)."""
    nodes = [dep.node_id(i) for i in range(dep.n_nodes)]
    orgs = dict(zip(nodes, dep.job.organisations or [None] * dep.n_nodes, strict=True))
    tree = secure_params_of(dep.config, clip_norm=1.0, max_weight=1.0, classes=2).tree
    check = TreeCheck(round_params_of(dep.config, job_id=job_id), nodes, tree, orgs, beacon=beacon)
    last = dep.statistics_rounds + dep.config.federation.rounds - 1
    roles = {
        r: {n for g in check.tree(r).groups for n in (*g.aggregators, *g.backups)}
        for r in range(open + 1, last + 1)
    }
    serving = {r: {n for g in check.tree(r).groups for n in g.aggregators} for r in roles}
    for at in range(open + 1, last - 2):
        for victim in nodes:
            if victim in roles[at] or victim not in serving[at + 1]:
                continue
            # Healed with three rounds to come: time for its connections to come back
            # (TCP's retries back off while cut off), so it is seen taking part again.
            free = [h for h in range(at + 2, last - 2) if victim not in roles[h]]
            if free:
                seats = tuple(r for r in range(at + 1, free[0]) if victim in serving[r])
                return Cut(victim, at, free[0], seats)
    raise AssertionError("no node fits the cut: more nodes, or fewer seats a group")


def test_a_partitioned_aggregator_is_replaced_and_rejoins(
    tmp_path: Path, net: FaultNetwork
) -> None:
    # 16 nodes in groups of 8: about 12 seated a round, so some node is seated in one
    # round and free in those around it (plan_cut) for any beacon.
    dep = Deployment(
        replayable_job(rounds=10, secure=True, round_timeout=20.0, group_size=8),
        16,
        tmp_path / "up",
        place=net.place,
    )
    simulation_keyed(dep)
    plan: list[Cut] = []
    beacons: list[bytes] = []
    cut_off = threading.Event()

    def act(status: dict[str, object]) -> bool:
        current = status.get("current_round")
        if not isinstance(current, int) or not status.get("beacon"):
            return False
        if not beacons:
            beacons.append(bytes.fromhex(str(status["beacon"])))
        if not cut_off.is_set() and (not plan or current > plan[-1].at):
            # (Again if the rounds outran the watch: a later cut, from a round's start.)
            plan.append(plan_cut(dep, watch.job_id, beacons[0], open=current))
            return False
        cut = plan[-1]
        if current >= cut.healed:
            net.heal(cut.victim)
            return True
        if current == cut.at and not cut_off.is_set():
            net.partition(cut.victim)
            cut_off.set()
        return False

    watch = Watch(dep, act)
    job_id, records, models, final = deployed(dep, watch, timeout=500)
    assert watch.done.is_set(), "the job ended before the link came back"
    cut = plan[-1]
    out = range(cut.at + 1, cut.healed)
    by_round = {r.round: r for r in records}
    assert cut.serving[0] == cut.at + 1
    assert not any(by_round[r].skipped for r in out)
    assert all(cut.victim not in by_round[r].included for r in out)
    assert any(cut.victim in r.included for r in records if r.round > cut.healed)  # back
    rounds = assert_replayed(
        dep,
        records,
        models,
        final,
        job_id=job_id,
        secure=True,
        beacon=beacons[0],
        silent={r: frozenset({cut.victim}) for r in cut.serving},
    )
    for r in cut.serving:  # the same seats fell silent in both
        assert (
            by_round[r].aggregators_failed == 1 == rounds[r - records[0].round].aggregators_failed
        )


def test_a_partitioned_coordinator_resumes(tmp_path: Path, net: FaultNetwork) -> None:
    nodes, cut_for = 4, 25.0  # longer than a round's timeout: a round is lost to it
    dep = Deployment(
        replayable_job(rounds=8, secure=False, round_timeout=10.0),
        nodes,
        tmp_path / "up",
        place=net.place,
    )
    seen: dict[str, float] = {}

    def act(status: dict[str, object]) -> bool:
        current = status.get("current_round")
        if not isinstance(current, int) or current < 2:
            return False
        net.partition("coordinator")
        seen["cut"] = time.monotonic()
        time.sleep(cut_for)  # the watcher is cut off too: it waits, then heals
        net.heal("coordinator")
        seen["healed"] = time.monotonic()
        return True

    watch = Watch(dep, act)
    job_id, records, models, final = deployed(dep, watch, timeout=400)
    assert watch.done.is_set(), "the job ended before the partition"
    lost = [r for r in records if r.skipped]
    assert lost, "no round was lost to the partition"
    assert all(r.skip_reason for r in lost)
    assert not records[-1].skipped and records[-1].included  # it went on afterwards
    assert_replayed(dep, records, models, final, job_id=job_id, secure=False)

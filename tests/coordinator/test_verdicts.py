"""The contribution policy in a deployment: group sums kept for the AI provider alone, its
verdicts posted back, logged and replayed.

A round's group sums are one content-addressed artefact that its record
names; only the job's AI provider may read it, and no group in it has fewer
members than the job's floor. The AI provider's verdicts (``POST
/v1/jobs/{id}/verdicts``) are refused unless they come from it, name only
participants, hold factors in (0, 1] and few entries; taken, they are one
logged event, so a restarted coordinator still leaves the excluded out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tessera.coordinator.driver import _Step
from tessera.coordinator.service import CoordinatorService
from tessera.errors import LocalProtocolError, RemoteProtocolError
from tessera.ids import COORDINATOR, NodeId
from tessera.jobs.groupsums import GROUP_SUMS_MEDIA_TYPE, group_sums_artefact, read_group_sums
from tessera.jobs.records import RoundRecord
from tessera.protocol.effects import GroupSum, RoundClosed
from tessera.runtime.transport.auth import sign_request
from tessera.runtime.transport.mail import WEIGHTS_MEDIA_TYPE
from tessera.storage import Store

from .coordinator_kit import (
    AI,
    COORDINATOR_KEYS,
    Harness,
    Node,
    consent_body,
    job_id,
    receipt,
    registration,
    tiny_job,
)

NAMES = ("node-a", "node-b", "node-c")
LENGTH = 5


def _groups(*members: tuple[str, ...]) -> tuple[GroupSum, ...]:
    rng = np.random.default_rng(0)
    return tuple(
        GroupSum(group=f"g{i}", members=m, total=rng.normal(size=LENGTH))
        for i, m in enumerate(members)
    )


# -- the artefact ---------------------------------------------------------------------------
def test_a_group_sum_artefact_reads_back_bit_for_bit() -> None:
    groups = _groups(("a", "b"), ("c", "d", "e"))
    data, sha = group_sums_artefact(3, groups, min_group=2)
    round, back = read_group_sums(data, sha, length=LENGTH, min_group=2)
    assert round == 3
    assert [(g.group, g.members) for g in back] == [(g.group, g.members) for g in groups]
    for g, h in zip(groups, back, strict=True):
        assert np.array_equal(g.total, h.total)
    assert b"pickle" not in data and data[8:9] == b"{"  # safetensors: a JSON header


def test_no_group_below_the_floor_is_ever_written_or_read() -> None:
    with pytest.raises(LocalProtocolError, match="below the job's floor of 3"):
        group_sums_artefact(0, _groups(("a", "b", "c"), ("d", "e")), min_group=3)
    with pytest.raises(LocalProtocolError, match="distinct members"):
        group_sums_artefact(0, _groups(("a", "a", "b")), min_group=3)
    data, sha = group_sums_artefact(
        0,
        _groups(
            ("a", "b"),
        ),
        min_group=2,
    )
    with pytest.raises(RemoteProtocolError, match="below the floor of 3"):
        read_group_sums(data, sha, length=LENGTH, min_group=3)
    with pytest.raises(RemoteProtocolError, match="SHA-256"):
        read_group_sums(data + b" ", sha, length=LENGTH, min_group=2)
    with pytest.raises(RemoteProtocolError, match="rows of 6 words"):
        read_group_sums(data, sha, length=LENGTH + 1, min_group=2)


# -- the coordinator keeps them, for the AI provider only -------------------------------------
@pytest.fixture
def coord(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path / "coordinator.db")
    yield harness
    harness.stop()


@pytest.fixture
def nodes() -> dict[str, Node]:
    return {name: Node.make(name) for name in (*NAMES, "node-d")}


@pytest.fixture
def running(coord: Harness, nodes: dict[str, Node]) -> str:
    """The tiny (plaintext) job started by nodes a, b and c; d is registered, not in it."""
    for node in nodes.values():
        coord.register(node.keys, node.id)
    doc, weights = tiny_job()
    coord.submit(doc, weights)
    for name in NAMES:
        assert coord.consent(doc, nodes[name]).status_code == 201
    assert coord.status()["state"] == "running"
    return job_id(doc)


def test_the_driver_keeps_each_rounds_group_sums_and_its_record_names_them(
    coord: Harness, running: str
) -> None:
    driver = coord.service.drivers[running]
    closed = RoundClosed(
        round=0,
        weights=np.zeros(12, np.float32),
        selected=3,
        participants=3,
        num_samples=30,
        mean_loss=1.0,
        skipped=False,
        closed_at=0.0,
        group_sums=_groups(("node-a", "node-b"), ("node-b", "node-c")),
    )
    driver._current = step = _Step()
    driver.round_closed(COORDINATOR, closed)
    (record,) = step.rounds
    assert record.group_sums in step.group_sums
    _, groups = read_group_sums(
        step.group_sums[record.group_sums], record.group_sums, length=LENGTH, min_group=2
    )
    assert all(len(g.members) >= 2 for g in groups)  # the floor: at least 2, always
    # One below the floor never leaves the coordinator: the step fails, nothing is written.
    lone = RoundClosed(**{**_fields(closed), "group_sums": _groups(("node-a",))})
    driver._current = _Step()
    with pytest.raises(LocalProtocolError):
        driver.round_closed(COORDINATOR, lone)
    assert RoundRecord.from_json(record.to_json()).group_sums == record.group_sums


def _fields(closed: RoundClosed) -> dict[str, Any]:
    return {name: getattr(closed, name) for name in closed.__slots__}  # type: ignore[attr-defined]


def test_only_the_jobs_ai_provider_reads_its_group_sums(
    coord: Harness, nodes: dict[str, Node], running: str
) -> None:
    store = coord.service.store
    data, sha = group_sums_artefact(0, _groups(("node-a", "node-b", "node-c")), min_group=2)
    store.put_artefact(data, GROUP_SUMS_MEDIA_TYPE)
    store.link_artefacts(running, [sha])
    _, initial = tiny_job()
    initial_sha = store.put_artefact(initial, WEIGHTS_MEDIA_TYPE)
    assert coord.get(f"/v1/artefacts/{sha}").content == data  # the AI provider
    for name in NAMES:  # the job's nodes read its model, never its group sums
        assert nodes[name].get(coord, f"/v1/artefacts/{initial_sha}").status_code == 200
        assert nodes[name].get(coord, f"/v1/artefacts/{sha}").status_code == 404
    assert nodes["node-d"].get(coord, f"/v1/artefacts/{sha}").status_code == 404


# -- the verdicts endpoint refuses all but the AI provider's well-formed verdicts ------------
def _post(coord: Harness, job: str, body: Any, *, node: Node | None = None) -> Any:
    path = f"/v1/jobs/{job}/verdicts"
    data = json.dumps(body).encode()
    keys, name = (AI, None) if node is None else (node.keys, node.id)
    headers = sign_request(keys, "POST", path, body=data, at=time.time(), node=name)
    return coord.http.post(
        path, content=data, headers={**headers, "content-type": "application/json"}
    )


def test_verdicts_come_only_from_the_ai_provider_and_name_only_participants(
    coord: Harness, nodes: dict[str, Node], running: str
) -> None:
    events = len(coord.service.store.events(running))
    ok = {"round": 0, "excluded": {"node-c": "flagged"}, "weights": {}}
    answer = _post(coord, running, ok, node=nodes["node-a"])
    assert answer.status_code == 403, answer.text  # a node of the job
    for bad in (
        {**ok, "excluded": {"node-d": "registered, not in the job"}},  # a stranger
        {**ok, "excluded": {}, "weights": {"intruder": 0.5}},
    ):
        answer = _post(coord, running, bad)
        assert answer.status_code == 422, answer.text
        assert "not participants" in answer.json()["detail"]
    for bad in (
        {**ok, "weights": {"node-a": 0.0}},  # a factor out of (0, 1]
        {**ok, "weights": {"node-a": 1.5}},
        {**ok, "excluded": {"node-a": "x" * 201}},  # a reason too long
        {**ok, "excluded": {f"n{i}": "why" for i in range(10_001)}},  # too many entries
        {**ok, "round": -1},
        {**ok, "extra": 1},
    ):
        answer = _post(coord, running, bad)
        assert answer.status_code == 422, answer.text[:200]
    # A job without [contributions] (this plaintext one) takes no verdicts at all.
    answer = _post(coord, running, ok)
    assert answer.status_code == 409, answer.text
    assert "no [contributions]" in answer.json()["detail"]
    assert len(coord.service.store.events(running)) == events  # nothing was logged


# -- a verdict is logged with the machine's step and survives a restart -----------------------
def _wait(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.005)


def test_a_verdict_leaves_the_node_out_from_the_next_round_opened_across_a_restart(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    store = Store(url)
    service = CoordinatorService(store, COORDINATOR_KEYS)
    nodes = [Node.make(name) for name in NAMES]
    for node in nodes:
        service.register(registration(node.keys, node.id).to_json())
    doc, weights = tiny_job("verdicts", rounds=4)
    job = job_id(doc)
    store.put_artefact(weights, WEIGHTS_MEDIA_TYPE)
    service.submit(doc.to_json())
    for node in nodes:
        body = consent_body(receipt(node.keys, node.id, doc), node.keys, doc)
        service.consent(job, body["receipt"], body["attestation"])
    why = "score -3.2 below the median over 4 groups"

    def answer(r: int, who: list[Node]) -> None:
        _wait(f"round {r} open", lambda: store.get_job(job).current_round == r)
        for node in who:
            service.post_mail(node.update(COORDINATOR_KEYS.public, r, job_id=job))

    try:
        answer(0, nodes)
        _wait("round 0 closed", lambda: store.get_job(job).current_round == 1)
        # Round 1 is open already: the verdict holds from round 2 on.
        service.drivers[job].rate(0, {NodeId("node-c"): why}, {NodeId("node-b"): 0.5})
        (rate,) = [e for e in store.events(job) if e.kind == "rate"]
        assert rate.payload == {
            "round": 0,
            "excluded": {"node-c": why},
            "weights": {"node-b": 0.5},
        }
        service.close()  # killed: only what was committed survives
        store.close()
        store = Store(url)
        service = CoordinatorService(store, COORDINATOR_KEYS)
        service.resume()
        machine = service.drivers[job].machine
        assert machine.excluded == {"node-c": (2, why)}
        assert machine.ratings == {"node-b": 0.5}
        answer(1, nodes)  # node-c still trains in round 1
        answer(2, nodes[:2])
        answer(3, nodes[:2])
        _wait("the job finished", lambda: store.get_job(job).state == "finished")
        rounds = store.rounds(job)
    finally:
        service.close()
        store.close()
    assert [r.excluded for r in rounds] == [(), (), (f"node-c ({why})",), ()]
    assert "node-c" in rounds[1].included
    assert all("node-c" not in r.included for r in rounds[2:])
    assert all(r.selected == 2 for r in rounds[2:])

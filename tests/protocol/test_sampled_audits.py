"""Sampled audits: the auditor draws which child sums to check, and only it may ask."""

from __future__ import annotations

from types import MappingProxyType

from tessera.crypto.keys import NodeKeys
from tessera.ids import COORDINATOR, JobId, NodeId
from tessera.protocol import Aggregator
from tessera.protocol.codec import encode_labelled
from tessera.protocol.effects import Rejected
from tessera.protocol.events import MessageReceived
from tessera.protocol.kinds import Kind
from tessera.protocol.messages import AggregateRequest
from tessera.protocol.wire import Wire

JOB = JobId("audit-draws")
NAMES = ("parent", "child-0", "child-1", "grandparent", "stranger", COORDINATOR)
KEYS = {NodeId(n): NodeKeys.from_seed(f"tessera-tests|audits|{n}".encode()) for n in NAMES}
DIRECTORY = MappingProxyType({n: k.public for n, k in KEYS.items()})
PARENT, CHILD0, CHILD1, GRANDPARENT, STRANGER = (NodeId(n) for n in NAMES[:5])


def request(**changes: object) -> AggregateRequest:
    fields: dict[str, object] = {
        "job_id": JOB,
        "round": 0,
        "group": "P0",
        "position": 0,
        "inputs": ("L0", "L1"),
        "senders": (CHILD0, CHILD1),
        "leaf": False,
        "parent": GRANDPARENT,
        "parent_group": "R",
        "report_at": 100.0,
        "ring_bits": 32,
        "frac_bits": 16,
        "ring_terms": 10,
        "length": 4,
        "tree_digest": "0" * 64,
        "audit": {
            "L0": (True, {"a": NodeId("a")}),
            "L1": (True, {"b": NodeId("b")}),
        },
        "audit_fraction": 0.5,
        "evidence_on_request": True,
    }
    fields.update(changes)
    return AggregateRequest(**fields)  # type: ignore[arg-type]


def aggregator(req: AggregateRequest, node: NodeId = PARENT) -> Aggregator:
    agg = Aggregator(node, JOB, KEYS[node], DIRECTORY)
    assert agg.handle(MessageReceived(sender=COORDINATOR, message=req), 0.0)[0]
    return agg


def deliver(agg: Aggregator, sender: NodeId, kind: Kind, payload: bytes, *, sealed: bool) -> list:
    send = Wire(sender, JOB, KEYS[sender], DIRECTORY).send(
        agg.node, kind, 0, payload, sealed=sealed
    )
    return agg.handle(MessageReceived(sender=sender, message=send.message), 1.0)


def test_evidence_nobody_asked_for_is_refused() -> None:
    agg = aggregator(request())
    effects = deliver(agg, CHILD0, Kind.EVIDENCE, encode_labelled("L0", 0, b"x"), sealed=True)
    assert len(effects) == 1 and isinstance(effects[0], Rejected)
    assert "no evidence was asked" in effects[0].reason


def test_only_the_auditor_may_ask_for_evidence() -> None:
    leaf = request(group="L0", leaf=True, inputs=("a",), senders=(NodeId("a"),), audit={})
    agg = aggregator(leaf, node=CHILD0)
    ask = encode_labelled("L0", 0, b"")
    for asker in (STRANGER, COORDINATOR):  # our auditor is the parent, GRANDPARENT here
        effects = deliver(agg, asker, Kind.AUDIT_REQUEST, ask, sealed=False)
        assert len(effects) == 1 and isinstance(effects[0], Rejected)
        assert "does not audit" in effects[0].reason
    # the auditor itself is told the sum is not there yet, not given anything
    effects = deliver(agg, GRANDPARENT, Kind.AUDIT_REQUEST, ask, sealed=False)
    assert isinstance(effects[0], Rejected) and "not summed yet" in effects[0].reason


def test_draws_are_keyed_repeatable_and_near_the_fraction() -> None:
    req = request(audit_fraction=0.3)
    mine, again, other = aggregator(req), aggregator(req), aggregator(req, node=STRANGER)
    role = mine.roles[("P0", 0)]
    children = [f"L{i}" for i in range(400)]
    draws = [mine.draws_audit(role, c) for c in children]
    assert draws == [again.draws_audit(again.roles[("P0", 0)], c) for c in children]
    assert draws != [other.draws_audit(other.roles[("P0", 0)], c) for c in children]
    assert 0.2 < sum(draws) / len(draws) < 0.4  # binomial(400, 0.3): 0.3 +- 5 sd
    every = aggregator(request(audit_fraction=1.0))
    assert all(every.draws_audit(every.roles[("P0", 0)], c) for c in children)

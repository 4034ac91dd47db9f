"""Bad input to the secure machines is refused with a reason and changes nothing.

Every test drives the real machines by hand (``secure_kit.Federation``: a
``SecureCoordinator`` over eight ``Node`` machines, real keys and sealing, a
FIFO queue instead of a network). Each attack is delivered mid-round; the
machine must answer with exactly one ``Rejected`` naming the fault, its state
must be exactly what it was, and the honest round must then close with the
bit-identical aggregate of an undisturbed run (``baseline``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tessera.crypto.envelope import peek
from tessera.crypto.fixedpoint import Ring
from tessera.crypto.sharing import FullShare
from tessera.ids import COORDINATOR, NodeId
from tessera.protocol import aggregator as aggregator_module
from tessera.protocol import secure_coordinator as coordinator_module
from tessera.protocol.codec import (
    Commit,
    decode_report,
    encode_commit,
    encode_partial,
    encode_share,
)
from tessera.protocol.effects import Effect, Rejected
from tessera.protocol.kinds import Kind

from .secure_kit import (
    MALLORY,
    NODES,
    SECURE,
    Federation,
    Update,
    Wire,
    assert_same_round,
    baseline,
    changed,
    expected_mean,
    honest_updates,
    is_report,
    machine_state,
    node_keys,
    quantization_bound,
    replay_sizes,
    report_payload,
    share_payload,
)

FAST = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def one_rejection(effects: list[Effect], sender: NodeId, reason: str) -> Rejected:
    """Exactly one effect, a ``Rejected`` blaming ``sender`` whose reason matches ``reason``."""
    assert len(effects) == 1, effects
    (effect,) = effects
    assert isinstance(effect, Rejected), effect
    assert effect.sender == sender
    assert re.search(reason, effect.reason), effect.reason
    return effect


# -- the honest round ------------------------------------------------------------------


def test_honest_round_releases_the_weighted_mean_within_the_quantization_bound() -> None:
    fed = Federation()
    fed.start()
    # The tree this suite relies on: two leaf groups of four under one root, k = 3.
    assert len(fed.leaves()) == 2 and all(len(fed.members(g)) == 4 for g in fed.leaves())
    assert {p for (g, p) in fed.requests if g == fed.root()} == {0, 1, 2}
    fed.train()
    fed.run()
    rc = fed.closed_round()
    assert not fed.rejected
    mean, loss, total = expected_mean(honest_updates())
    ring = fed.ring()
    bound = quantization_bound(ring, len(NODES), mean, total)
    f32 = np.abs(mean) * 2.0**-23  # the released mean is float32
    # Initial weights are zero and FedAvg's server step is 1: the new weights are the mean.
    assert np.all(np.abs(rc.weights.astype(np.float64) - mean) <= bound + f32)
    (loss_bound,) = quantization_bound(ring, len(NODES), np.array([loss]), total)
    # Each weighted loss is a float32 coordinate of the update before it is encoded.
    assert abs(rc.mean_loss - loss) <= loss_bound + abs(loss) * 2.0**-23
    assert (rc.participants, rc.selected, rc.skipped) == (8, 8, False)
    assert rc.num_samples == round(total * SECURE.max_weight)
    assert_same_round(rc, baseline())  # seeded rounding: any honest run is bit-identical


# -- a leaf aggregator receiving shares ------------------------------------------------


@dataclass
class ShareScene:
    """Mid-round at a leaf aggregator (the victim): two of its four shares are in."""

    fed: Federation
    victim: NodeId
    group: str
    position: int
    done: NodeId  # a member whose share the victim holds
    pending: Wire  # a member's honest share to the victim, still queued
    outsider: NodeId  # a contributor of the other leaf group (not the victim)
    other_seat: NodeId  # the aggregator at another position of the same group

    @property
    def ring(self) -> Ring:
        return self.fed.ring()

    @property
    def length(self) -> int:
        return self.fed.length()


def share_scene() -> ShareScene:
    fed = Federation()
    fed.start()
    fed.train()
    group = fed.leaves()[0]
    victim = fed.seat(group, 0)
    members = set(fed.members(group))

    def shares_in() -> list[NodeId]:
        return [
            w.sender
            for w in fed.delivered
            if w.recipient == victim and w.kind == Kind.SHARE and w.sender in members
        ]

    fed.run(until=lambda: len(shares_in()) >= 2)
    pending = next(w for w in fed.queue if w.recipient == victim and w.kind == Kind.SHARE)
    other_group = next(g for g in fed.leaves() if g != group)
    outsider = next(m for m in fed.members(other_group) if m != victim)
    return ShareScene(
        fed=fed,
        victim=victim,
        group=group,
        position=0,
        done=shares_in()[0],
        pending=pending,
        outsider=outsider,
        other_seat=fed.seat(group, 1),
    )


def _share(
    s: ShareScene,
    sender: NodeId,
    *,
    group: str | None = None,
    position: int | None = None,
    ring: Ring | None = None,
    length: int | None = None,
    payload: bytes | None = None,
    recipient: NodeId | None = None,
    **seal: Any,
) -> tuple[NodeId, bytes]:
    """A share envelope as ``sender`` to the victim; every field right unless overridden."""
    if payload is None:
        payload = share_payload(
            group or s.group,
            s.position if position is None else position,
            ring or s.ring,
            s.length if length is None else length,
        )
    data = s.fed.seal(
        Kind.SHARE,
        payload,
        sender=sender,
        recipient=recipient or s.victim,
        **seal,
    )
    return sender, data


def _other_ring(ring: Ring) -> Ring:
    return Ring(bits=64 if ring.bits == 32 else 32, frac_bits=ring.frac_bits, terms=ring.terms)


def _replay(s: ShareScene) -> tuple[NodeId, bytes]:
    """Deliver the pending honest share, then hand back its exact bytes."""
    wire = s.fed.take(lambda w: w is s.pending)
    sent = s.fed.deliver(wire)  # accepted: its box goes to the auditor, nothing else yet
    assert [peek(e.message.data).kind for e in sent] == [Kind.INPUT_COPY]
    return wire.sender, wire.data


def _short_full_share(s: ShareScene) -> bytes:
    """A full share whose header claims the right length but whose body is one word short."""
    words = np.zeros(s.length - 1, s.ring.dtype)
    payload = encode_share(s.group, s.position, s.ring, s.length - 1, FullShare(words))
    head = bytearray(payload)
    head[4:8] = s.length.to_bytes(4, "little")  # the header's word count
    return bytes(head)


def _zeros(s: ShareScene, n: int) -> np.ndarray:
    return np.zeros(n, s.ring.dtype)


Build = Callable[[ShareScene], tuple[NodeId, bytes]]

SHARE_ATTACKS: dict[str, tuple[Build, str]] = {
    # -- the envelope ---------------------------------------------------------------
    "signed with another node's key": (
        lambda s: _share(s, s.pending.sender, signer=s.fed.keys[s.outsider]),
        "bad signature",
    ),
    "signed with an unregistered key": (
        lambda s: _share(s, s.pending.sender, signer=node_keys(MALLORY)),
        "bad signature",
    ),
    "addressed to another aggregator": (
        lambda s: _share(s, s.pending.sender, recipient=s.other_seat),
        "wrong recipient",
    ),
    "encrypted for another aggregator": (
        lambda s: _share(s, s.pending.sender, encrypt_for=s.other_seat),
        "cannot decrypt",
    ),
    "replayed (the same bytes twice)": (_replay, "replayed"),
    "truncated by one byte": (lambda s: (s.pending.sender, s.pending.data[:-1]), "truncated"),
    "truncated inside the header": (lambda s: (s.pending.sender, s.pending.data[:40]), "truncated"),
    "one byte appended": (lambda s: (s.pending.sender, s.pending.data + b"\0"), "trailing bytes"),
    "beyond the size limit": (
        # bytes(n) is calloc'ed: half a gigabyte of address space, no pages touched
        lambda s: (MALLORY, bytes(aggregator_module.MAX_ENVELOPE_BYTES + 1)),
        "too large",
    ),
    "for another round": (lambda s: _share(s, s.pending.sender, round=1), "wrong round"),
    "for another job": (lambda s: _share(s, s.pending.sender, job="another-job"), "wrong job"),
    "from a sender in no directory": (
        lambda s: _share(s, MALLORY, signer=node_keys(MALLORY)),
        "unknown sender",
    ),
    # -- the role -------------------------------------------------------------------
    "for a position of the group this node does not serve": (
        lambda s: _share(s, s.pending.sender, position=1),
        "not serving",
    ),
    "for a leaf group this node does not serve": (
        lambda s: _share(
            s, s.pending.sender, group=next(g for g in s.fed.leaves() if g != s.group)
        ),
        "not serving",
    ),
    "for the root group, as if it were a leaf": (
        lambda s: _share(s, s.pending.sender, group=s.fed.root()),
        "not serving",
    ),
    "from a contributor of another group": (
        lambda s: _share(s, s.outsider),
        "not an expected input",
    ),
    "from the coordinator": (lambda s: _share(s, COORDINATOR), "not an expected input"),
    # -- the vector -----------------------------------------------------------------
    "ring of the wrong size": (
        lambda s: _share(s, s.pending.sender, ring=_other_ring(s.ring)),
        "ring or model size",
    ),
    "one word too many": (
        lambda s: _share(s, s.pending.sender, length=s.length + 1),
        "ring or model size",
    ),
    "a full share one word short": (
        lambda s: _share(
            s,
            s.pending.sender,
            payload=encode_share(
                s.group, s.position, s.ring, s.length - 1, FullShare(_zeros(s, s.length - 1))
            ),
        ),
        "ring or model size",
    ),
    "a full share shorter than its header": (
        lambda s: _share(s, s.pending.sender, payload=_short_full_share(s)),
        "does not match its header",
    ),
    "a second share from the same contributor": (
        lambda s: _share(s, s.done),
        "already sent",
    ),
    # -- other kinds ----------------------------------------------------------------
    "a commitment signed by a node": (
        lambda s: (
            s.outsider,
            s.fed.seal(
                Kind.COMMIT,
                encode_commit(Commit(s.group, (s.done,))),
                sender=s.outsider,
                recipient=s.victim,
                clear=True,
            ),
        ),
        "come from the coordinator",
    ),
    "a commitment under the coordinator's name, signed by a node": (
        lambda s: (
            COORDINATOR,
            s.fed.seal(
                Kind.COMMIT,
                encode_commit(Commit(s.group, (s.done,))),
                sender=COORDINATOR,
                recipient=s.victim,
                signer=s.fed.keys[s.outsider],
                clear=True,
            ),
        ),
        "bad signature",
    ),
    "a partial sum for a parent role this node does not hold": (
        lambda s: (
            s.outsider,
            s.fed.seal(
                Kind.PARTIAL,
                encode_partial(s.group, s.position, 4, _zeros(s, s.length)),
                sender=s.outsider,
                recipient=s.victim,
            ),
        ),
        "no role here expects",
    ),
    "a report sent to an aggregator": (
        lambda s: (
            s.outsider,
            s.fed.seal(
                Kind.REPORT,
                report_payload(s.group, s.position, ()),
                sender=s.outsider,
                recipient=s.victim,
                clear=True,
            ),
        ),
        "unexpected envelope kind",
    ),
    "an unknown envelope kind": (
        lambda s: (
            s.pending.sender,
            s.fed.seal(200, b"junk", sender=s.pending.sender, recipient=s.victim),
        ),
        "unexpected envelope kind",
    ),
}


def _refused_and_unchanged(
    fed: Federation, machine: NodeId, sender: NodeId, data: bytes, reason: str
) -> Rejected:
    """Inject; expect one Rejected; the machine's state (and, for a bad envelope, its
    replay guard) is exactly as before."""
    target = fed.machine(machine)
    before, replay_before = machine_state(target), replay_sizes(target)
    rejected = one_rejection(fed.inject(machine, data, sender=sender), sender, reason)
    assert changed(before, machine_state(target)) == []
    grown = sum(replay_sizes(target)) - sum(replay_before)
    if rejected.reason.startswith("invalid envelope"):
        assert grown == 0  # a failed open remembers nothing
    else:
        assert grown in (0, 1)  # an authenticated nonce may be remembered, nothing else
    return rejected


def _completes_exactly(fed: Federation, *rejections: tuple[NodeId, Rejected]) -> None:
    fed.run()
    assert fed.rejected == list(rejections)  # the honest rest of the round drew no refusal
    assert_same_round(fed.closed_round(), baseline())


@pytest.mark.parametrize(("build", "reason"), SHARE_ATTACKS.values(), ids=SHARE_ATTACKS.keys())
def test_aggregator_refuses_bad_share_and_the_round_is_unchanged(build: Build, reason: str) -> None:
    s = share_scene()
    sender, data = build(s)
    rejected = _refused_and_unchanged(s.fed, s.victim, sender, data, reason)
    _completes_exactly(s.fed, (s.victim, rejected))


# -- the coordinator receiving reports -------------------------------------------------


@dataclass
class ReportScene:
    """Mid-round at the coordinator: one of a leaf group's three reports is in."""

    fed: Federation
    group: str
    reported: int  # the position whose honest report the coordinator holds
    report: Wire  # that report, as delivered
    waiting: int  # a position whose report has not arrived

    @property
    def members(self) -> tuple[NodeId, ...]:
        return self.fed.members(self.group)

    @property
    def other_member(self) -> NodeId:
        other = next(g for g in self.fed.leaves() if g != self.group)
        return self.fed.members(other)[0]


def report_scene() -> ReportScene:
    fed = Federation()
    fed.start()
    fed.train()
    group = fed.leaves()[0]

    def reports_in() -> list[tuple[int, Wire]]:
        out = []
        for w in fed.delivered:
            if is_report(w):
                report = decode_report(fed.open_clear(w.data).payload)
                if report.group == group:
                    out.append((report.position, w))
        return out

    fed.run(until=lambda: len(reports_in()) >= 1)
    ((position, wire),) = reports_in()
    waiting = next(p for p in range(SECURE.tree.k) if p != position)
    return ReportScene(fed=fed, group=group, reported=position, report=wire, waiting=waiting)


def _report(
    r: ReportScene,
    sender: NodeId,
    group: str,
    position: int,
    received: tuple[str, ...],
    *,
    recipient: NodeId = COORDINATOR,
    **seal: Any,
) -> tuple[NodeId, bytes]:
    data = r.fed.seal(
        Kind.REPORT,
        report_payload(group, position, received),
        sender=sender,
        recipient=recipient,
        clear=True,
        **seal,
    )
    return sender, data


def _root_partial(r: ReportScene, sender: NodeId, group: str, words: int) -> tuple[NodeId, bytes]:
    ring = r.fed.ring()
    payload = encode_partial(group, 0, 8, np.zeros(words, ring.dtype))
    return sender, r.fed.seal(Kind.PARTIAL, payload, sender=sender, recipient=COORDINATOR)


RBuild = Callable[[ReportScene], tuple[NodeId, bytes]]

REPORT_ATTACKS: dict[str, tuple[RBuild, str]] = {
    "from a node that serves no seat of the group": (
        lambda r: _report(r, r.members[0], r.group, r.waiting, r.members),
        "does not serve",
    ),
    "from a seat of the group, claiming another position": (
        lambda r: _report(r, r.fed.seat(r.group, r.waiting), r.group, r.reported, r.members),
        "does not serve",
    ),
    "for a position beyond k": (
        lambda r: _report(r, r.fed.seat(r.group, r.waiting), r.group, SECURE.tree.k, r.members),
        "does not serve",
    ),
    "for a negative position": (
        lambda r: _report(r, r.fed.seat(r.group, r.waiting), r.group, -1, r.members),
        "does not serve",
    ),
    "for a group that does not exist": (
        lambda r: _report(r, r.fed.seat(r.group, r.waiting), "L9", r.waiting, r.members),
        "no group",
    ),
    "naming a contributor of another group": (
        lambda r: _report(
            r,
            r.fed.seat(r.group, r.reported),
            r.group,
            r.reported,
            (*r.members, r.other_member),
        ),
        "outside",
    ),
    "naming an id that is no node": (
        lambda r: _report(r, r.fed.seat(r.group, r.waiting), r.group, r.waiting, ("ghost",)),
        "outside",
    ),
    "for the root, naming a contributor instead of child groups": (
        lambda r: _report(
            r,
            r.fed.seat(r.fed.root(), 0),
            r.fed.root(),
            0,
            (*r.fed.leaves(), r.members[0]),
        ),
        "outside",
    ),
    "signed with another node's key": (
        lambda r: _report(
            r,
            r.fed.seat(r.group, r.waiting),
            r.group,
            r.waiting,
            r.members,
            signer=r.fed.keys[r.members[0]],
        ),
        "bad signature",
    ),
    "replayed (the same bytes twice)": (lambda r: (r.report.sender, r.report.data), "replayed"),
    "truncated": (lambda r: (r.report.sender, r.report.data[:-1]), "truncated"),
    "one byte appended": (lambda r: (r.report.sender, r.report.data + b"\0"), "trailing bytes"),
    "beyond the size limit": (
        lambda r: (MALLORY, bytes(coordinator_module.MAX_ENVELOPE_BYTES + 1)),
        "too large",
    ),
    "for another round": (
        lambda r: _report(
            r, r.fed.seat(r.group, r.waiting), r.group, r.waiting, r.members, round=1
        ),
        "wrong round",
    ),
    "for another job": (
        lambda r: _report(
            r, r.fed.seat(r.group, r.waiting), r.group, r.waiting, r.members, job="other"
        ),
        "wrong job",
    ),
    "addressed to a node": (
        lambda r: _report(
            r,
            r.fed.seat(r.group, r.waiting),
            r.group,
            r.waiting,
            r.members,
            recipient=r.members[0],
        ),
        "wrong recipient",
    ),
    "a leaf group's partial sum": (
        lambda r: _root_partial(r, r.fed.seat(r.group, 0), r.group, r.fed.length()),
        "only the root",
    ),
    "a root partial sum from a node that does not serve the root": (
        lambda r: _root_partial(
            r,
            next(n for n in NODES if n not in {r.fed.seat(r.fed.root(), j) for j in range(3)}),
            r.fed.root(),
            r.fed.length(),
        ),
        "does not serve",
    ),
    "a root partial sum of the wrong size": (
        lambda r: _root_partial(r, r.fed.seat(r.fed.root(), 0), r.fed.root(), r.fed.length() - 1),
        "ring or model",
    ),
    "a share sent to the coordinator": (
        lambda r: (
            r.members[0],
            r.fed.seal(
                Kind.SHARE,
                share_payload(r.group, 0, r.fed.ring(), r.fed.length()),
                sender=r.members[0],
                recipient=COORDINATOR,
            ),
        ),
        "takes no envelope",
    ),
}


@pytest.mark.parametrize(("build", "reason"), REPORT_ATTACKS.values(), ids=REPORT_ATTACKS.keys())
def test_coordinator_refuses_bad_report_and_the_round_is_unchanged(
    build: RBuild, reason: str
) -> None:
    r = report_scene()
    sender, data = build(r)
    rejected = _refused_and_unchanged(r.fed, COORDINATOR, sender, data, reason)
    _completes_exactly(r.fed, (COORDINATOR, rejected))


# -- hypothesis: random and mutated bytes ------------------------------------------------

garbage = st.one_of(
    st.binary(max_size=512),
    st.binary(max_size=512).map(lambda b: b"TSR\x01" + b),
    st.tuples(st.integers(0, 255), st.integers(0, 3), st.binary(max_size=512)).map(
        lambda t: b"TSR\x01" + bytes(t[:2]) + t[2]
    ),
)

_op = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 16), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, 1 << 16), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 16)),
    st.tuples(st.just("extend"), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 16), st.integers(1, 64)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=16)),
)
mutations = st.lists(_op, min_size=1, max_size=4)


def mutate(data: bytes, ops: list[tuple[Any, ...]]) -> bytes:
    """Apply bit flips, byte overwrites, truncation, extension, deletion and insertion."""
    out = bytearray(data)
    for name, *args in ops:
        if name == "extend":
            out += args[0]
            continue
        if not out:
            continue
        at = args[0] % len(out)
        if name == "flip":
            out[at] ^= 1 << args[1]
        elif name == "set":
            out[at] = args[1]
        elif name == "truncate":
            del out[at:]  # keeps fewer bytes than it had
        elif name == "delete":
            del out[at : at + args[1]]
        elif name == "insert":
            out[at:at] = args[1]
    return bytes(out)


@FAST
@given(data=garbage)
def test_aggregator_refuses_random_bytes(data: bytes) -> None:
    s = share_scene()
    rejected = _refused_and_unchanged(s.fed, s.victim, MALLORY, data, "invalid envelope")
    _completes_exactly(s.fed, (s.victim, rejected))


@FAST
@given(ops=mutations)
def test_aggregator_refuses_mutated_share_then_takes_the_original(
    ops: list[tuple[Any, ...]],
) -> None:
    s = share_scene()
    original = s.fed.take(lambda w: w is s.pending)
    mutated = mutate(original.data, ops)
    assume(mutated != original.data)
    # Same claimed sender and, often, the same nonce: a refusal must not poison either.
    rejected = _refused_and_unchanged(s.fed, s.victim, original.sender, mutated, ".")
    assert rejected.reason.startswith("invalid envelope")  # no mutation survives the signature
    s.fed.deliver(original)
    _completes_exactly(s.fed, (s.victim, rejected))


@FAST
@given(data=garbage)
def test_coordinator_refuses_random_bytes(data: bytes) -> None:
    r = report_scene()
    rejected = _refused_and_unchanged(r.fed, COORDINATOR, MALLORY, data, "invalid envelope")
    _completes_exactly(r.fed, (COORDINATOR, rejected))


@FAST
@given(ops=mutations)
def test_coordinator_refuses_mutated_report_then_takes_the_original(
    ops: list[tuple[Any, ...]],
) -> None:
    r = report_scene()
    r.fed.run(until=lambda: any(is_report(w) for w in r.fed.queue))
    original = r.fed.take(is_report)  # a report not yet delivered
    mutated = mutate(original.data, ops)
    assume(mutated != original.data)
    rejected = _refused_and_unchanged(r.fed, COORDINATOR, original.sender, mutated, ".")
    assert rejected.reason.startswith("invalid envelope")
    r.fed.deliver(original)
    _completes_exactly(r.fed, (COORDINATOR, rejected))


# -- hypothesis: authenticated junk from a registered peer --------------------------------

_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),  # bounded: a huge integer has its own test below
    st.floats(allow_nan=False),
    st.text(max_size=12),
)
_json = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
_json_object = st.dictionaries(
    st.sampled_from(["group", "position", "received", "included", "replacement"])
    | st.text(max_size=8),
    _json,
    max_size=4,
)


def _json_bytes(obj: object) -> bytes:
    return json.dumps(obj).encode()


junk_payload = st.one_of(st.binary(max_size=256), _json_object.map(_json_bytes))


@FAST
@given(kind=st.integers(0, 255), payload=junk_payload)
def test_aggregator_refuses_junk_signed_by_a_member(kind: int, payload: bytes) -> None:
    """A group member's keys do not let it get junk past the aggregator's checks."""
    s = share_scene()
    sender = s.pending.sender
    data = s.fed.seal(kind, payload, sender=sender, recipient=s.victim)
    rejected = _refused_and_unchanged(s.fed, s.victim, sender, data, ".")
    _completes_exactly(s.fed, (s.victim, rejected))


@FAST
@given(kind=st.integers(0, 255), payload=junk_payload)
def test_coordinator_refuses_junk_signed_by_an_aggregator(kind: int, payload: bytes) -> None:
    """An aggregator's keys do not let it get junk past the coordinator's checks."""
    r = report_scene()
    sender = r.fed.seat(r.group, r.waiting)
    data = r.fed.seal(kind, payload, sender=sender, recipient=COORDINATOR, clear=True)
    rejected = _refused_and_unchanged(r.fed, COORDINATOR, sender, data, ".")
    _completes_exactly(r.fed, (COORDINATOR, rejected))


# -- bugs found: each test states the intended behaviour --------------------------------


def _report_junk(r: ReportScene, payload: bytes) -> tuple[NodeId, bytes]:
    sender = r.members[0]  # any registered node: the seat is checked after decoding
    return sender, r.fed.seal(
        Kind.REPORT, payload, sender=sender, recipient=COORDINATOR, clear=True
    )


def test_report_of_deeply_nested_json_is_refused() -> None:
    r = report_scene()
    sender, data = _report_junk(r, b"[" * 100_000)
    rejected = _refused_and_unchanged(r.fed, COORDINATOR, sender, data, "JSON")
    _completes_exactly(r.fed, (COORDINATOR, rejected))


def test_report_with_a_huge_integer_is_refused() -> None:
    r = report_scene()
    payload = b'{"group":"' + r.group.encode() + b'","position":' + b"1" * 5000 + b',"received":[]}'
    sender, data = _report_junk(r, payload)
    rejected = _refused_and_unchanged(r.fed, COORDINATOR, sender, data, ".")
    _completes_exactly(r.fed, (COORDINATOR, rejected))


def test_commitment_naming_an_input_never_received_changes_nothing() -> None:
    s = share_scene()
    bogus = Commit(s.group, tuple(sorted({s.done, s.pending.sender})))
    data = s.fed.seal(
        Kind.COMMIT, encode_commit(bogus), sender=COORDINATOR, recipient=s.victim, clear=True
    )
    rejected = _refused_and_unchanged(s.fed, s.victim, COORDINATOR, data, "never received")
    _completes_exactly(s.fed, (s.victim, rejected))


def test_share_sent_in_clear_is_refused() -> None:
    s = share_scene()
    sender, data = _share(s, s.pending.sender, clear=True)
    rejected = _refused_and_unchanged(s.fed, s.victim, sender, data, "seal|encrypt|clear|plain")
    _completes_exactly(s.fed, (s.victim, rejected))


def test_losses_over_the_cap_are_counted_not_hidden() -> None:
    """A diverging contributor's loss is capped in the mean (one node cannot drag it to
    infinity), but the round says how many were capped: the cap never hides divergence."""
    updates = honest_updates()
    over = dict(list(updates.items())[:3])
    for node, update in over.items():
        updates[node] = Update(delta=update.delta, num_samples=update.num_samples, loss=1e9)
    fed = Federation()
    fed.start()
    fed.train(updates)
    fed.run()
    rc = fed.closed_round()
    assert rc.capped == 3
    assert rc.mean_loss <= SECURE.loss_cap
    honest = Federation()
    honest.start()
    honest.train()
    honest.run()
    assert honest.closed_round().capped == 0

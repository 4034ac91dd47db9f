"""Each envelope kind's own limit: what parties emit is registered and fits it, more is refused."""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import msgpack
import numpy as np
import pytest

from tessera.crypto.envelope import MAX_ID_BYTES, open_envelope, peek, seal
from tessera.crypto.fixedpoint import Ring
from tessera.crypto.keys import NodeKeys
from tessera.crypto.sharing import FullShare
from tessera.errors import InvalidEnvelope, RemoteProtocolError
from tessera.ids import COORDINATOR, JobId, NodeId
from tessera.protocol import limits
from tessera.protocol.audit import parse_evidence
from tessera.protocol.codec import (
    Report,
    decode_labelled,
    decode_named,
    decode_partial,
    decode_share,
    encode_labelled,
    encode_report,
    encode_share,
    encode_shared,
)
from tessera.protocol.control import encode_update
from tessera.protocol.effects import Send
from tessera.protocol.events import LocalTrainingFailed
from tessera.protocol.kinds import CODEC, Codec, Kind
from tessera.protocol.messages import Sealed, UpdateSubmission
from tessera.protocol.secure_coordinator import SecureParams
from tessera.protocol.topology import TreeParams
from tessera.protocol.wire import Wire
from tessera.runtime.transport.mail import to_envelope
from tessera.testing import (
    SilentAggregator,
    fixed_updates,
    plaintext_federation,
    secure_federation,
)

ROOT = Path(__file__).resolve().parents[2]
LIMITS = limits.ENVELOPE_LIMITS
ALICE, BOB = NodeKeys.from_seed(b"kind-limits-alice"), NodeKeys.from_seed(b"kind-limits-bob")
LONG = "x" * MAX_ID_BYTES  # the longest ids make the largest envelope
SECURE = SecureParams(
    tree=TreeParams(k=3, group_size=4, fan_in=3, min_group=2),
    clip=1.0,
    max_weight=10.0,
    phase_timeout=1.0,
    group_sums=True,  # the leaf seats' sums to the coordinator too
)


def test_every_kind_has_a_limit_the_relay_body_admits() -> None:
    assert set(LIMITS) == set(Kind)
    assert all(0 < n <= limits.MAIL_BODY for n in LIMITS.values())
    # An accusation brings its proof (evidence, a sum): the most; then evidence.
    assert LIMITS[Kind.ACCUSE] == limits.MAX_ENVELOPE_BYTES
    assert LIMITS[Kind.SHARE] < LIMITS[Kind.EVIDENCE] < LIMITS[Kind.ACCUSE]
    # Kinds that list ids are far below the bulk kinds.
    notices = (Kind.REPORT, Kind.COMMIT, Kind.REASSIGN, Kind.AUDIT_REQUEST)
    assert max(LIMITS[k] for k in notices) * 8 < LIMITS[Kind.SHARE]


def _sealed(kind: Kind, payload: bytes) -> bytes:
    return seal(
        kind=int(kind),
        job_id=LONG,
        round=2**31,
        sender=LONG,
        recipient=LONG,
        payload=payload,
        sender_keys=ALICE,
        recipient_public=BOB.public,
    )


def test_a_share_of_the_largest_model_fits_its_kind() -> None:
    ring = Ring(bits=64, frac_bits=40, terms=2)
    words = np.zeros(limits.MAX_PARAMETERS + limits.TAIL, np.uint64)
    payload = encode_share("g" * 255, 65535, ring, words.shape[0], FullShare(words))
    assert len(_sealed(Kind.SHARE, payload)) <= LIMITS[Kind.SHARE]


def test_a_plaintext_update_of_the_largest_model_fits_its_kind() -> None:
    update = UpdateSubmission(
        job_id=JobId(LONG),
        round=2**31,
        delta=np.zeros(limits.MAX_PARAMETERS, np.float32),
        num_samples=2**62,
        loss=1e300,
    )
    assert len(_sealed(Kind.UPDATE, encode_update(update))) <= LIMITS[Kind.UPDATE]


Sent = list[tuple[int, int, bytes]]  # (kind, envelope size, opened payload)


def _opened(data: bytes, keys: Mapping[NodeId, NodeKeys]) -> tuple[int, int, bytes]:
    head = peek(data)
    env = open_envelope(
        data,
        recipient_keys=keys[NodeId(head.recipient)],
        directory={n: k.public for n, k in keys.items()},
        expect_job=head.job_id,
        expect_round=None,
        expect_recipient=None,
        max_bytes=len(data),
        replay=None,
    )
    return head.kind, len(data), env.payload


def _secure_round_with_a_replacement(dim: int = 3) -> Sent:
    """Every envelope a secure round sends when one upper aggregator is silent (its backup
    audits without the copies). 16 nodes: in fewer, no upper group has a backup, for a
    backup may hold no other role within two levels of its group (no node sees two
    positions of one group)."""
    fed = secure_federation(16, secure=SECURE, dim=dim)
    fed.begin()
    seat = next(
        w.recipient
        for w in fed.network.queue
        if type(w.message).__name__ == "AggregateRequest" and w.message.group == "P1.0"
    )
    node = fed.nodes[seat]
    node.aggregator = SilentAggregator(seat, node.aggregator.job_id, node.aggregator.keys, {})  # type: ignore[attr-defined]
    fed.run()
    fed.answer(fixed_updates(fed))
    fed.run()
    for t in np.arange(1.0, 60.0, 0.5):
        fed.advance(float(t))
        fed.run()
        if fed.closed:
            break
    assert fed.closed and not fed.closed[0].skipped
    keys = {n: m.aggregator.keys for n, m in fed.nodes.items()}  # type: ignore[attr-defined]
    keys[COORDINATOR] = fed.coordinator.keys  # type: ignore[attr-defined]
    return [_opened(w.data, keys) for w in fed.delivered if w.kind is not None]


def _control_envelopes() -> Sent:
    """Every control message a plaintext and a secure round send, as mail."""
    fed = plaintext_federation(nodes=3, dim=4, rounds=1)
    fed.begin()
    fed.run()
    first, *rest = sorted(fed.tasks)
    fed.handle(first, LocalTrainingFailed(round=0, reason="out of memory"))  # a decline
    fed.answer(fixed_updates(fed), nodes=rest)
    messages = [(w.sender, w.recipient, w.message) for w in fed.network.queue]
    fed.run()
    messages += [(w.sender, w.recipient, w.message) for w in fed.delivered]
    sfed = secure_federation(9, secure=SECURE, dim=3)
    sfed.begin()
    messages += [(w.sender, w.recipient, w.message) for w in sfed.network.queue]
    keys = {n: NodeKeys.from_seed(n.encode()) for s, r, _ in messages for n in (s, r)}
    out = []
    for sender, recipient, message in messages:
        if isinstance(message, Sealed):
            continue
        mail = to_envelope(
            Send(recipient=recipient, message=message),
            sender=sender,
            job_id="job",
            keys=keys[sender],
            directory={n: k.public for n, k in keys.items()},
            publish_weights=lambda _: "0" * 64,
        )
        out.append(_opened(mail.data, keys))
    return out


@pytest.fixture(scope="module")
def sent() -> Sent:
    return _secure_round_with_a_replacement() + _control_envelopes()


def test_every_kind_a_round_sends_is_registered_and_within_its_limit(sent: Sent) -> None:
    kinds = {k for k, _, _ in sent}
    assert kinds <= set(Kind)
    # The scenario reaches most of the registry (the rest only on failures it has no
    # adversary for: accusations, audit requests, a failed leaf aggregator; and the
    # buffered and deadline rounds' notices, checked below).
    buffered = {Kind.SHARED, Kind.REPORT_NOW}
    assert kinds >= set(Kind) - {Kind.ACCUSE, Kind.AUDIT_REQUEST, Kind.RESEND_SHARE} - buffered
    assert all(size <= LIMITS[Kind(k)] for k, size, _ in sent)


def test_the_buffered_rounds_notices_are_within_their_limits() -> None:
    keys = {n: NodeKeys.generate() for n in (COORDINATOR, NodeId("a"))}
    directory = {n: k.public for n, k in keys.items()}
    notices = [
        (NodeId("a"), COORDINATOR, Kind.SHARED, encode_shared(4)),
        (COORDINATOR, NodeId("a"), Kind.REPORT_NOW, encode_labelled("g" * 64, 65535, b"")),
    ]
    for sender, recipient, kind, payload in notices:
        wire = Wire(sender, "j" * 64, keys[sender], directory)
        send = wire.send(recipient, kind, 2**31, payload, sealed=False)
        assert isinstance(send.message, Sealed)
        assert send.message.nbytes <= LIMITS[kind]


def test_the_evidence_bound_holds_for_the_evidence_a_round_sends() -> None:
    """Where the words dominate, every evidence envelope is within ``evidence_bytes``."""
    dim = 20_000
    tree = SECURE.tree
    bound = limits.evidence_bytes(dim, k=tree.k, group_size=tree.group_size, fan_in=tree.fan_in)
    sent = _secure_round_with_a_replacement(dim)
    sizes = [size for kind, size, _ in sent if kind == Kind.EVIDENCE]
    assert sizes and max(sizes) <= bound
    # An auditor that got every input's copy as it arrived is sent only keys; a replaced
    # one (it missed the copies) the boxes too: a full vector at least, so not vacuous.
    assert min(sizes) < 4096 < dim * 4 < max(sizes)
    copies = [size for kind, size, _ in sent if kind == Kind.INPUT_COPY]
    assert copies and max(copies) <= LIMITS[Kind.INPUT_COPY]


def _reads(read: Callable[[bytes], object]) -> Callable[[bytes], bool]:
    def reads(payload: bytes) -> bool:
        try:
            return read(payload) is not False
        except (ValueError, TypeError, RemoteProtocolError, msgpack.UnpackException):
            return False

    return reads


def _ring(payload: bytes) -> object:
    try:
        return decode_share(payload)
    except RemoteProtocolError:
        return decode_partial(payload)


def _labelled(payload: bytes) -> object:
    _, _, body = decode_labelled(payload)
    if body == b"":
        return True  # an audit request, or an audit notice
    if body[:4] == b"EVD2":
        return parse_evidence(body)
    _, start = decode_named(body)
    return peek(body[start:])  # an input's box, forwarded to the auditor


READERS = {
    Codec.RING: _reads(_ring),
    Codec.JSON: _reads(lambda p: isinstance(json.loads(p), dict)),
    Codec.LABELLED: _reads(_labelled),
    Codec.MSGPACK: _reads(lambda p: set(msgpack.unpackb(p, raw=False)) >= {"v", "k"}),
}


def test_each_payload_is_read_by_its_registered_codec_and_no_other(sent: Sent) -> None:
    assert set(READERS) == set(Codec)
    for kind, _, payload in sent:
        readers = {codec for codec, reads in READERS.items() if reads(payload)}
        assert readers == {CODEC[Kind(kind)]}, Kind(kind)


def _int_constants(tree: ast.Module) -> dict[str, int]:
    return {
        t.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for t in node.targets
        if isinstance(t, ast.Name) and type(node.value.value) is int
    }


@pytest.mark.parametrize("folder", ["src", "benchmarks"])
def test_no_module_seals_an_envelope_of_an_unregistered_kind(folder: str) -> None:
    """A literal kind (or a module constant) passed to ``seal`` must be in the registry."""
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        tree = ast.parse(path.read_text())
        constants = _int_constants(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            for kw in node.keywords:
                if kw.arg != "kind":
                    continue
                value = kw.value
                if isinstance(value, ast.Constant) and type(value.value) is int:
                    number = value.value
                elif isinstance(value, ast.Name) and value.id in constants:
                    number = constants[value.id]
                else:
                    continue
                if number not in set(Kind):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} kind={number}")
    assert found == []


def test_a_machine_refuses_an_oversized_small_kind_before_any_crypto() -> None:
    """A report past its kind's limit is "too large" as an envelope, signature unchecked."""
    agg = NodeId("agg")
    keys = {COORDINATOR: ALICE, agg: BOB}
    wire = Wire(COORDINATOR, "job", ALICE, {n: k.public for n, k in keys.items()})
    payload = encode_report(Report("g", 0, ())) + b" " * LIMITS[Kind.REPORT]
    data = seal(
        kind=int(Kind.REPORT),
        job_id="job",
        round=0,
        sender=agg,
        recipient=COORDINATOR,
        payload=payload,
        sender_keys=BOB,
        recipient_public=None,
    )
    assert len(data) <= limits.MAX_ENVELOPE_BYTES and peek(data).kind == Kind.REPORT
    with pytest.raises(InvalidEnvelope, match="too large"):
        wire.open(data, round=0, max_bytes=limits.MAX_ENVELOPE_BYTES)
    # A bad signature would be found only after the size: nothing of it was checked.
    forged = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(InvalidEnvelope, match="too large"):
        wire.open(forged, round=0, max_bytes=limits.MAX_ENVELOPE_BYTES)

"""Envelopes: round trips, every refusal with its reason, fuzzing, known answers.

The fast open (``open_sealed``) has its own file, test_crypto_fast_open.py.
"""

from __future__ import annotations

import copy
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.crypto import envelope
from tessera.crypto.envelope import (
    MAX_ID_BYTES,
    OVERHEAD_CLEAR,
    OVERHEAD_SEALED,
    REASONS,
    Bytes,
    Envelope,
    EnvelopeHeader,
    ReplayGuard,
    open_envelope,
    peek,
    seal,
)
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.errors import InvalidEnvelope, RemoteProtocolError
from tessera.ids import NodeId

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "envelope_v2.json").read_text())
V1_VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "envelope_v1.json").read_text())

ALICE = NodeKeys.from_seed(b"test-alice")  # sender
BOB = NodeKeys.from_seed(b"test-bob")  # recipient
CAROL = NodeKeys.from_seed(b"test-carol")  # someone else
JOB, ROUND = "job-1", 3
MAX = 1 << 20
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make(
    payload: Bytes = b"hello share",
    *,
    sealed: bool = True,
    kind: int = 1,
    job_id: str = JOB,
    round: int = ROUND,
    sender: str = "alice",
    recipient: str = "bob",
    sender_keys: NodeKeys = ALICE,
    recipient_public: PublicKeys | None = None,
    random_bytes: Callable[[int], bytes] | None = None,
) -> bytes:
    extra: dict[str, Any] = {} if random_bytes is None else {"random_bytes": random_bytes}
    return seal(
        kind=kind,
        job_id=job_id,
        round=round,
        sender=sender,
        recipient=recipient,
        payload=payload,
        sender_keys=sender_keys,
        recipient_public=(recipient_public or BOB.public) if sealed else None,
        **extra,
    )


def unseal(
    data: Bytes,
    *,
    recipient_keys: NodeKeys | None = BOB,
    sender_public: PublicKeys | None = ALICE.public,
    expect_job: str = JOB,
    expect_round: int | None = ROUND,
    expect_recipient: str | None = "bob",
    max_bytes: int = MAX,
    replay: ReplayGuard | None = None,
) -> Envelope:
    return open_envelope(
        data,
        recipient_keys=recipient_keys,
        sender_public=sender_public,
        expect_job=expect_job,
        expect_round=expect_round,
        expect_recipient=expect_recipient,
        max_bytes=max_bytes,
        replay=replay,
    )


def reason_of(call: Callable[[], object]) -> str:
    with pytest.raises(InvalidEnvelope) as info:
        call()
    assert info.value.reason in REASONS
    assert str(info.value) == f"invalid envelope: {info.value.reason}"
    return info.value.reason


def fixed_random(stream: bytes) -> Callable[[int], bytes]:
    pos = 0

    def draw(n: int) -> bytes:
        nonlocal pos
        out = stream[pos : pos + n]
        pos += n
        return out

    return draw


def resign(body: bytes, keys: NodeKeys = ALICE) -> bytes:
    """Sign ``body`` as ``seal`` would: for tampering that a signer itself could do."""
    return body + keys._sign(envelope._to_sign(body))


# -- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("sealed", [True, False])
def test_round_trip(sealed: bool) -> None:
    data = make(b"payload bytes", sealed=sealed)
    env = unseal(data)
    assert env == Envelope(
        kind=1,
        job_id=JOB,  # type: ignore[arg-type]
        round=ROUND,
        sender=NodeId("alice"),
        recipient=NodeId("bob"),
        nonce=env.nonce,
        payload=b"payload bytes",
        sealed=sealed,
    )
    assert len(env.nonce) == 12
    assert env.signature_verified
    assert (b"payload bytes" in data) is not sealed  # sealed payloads never travel in clear
    overhead = OVERHEAD_SEALED if sealed else OVERHEAD_CLEAR
    assert len(data) == overhead + len(JOB) + len("alice") + len("bob") + len(b"payload bytes")


def test_clear_envelopes_open_without_recipient_keys() -> None:
    assert unseal(make(b"commitment", sealed=False), recipient_keys=None).payload == b"commitment"


def test_every_seal_is_fresh() -> None:
    a, b = make(b"same"), make(b"same")
    assert a != b
    assert peek(a).nonce != peek(b).nonce


def test_repr_keeps_the_payload_out_of_logs() -> None:
    env = unseal(make(b"top secret update"))
    assert "top secret" not in repr(env)
    assert "alice" in repr(env)


def test_open_through_a_directory() -> None:
    data = make(b"x")
    directory = {NodeId("alice"): ALICE.public, NodeId("carol"): CAROL.public}
    env = open_envelope(
        data,
        recipient_keys=BOB,
        directory=directory,
        expect_job=JOB,
        expect_round=ROUND,
        expect_recipient="bob",
        max_bytes=MAX,
        replay=None,
    )
    assert env.payload == b"x"
    stranger = make(b"x", sender="dave")
    with pytest.raises(InvalidEnvelope, match="unknown sender"):
        open_envelope(
            stranger,
            recipient_keys=BOB,
            directory=directory,
            expect_job=JOB,
            expect_round=ROUND,
            expect_recipient="bob",
            max_bytes=MAX,
            replay=None,
        )
    # The directory binds the id to the key: alice's key cannot vouch for "carol".
    impostor = make(b"x", sender="carol")  # signed by ALICE
    with pytest.raises(InvalidEnvelope, match="bad signature"):
        open_envelope(
            impostor,
            recipient_keys=BOB,
            directory=directory,
            expect_job=JOB,
            expect_round=None,
            expect_recipient=None,
            max_bytes=MAX,
            replay=None,
        )


def test_exactly_one_way_to_name_the_sender() -> None:
    data = make()
    with pytest.raises(TypeError, match="exactly one"):
        unseal(data, sender_public=None)
    with pytest.raises(TypeError, match="exactly one"):
        open_envelope(
            data,
            recipient_keys=BOB,
            sender_public=ALICE.public,
            directory={},
            expect_job=JOB,
            expect_round=None,
            expect_recipient=None,
            max_bytes=MAX,
            replay=None,
        )


def test_open_is_also_reachable_as_envelope_open() -> None:
    assert envelope.open is open_envelope


def test_bytes_like_inputs() -> None:
    words = np.arange(6, dtype=np.uint64)
    data = make(words)  # type: ignore[arg-type]
    assert unseal(bytearray(data)).payload == words.tobytes()
    assert unseal(memoryview(data)).payload == words.tobytes()
    assert unseal(make(bytearray(b"ab"), sealed=False)).payload == b"ab"
    with pytest.raises(TypeError):
        unseal("not bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="contiguous"):
        make(memoryview(b"abcdef")[::2])


def test_peek_reads_the_header_unverified() -> None:
    data = make(b"12345", kind=9, recipient="bob", round=11)
    head = peek(data)
    assert head == EnvelopeHeader(
        kind=9,
        job_id=JOB,  # type: ignore[arg-type]
        round=11,
        sender=NodeId("alice"),
        recipient=NodeId("bob"),
        nonce=head.nonce,
        sealed=True,
        payload_size=5 + 16,
    )
    forged = data[:-1] + bytes([data[-1] ^ 1])
    assert peek(forged) == head  # peek checks shape, not the signature
    assert peek(make(b"12345", sealed=False)).payload_size == 5
    assert reason_of(lambda: peek(data[:-1])) == "truncated"


# -- every refusal, with its reason -------------------------------------------------------


def test_signed_by_another_key() -> None:
    data = make(sender_keys=CAROL)
    assert reason_of(lambda: unseal(data)) == "bad signature"
    assert reason_of(lambda: unseal(make(sealed=False, sender_keys=CAROL))) == "bad signature"


def test_signature_bytes_flipped() -> None:
    data = bytearray(make())
    data[-5] ^= 0x40
    assert reason_of(lambda: unseal(bytes(data))) == "bad signature"


def test_wrong_recipient_keys_cannot_decrypt() -> None:
    data = make()
    assert reason_of(lambda: unseal(data, recipient_keys=CAROL, expect_recipient=None)) == (
        "cannot decrypt"
    )
    assert reason_of(lambda: unseal(data, recipient_keys=None)) == "cannot decrypt"


def test_wrong_recipient_job_and_round() -> None:
    data = make()
    assert reason_of(lambda: unseal(data, expect_recipient="carol")) == "wrong recipient"
    assert reason_of(lambda: unseal(data, expect_job="job-2")) == "wrong job"
    assert reason_of(lambda: unseal(data, expect_round=ROUND + 1)) == "wrong round"
    assert unseal(data, expect_round=None, expect_recipient=None).payload == b"hello share"


def test_replayed_nonce() -> None:
    guard = ReplayGuard()
    data = make()
    unseal(data, replay=guard)
    assert len(guard) == 1
    assert reason_of(lambda: unseal(data, replay=guard)) == "replayed nonce"
    assert len(guard) == 1
    unseal(make(), replay=guard)  # a fresh nonce from the same sender is fine
    assert len(guard) == 2


def test_oversized() -> None:
    data = make(bytes(1000))
    assert reason_of(lambda: unseal(data, max_bytes=len(data) - 1)) == "too large"
    assert unseal(data, max_bytes=len(data)).payload == bytes(1000)


def test_truncated_and_trailing() -> None:
    data = make()
    assert reason_of(lambda: unseal(data[:-1])) == "truncated"
    assert reason_of(lambda: unseal(data[:10])) == "truncated"
    assert reason_of(lambda: unseal(b"")) == "truncated"
    assert reason_of(lambda: unseal(data + b"\x00")) == "trailing bytes"


def _header_offsets(data: bytes) -> dict[str, int]:
    """Offsets of the length bytes of each id and of the payload size, by the documented layout."""
    job = 3
    rnd = job + 1 + data[job]
    snd = rnd + 4
    rcp = snd + 1 + data[snd]
    nonce = rcp + 1 + data[rcp]
    size = nonce + 12
    return {"job": job, "round": rnd, "sender": snd, "recipient": rcp, "nonce": nonce, "size": size}


def test_structural_refusals() -> None:
    data = make()
    at = _header_offsets(data)

    def patched(offset: int, value: int) -> bytes:
        out = bytearray(data)
        out[offset] = value
        return bytes(out)

    assert reason_of(lambda: unseal(b"X" + data[1:])) == "bad magic"
    assert reason_of(lambda: unseal(b"X")) == "bad magic"
    assert reason_of(lambda: unseal(data[:2])) == "truncated"
    assert reason_of(lambda: unseal(patched(0, 1))) == "unsupported version"
    assert reason_of(lambda: unseal(patched(0, 3))) == "unsupported version"
    assert reason_of(lambda: unseal(b"TSR\x01" + data[1:])) == "unsupported version"
    assert reason_of(lambda: unseal(patched(2, 0x03))) == "malformed"  # unknown flag bit
    assert reason_of(lambda: unseal(patched(at["job"], 65))) == "field too long"
    assert reason_of(lambda: unseal(patched(at["sender"], 255))) == "field too long"
    assert reason_of(lambda: unseal(patched(at["recipient"], 0))) == "malformed"
    bad_utf8 = patched(at["job"] + 1, 0xFF)
    assert reason_of(lambda: unseal(bad_utf8)) == "malformed"
    too_big = bytearray(data)
    too_big[at["size"] : at["size"] + 4] = struct.pack(">I", 2**31)
    assert reason_of(lambda: unseal(bytes(too_big), max_bytes=2**40)) == "too large"
    shorter = bytearray(data)
    shorter[at["size"] : at["size"] + 4] = struct.pack(">I", 15)  # shorter than the tag
    assert reason_of(lambda: unseal(bytes(shorter))) == "malformed"


def test_a_clear_flag_on_a_sealed_box_is_caught() -> None:
    data = bytearray(make(b"x" * 40))
    data[2] = 0  # the ciphertext would now be read as a clear payload
    assert reason_of(lambda: unseal(bytes(data))) == "bad signature"
    # Even re-signed by the sender, a clear envelope never reaches the fast open.
    resigned = resign(bytes(data[:-64]))
    assert unseal(resigned).payload != b"x" * 40  # the ciphertext, in clear: nothing leaks
    guard = ReplayGuard()
    fast = lambda: envelope.open_sealed(  # noqa: E731
        resigned,
        recipient_keys=BOB,
        sender_public=ALICE.public,
        expect_job=JOB,
        expect_round=ROUND,
        expect_recipient="bob",
        max_bytes=MAX,
        replay=guard,
    )
    assert reason_of(fast) == "not sealed"
    assert len(guard) == 0


def test_header_tampering_breaks_the_signature() -> None:
    data = make(recipient="bob1")
    swapped = data.replace(b"\x04bob1", b"\x04bob2", 1)
    assert swapped != data
    assert reason_of(lambda: unseal(swapped, expect_recipient="bob2")) == "bad signature"


def test_header_is_bound_to_the_box_even_when_re_signed() -> None:
    """A signer who rewrites the header cannot make the box open: the header is the AEAD's AD."""
    data = make(recipient="bob1")
    body = data[:-64]
    to_bob2 = resign(body.replace(b"\x04bob1", b"\x04bob2", 1))
    assert reason_of(lambda: unseal(to_bob2, expect_recipient="bob2")) == "cannot decrypt"
    other_job = resign(body.replace(b"\x05job-1", b"\x05job-2", 1))
    assert reason_of(lambda: unseal(other_job, expect_job="job-2", expect_recipient="bob1")) == (
        "cannot decrypt"
    )
    other_kind = bytearray(body)
    other_kind[1] ^= 1
    assert reason_of(lambda: unseal(resign(bytes(other_kind)), expect_recipient="bob1")) == (
        "cannot decrypt"
    )
    at = _header_offsets(data)["round"]
    other_round = body[:at] + struct.pack(">I", ROUND + 1) + body[at + 4 :]
    assert reason_of(
        lambda: unseal(resign(other_round), expect_round=ROUND + 1, expect_recipient="bob1")
    ) == ("cannot decrypt")
    assert unseal(resign(body), expect_recipient="bob1").payload == b"hello share"


def test_boxes_cannot_be_spliced_across_messages() -> None:
    one, two = make(b"A" * 32), make(b"B" * 32)
    at = _header_offsets(one)["size"] + 4
    spliced = resign(one[:at] + two[at:-64])
    assert reason_of(lambda: unseal(spliced)) == "cannot decrypt"


def test_a_sender_with_a_low_order_agreement_key_cannot_be_decrypted() -> None:
    """A directory entry whose X25519 key is junk: refused, never an exception from below."""
    data = make(b"x")
    junk = PublicKeys(signing=ALICE.public.signing, agreement=bytes(32))
    assert reason_of(lambda: unseal(data, sender_public=junk)) == "cannot decrypt"
    assert BOB.cached_peers == 0 or junk.agreement not in BOB._shared


def test_failed_opens_leave_the_guard_unchanged() -> None:
    guard = ReplayGuard()
    unseal(make(b"first"), replay=guard)
    data = make(b"second")
    nonce = peek(data).nonce
    for attempt in [
        lambda: unseal(data, recipient_keys=CAROL, expect_recipient=None, replay=guard),
        lambda: unseal(data, sender_public=CAROL.public, replay=guard),
        lambda: unseal(data, expect_round=ROUND + 1, replay=guard),
        lambda: unseal(data[:-1], replay=guard),
    ]:
        reason_of(attempt)
        assert len(guard) == 1
        assert not guard.seen("alice", ROUND, nonce)
    assert unseal(data, replay=guard).payload == b"second"
    assert guard.seen("alice", ROUND, nonce)


# -- seal's own argument checks -------------------------------------------------------------


def test_seal_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="kind"):
        make(kind=256)
    with pytest.raises(ValueError, match="kind"):
        make(kind=True)
    with pytest.raises(ValueError, match="round"):
        make(round=-1)
    with pytest.raises(ValueError, match="round"):
        make(round=2**32)
    with pytest.raises(ValueError, match="job_id"):
        make(job_id="")
    with pytest.raises(ValueError, match="sender"):
        make(sender="x" * (MAX_ID_BYTES + 1))
    with pytest.raises(ValueError, match="recipient"):
        make(recipient="é" * 33)  # 66 bytes of UTF-8
    with pytest.raises(TypeError, match="sender"):
        make(sender=7)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="random_bytes"):
        make(random_bytes=lambda n: bytes(n - 1))
    assert unseal(make(sender="x" * MAX_ID_BYTES), sender_public=ALICE.public).sender == "x" * 64


def test_payload_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envelope, "MAX_PAYLOAD", 10)
    make(bytes(10))
    with pytest.raises(ValueError, match="larger than"):
        make(bytes(11))


def test_seal_to_a_low_order_key_is_the_peers_fault() -> None:
    junk = PublicKeys(signing=BOB.public.signing, agreement=bytes(32))
    with pytest.raises(RemoteProtocolError, match="agreement key"):
        make(recipient_public=junk)


# -- the replay guard -----------------------------------------------------------------------


def test_replay_guard_forgets_by_round() -> None:
    guard = ReplayGuard()
    for r in (1, 2, 3):
        guard.check_and_remember("a", r, bytes([r]) * 16)
        guard.check_and_remember("b", r, bytes([r]) * 16)
    assert len(guard) == 6
    guard.forget_before(3)
    assert len(guard) == 2
    assert guard.floor == 3
    assert not guard.seen("a", 1, bytes([1]) * 16)
    assert guard.seen("a", 3, bytes([3]) * 16)
    with pytest.raises(InvalidEnvelope, match="stale round"):
        guard.check("a", 2, bytes(16))
    guard.forget_before(1)  # never moves back
    assert guard.floor == 3
    guard.forget_before(10)
    assert len(guard) == 0


def test_replay_guard_refuses_old_rounds_in_open() -> None:
    guard = ReplayGuard()
    guard.forget_before(ROUND + 1)
    assert reason_of(lambda: unseal(make(), replay=guard)) == "stale round"
    assert len(guard) == 0


def test_replay_guard_bounds_each_sender_per_round() -> None:
    guard = ReplayGuard(max_per_round=2)
    unseal(make(), replay=guard)
    unseal(make(), replay=guard)
    assert reason_of(lambda: unseal(make(), replay=guard)) == "too many messages"
    assert len(guard) == 2
    unseal(make(sender="carol", sender_keys=CAROL), sender_public=CAROL.public, replay=guard)
    unseal(make(round=ROUND + 1), expect_round=ROUND + 1, replay=guard)
    guard.forget_before(ROUND + 1)
    assert len(guard) == 1
    with pytest.raises(ValueError, match="max_per_round"):
        ReplayGuard(max_per_round=0)


def test_invalid_envelope_copies_keep_their_reason() -> None:
    err = InvalidEnvelope("bad signature")
    clone = copy.copy(err)
    assert clone.reason == "bad signature"
    assert str(clone) == str(err)
    assert isinstance(err, RemoteProtocolError)


# -- property tests -------------------------------------------------------------------------

ids = st.text(min_size=1, max_size=MAX_ID_BYTES).filter(
    lambda s: len(s.encode("utf-8")) <= MAX_ID_BYTES
)


fields = st.fixed_dictionaries(
    {
        "payload": st.binary(max_size=2048),
        "sealed": st.booleans(),
        "kind": st.integers(0, 255),
        "job_id": ids,
        "round": st.integers(0, 2**32 - 1),
        "sender": ids,
        "recipient": ids,
    }
)


@FUZZ
@given(fields=fields)
def test_any_fields_round_trip(fields: dict[str, Any]) -> None:
    data = make(**fields)
    payload, sealed, kind = fields["payload"], fields["sealed"], fields["kind"]
    job_id, round, sender, recipient = (
        fields["job_id"],
        fields["round"],
        fields["sender"],
        fields["recipient"],
    )
    guard = ReplayGuard()
    env = unseal(
        data, expect_job=job_id, expect_round=round, expect_recipient=recipient, replay=guard
    )
    assert (env.payload, env.kind, env.sealed) == (payload, kind, sealed)
    assert (env.job_id, env.round, env.sender, env.recipient) == (job_id, round, sender, recipient)
    assert peek(data) == EnvelopeHeader(
        kind=kind,
        job_id=env.job_id,
        round=round,
        sender=env.sender,
        recipient=env.recipient,
        nonce=env.nonce,
        sealed=sealed,
        payload_size=len(payload) + (16 if sealed else 0),
    )
    assert guard.seen(sender, round, env.nonce)


VALID_SEALED = make(b"fuzz target payload " * 4)
VALID_CLEAR = make(b"fuzz target payload " * 4, sealed=False)
PRIMED = make(b"already seen")


def _primed_guard() -> ReplayGuard:
    guard = ReplayGuard()
    unseal(PRIMED, replay=guard)
    return guard


def _refused_and_guard_unchanged(data: bytes) -> None:
    guard = _primed_guard()
    with pytest.raises(InvalidEnvelope) as info:
        unseal(data, replay=guard, expect_round=None, expect_recipient=None)
    assert info.value.reason in REASONS
    assert len(guard) == 1
    assert guard.floor == 0
    try:  # peek never raises anything but InvalidEnvelope either
        peek(data)
    except InvalidEnvelope as exc:
        reason: str | None = exc.reason
    else:
        reason = None
    assert reason is None or reason in REASONS


@FUZZ
@given(data=st.binary(max_size=400))
def test_garbage_is_refused(data: bytes) -> None:
    _refused_and_guard_unchanged(data)


@FUZZ
@given(tail=st.binary(max_size=400), version=st.sampled_from([1, 2]), flags=st.integers(0, 255))
def test_garbage_with_a_plausible_start_is_refused(tail: bytes, version: int, flags: int) -> None:
    _refused_and_guard_unchanged(b"TSR" + bytes([version, 1, flags]) + tail)
    _refused_and_guard_unchanged(bytes([version, 1, flags]) + tail)


@FUZZ
@given(which=st.booleans(), index=st.integers(0, 10**6), delta=st.integers(1, 255))
def test_any_single_byte_corruption_is_refused(which: bool, index: int, delta: int) -> None:
    data = bytearray(VALID_SEALED if which else VALID_CLEAR)
    data[index % len(data)] = (data[index % len(data)] + delta) % 256
    _refused_and_guard_unchanged(bytes(data))


@FUZZ
@given(which=st.booleans(), cut=st.integers(0, 10**6))
def test_any_truncation_is_refused(which: bool, cut: int) -> None:
    data = VALID_SEALED if which else VALID_CLEAR
    _refused_and_guard_unchanged(data[: cut % len(data)])


@FUZZ
@given(which=st.booleans(), extra=st.binary(min_size=1, max_size=100))
def test_any_extension_is_refused(which: bool, extra: bytes) -> None:
    data = VALID_SEALED if which else VALID_CLEAR
    _refused_and_guard_unchanged(data + extra)


@FUZZ
@given(which=st.booleans(), index=st.integers(0, 10**6), insert=st.binary(min_size=1, max_size=8))
def test_any_insertion_is_refused(which: bool, index: int, insert: bytes) -> None:
    data = VALID_SEALED if which else VALID_CLEAR
    at = index % (len(data) + 1)
    _refused_and_guard_unchanged(data[:at] + insert + data[at:])


# -- known-answer vectors ----------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_known_answer_vector(vector: dict[str, Any]) -> None:
    sender = NodeKeys.from_seed(bytes.fromhex(vector["sender_seed"]))
    recipient = NodeKeys.from_seed(bytes.fromhex(vector["recipient_seed"]))
    assert sender.public.to_bytes().hex() == vector["sender_public"]
    assert recipient.public.to_bytes().hex() == vector["recipient_public"]
    payload = bytes.fromhex(vector["payload"])
    expected = bytes.fromhex(vector["envelope"])
    data = seal(
        kind=vector["kind"],
        job_id=vector["job_id"],
        round=vector["round"],
        sender=vector["sender"],
        recipient=vector["recipient"],
        payload=payload,
        sender_keys=sender,
        recipient_public=recipient.public if vector["sealed"] else None,
        random_bytes=fixed_random(bytes.fromhex(vector["random"])),
    )
    assert data.hex() == expected.hex()
    env = open_envelope(
        expected,
        recipient_keys=recipient,
        sender_public=sender.public,
        expect_job=vector["job_id"],
        expect_round=vector["round"],
        expect_recipient=vector["recipient"],
        max_bytes=len(expected),
        replay=ReplayGuard(),
    )
    assert env.payload == payload
    assert env.sealed is vector["sealed"]


@pytest.mark.parametrize(
    "vector", [v for v in VECTORS["vectors"] if v["sealed"]], ids=lambda v: v["name"]
)
def test_known_answer_vector_by_the_documented_recipe(vector: dict[str, Any]) -> None:
    """Open the vector with raw primitives and the module docstring alone, not the module."""
    data = bytes.fromhex(vector["envelope"])
    ids_len = sum(len(vector[k].encode()) for k in ("job_id", "sender", "recipient"))
    header_len = 1 + 1 + 1 + 1 + 4 + 1 + 1 + 12 + 4 + ids_len
    header, box, signature = data[:header_len], data[header_len:-64], data[-64:]
    nonce = header[-16:-4]
    assert nonce.hex() == vector["random"]
    assert struct.unpack(">I", header[-4:])[0] == len(box)

    sender = PublicKeys.from_bytes(bytes.fromhex(vector["sender_public"]))
    recipient = PublicKeys.from_bytes(bytes.fromhex(vector["recipient_public"]))
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data[:-64])
    ed25519.Ed25519PublicKey.from_public_bytes(sender.signing).verify(
        signature, b"tessera/envelope/v2/signature\x00" + digest.finalize()
    )

    def agreement_key(seed: str) -> x25519.X25519PrivateKey:
        okm = HKDF(
            algorithm=hashes.SHA256(), length=64, salt=None, info=b"tessera/node-keys/v1/from-seed"
        ).derive(bytes.fromhex(seed))
        return x25519.X25519PrivateKey.from_private_bytes(okm[32:])

    # Static-static: the recipient's side and the sender's side agree.
    shared = agreement_key(vector["recipient_seed"]).exchange(
        x25519.X25519PublicKey.from_public_bytes(sender.agreement)
    )
    assert shared == agreement_key(vector["sender_seed"]).exchange(
        x25519.X25519PublicKey.from_public_bytes(recipient.agreement)
    )
    info = b"tessera/envelope/v2/seal\x00" + sender.to_bytes() + recipient.to_bytes() + header
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=nonce, info=info).derive(shared)
    plain = AESGCM(key).decrypt(bytes(12), box, header)
    assert plain == bytes.fromhex(vector["payload"])
    assert header[:3] == bytes([2, vector["kind"], 1])


@pytest.mark.parametrize("vector", V1_VECTORS["vectors"], ids=lambda v: v["name"])
def test_version_1_envelopes_are_refused(vector: dict[str, Any]) -> None:
    """No mixed versions: a version 1 envelope is refused by name, by every entry point."""
    data = bytes.fromhex(vector["envelope"])
    sender = NodeKeys.from_seed(bytes.fromhex(vector["sender_seed"]))
    recipient = NodeKeys.from_seed(bytes.fromhex(vector["recipient_seed"]))
    directory = {NodeId(vector["sender"]): sender.public}
    common: dict[str, Any] = {
        "expect_job": vector["job_id"],
        "expect_round": vector["round"],
        "expect_recipient": vector["recipient"],
        "max_bytes": MAX,
    }
    assert reason_of(lambda: peek(data)) == "unsupported version"
    assert reason_of(
        lambda: open_envelope(
            data, recipient_keys=recipient, directory=directory, replay=None, **common
        )
    ) == ("unsupported version")
    assert reason_of(
        lambda: envelope.open_sealed(
            data, recipient_keys=recipient, directory=directory, replay=ReplayGuard(), **common
        )
    ) == ("unsupported version")
    assert reason_of(
        lambda: envelope.verify_envelope(
            data, directory=directory, expect_job=vector["job_id"], max_bytes=MAX
        )
    ) == ("unsupported version")

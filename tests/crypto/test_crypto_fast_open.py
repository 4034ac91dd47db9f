"""The fast open (``open_sealed``): authentic without the signature, and never more than that.

Each attack is written as the attacker would run it, then refused: a third
party sealing under the sender's name, replays, re-addressing, splicing a
box into another job or round, bit flips, clear envelopes, a disclosed key
used on another box, and an aggregator forging a box under a key it knows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.crypto import envelope
from tessera.crypto.envelope import (
    REASONS,
    Envelope,
    ReplayGuard,
    disclose_key,
    open_envelope,
    open_sealed,
    peek,
    seal,
    verify_envelope,
)
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.errors import InvalidEnvelope
from tessera.ids import NodeId

ALICE = NodeKeys.from_seed(b"fast-alice")  # sender
BOB = NodeKeys.from_seed(b"fast-bob")  # recipient
CAROL = NodeKeys.from_seed(b"fast-carol")  # a third party, also in the directory
DIRECTORY = {
    NodeId("alice"): ALICE.public,
    NodeId("bob"): BOB.public,
    NodeId("carol"): CAROL.public,
}
JOB, ROUND = "job-1", 3
MAX = 1 << 20
SIG = 64
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make(
    payload: bytes = b"a share of an update",
    *,
    sealed: bool = True,
    kind: int = 1,
    job_id: str = JOB,
    round: int = ROUND,
    sender: str = "alice",
    recipient: str = "bob",
    sender_keys: NodeKeys = ALICE,
    recipient_public: PublicKeys | None = None,
) -> bytes:
    return seal(
        kind=kind,
        job_id=job_id,
        round=round,
        sender=sender,
        recipient=recipient,
        payload=payload,
        sender_keys=sender_keys,
        recipient_public=(recipient_public or BOB.public) if sealed else None,
    )


def fast(
    data: bytes,
    *,
    replay: ReplayGuard | None = None,
    recipient_keys: NodeKeys = BOB,
    expect_job: str = JOB,
    expect_round: int | None = ROUND,
    expect_recipient: str = "bob",
) -> Envelope:
    return open_sealed(
        data,
        recipient_keys=recipient_keys,
        directory=DIRECTORY,
        expect_job=expect_job,
        expect_round=expect_round,
        expect_recipient=expect_recipient,
        max_bytes=MAX,
        replay=ReplayGuard() if replay is None else replay,
    )


def full(data: bytes, *, replay: ReplayGuard | None = None, **kw: Any) -> Envelope:
    args: dict[str, Any] = {
        "recipient_keys": BOB,
        "expect_job": JOB,
        "expect_round": ROUND,
        "expect_recipient": "bob",
        "max_bytes": MAX,
    } | kw
    return open_envelope(data, directory=DIRECTORY, replay=replay, **args)


def verify(data: bytes) -> None:
    verify_envelope(data, directory=DIRECTORY, expect_job=JOB, max_bytes=MAX)


def reason_of(call: Callable[[], object]) -> str:
    with pytest.raises(InvalidEnvelope) as info:
        call()
    assert info.value.reason in REASONS
    return info.value.reason


def refused_by_both(data: bytes, **kw: Any) -> tuple[str, str]:
    """Both opens refuse ``data`` and leave their replay guards as they were."""
    guards = ReplayGuard(), ReplayGuard()
    reasons = (
        reason_of(lambda: fast(data, replay=guards[0], **kw)),
        reason_of(lambda: full(data, replay=guards[1], **kw)),
    )
    assert len(guards[0]) == len(guards[1]) == 0
    return reasons


def _ids(max_bytes: int = 64) -> st.SearchStrategy[str]:
    return st.text(min_size=1, max_size=max_bytes).filter(
        lambda s: len(s.encode("utf-8")) <= max_bytes
    )


# -- what it opens ----------------------------------------------------------------------


@FUZZ
@given(
    payload=st.binary(max_size=2048),
    kind=st.integers(0, 255),
    job_id=_ids(),
    round=st.integers(0, 2**32 - 1),
    recipient=_ids(),
)
def test_fast_and_full_opens_agree(
    payload: bytes, kind: int, job_id: str, round: int, recipient: str
) -> None:
    data = make(payload, kind=kind, job_id=job_id, round=round, recipient=recipient)
    guard = ReplayGuard()
    env = fast(
        data, replay=guard, expect_job=job_id, expect_round=round, expect_recipient=recipient
    )
    ref = full(data, expect_job=job_id, expect_round=round, expect_recipient=recipient)
    assert env.payload == payload
    assert env.signature_verified is False and ref.signature_verified is True
    assert env == Envelope(
        kind=kind,
        job_id=ref.job_id,
        round=round,
        sender=ref.sender,
        recipient=ref.recipient,
        nonce=ref.nonce,
        payload=payload,
        sealed=True,
        signature_verified=False,
    )
    assert guard.seen("alice", round, env.nonce)
    # what a fast-opened box needs before it is handed on as evidence
    assert verify_envelope(data, directory=DIRECTORY, expect_job=job_id, max_bytes=MAX).nonce == (
        env.nonce
    )


def test_fast_open_names_the_sender_either_way() -> None:
    data = make()
    env = open_sealed(
        data,
        recipient_keys=BOB,
        sender_public=ALICE.public,
        expect_job=JOB,
        expect_round=None,
        expect_recipient="bob",
        max_bytes=MAX,
        replay=ReplayGuard(),
    )
    assert env.payload == b"a share of an update"
    with pytest.raises(TypeError, match="exactly one"):
        open_sealed(
            data,
            recipient_keys=BOB,
            expect_job=JOB,
            expect_round=None,
            expect_recipient="bob",
            max_bytes=MAX,
            replay=ReplayGuard(),
        )


def test_fast_open_takes_no_shortcut_in_its_arguments() -> None:
    """A recipient, a replay guard and an expected recipient are required, not optional."""
    data = make()
    common: dict[str, Any] = {
        "directory": DIRECTORY,
        "expect_job": JOB,
        "expect_round": ROUND,
        "max_bytes": MAX,
    }
    with pytest.raises(TypeError, match="recipient's keys"):
        open_sealed(
            data, recipient_keys=None, expect_recipient="bob", replay=ReplayGuard(), **common
        )  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ReplayGuard"):
        open_sealed(data, recipient_keys=BOB, expect_recipient="bob", replay=None, **common)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expect_recipient"):
        open_sealed(data, recipient_keys=BOB, expect_recipient=None, replay=ReplayGuard(), **common)  # type: ignore[arg-type]


# -- attacks --------------------------------------------------------------------------------


@FUZZ
@given(payload=st.binary(max_size=512), signer=st.sampled_from([CAROL, BOB]))
def test_a_third_party_cannot_seal_in_the_senders_name(payload: bytes, signer: NodeKeys) -> None:
    """Carol (or Bob himself) seals to Bob as "alice": she lacks Alice's agreement key."""
    forged = make(payload, sender="alice", sender_keys=signer)
    assert refused_by_both(forged) == ("cannot decrypt", "bad signature")


def test_a_third_party_cannot_borrow_the_senders_public_keys() -> None:
    """Carol seals with her own private key to Bob, but under Alice's name and signature key.

    Bob derives the key from Alice's agreement key, which Carol's private key
    does not match: the box does not open, whatever Carol signs it with.
    """
    impostor = NodeKeys(CAROL._signing, CAROL._agreement)
    forged = make(b"poison", sender="alice", sender_keys=impostor)
    assert reason_of(lambda: fast(forged)) == "cannot decrypt"


@FUZZ
@given(payload=st.binary(max_size=256))
def test_a_replayed_box_is_refused(payload: bytes) -> None:
    guard = ReplayGuard()
    data = make(payload)
    fast(data, replay=guard)
    assert reason_of(lambda: fast(data, replay=guard)) == "replayed nonce"
    assert len(guard) == 1
    # the full open shares the guard: a box taken fast cannot come in again the slow way
    assert reason_of(lambda: full(data, replay=guard)) == "replayed nonce"


def _reheader(data: bytes, **fields: Any) -> bytes:
    """``data``'s ciphertext under a header rebuilt with other fields, signed by Alice.

    The attacker here is as strong as can be: it holds Alice's signing key,
    so only the AEAD (its associated data and the key's info) can refuse.
    """
    head = peek(data)
    values = {
        "kind": head.kind,
        "job_id": head.job_id,
        "round": head.round,
        "sender": head.sender,
        "recipient": head.recipient,
    } | fields
    start = len(data) - SIG - head.payload_size
    box = data[start:-SIG]
    template = seal(
        payload=bytes(head.payload_size - 16),
        sender_keys=ALICE,
        recipient_public=BOB.public,
        random_bytes=lambda n: head.nonce,
        **values,
    )
    new_header = template[: len(template) - SIG - head.payload_size]
    body = new_header + box
    return body + ALICE._sign(envelope._to_sign(body))


@FUZZ
@given(
    field=st.sampled_from(["recipient", "job_id", "round", "kind"]),
    payload=st.binary(max_size=256),
)
def test_a_box_cannot_be_re_addressed_or_spliced_into_another_job_or_round(
    field: str, payload: bytes
) -> None:
    """A box Alice sealed for one header, put under another that Bob would accept."""
    other = {"recipient": "bob-old", "job_id": "job-2", "round": ROUND + 1, "kind": 2}[field]
    data = make(payload, **{field: other})  # sealed to Bob's keys, another header
    expected = {"recipient": "bob", "job_id": JOB, "round": ROUND, "kind": 1}[field]
    spliced = _reheader(data, **{field: expected})
    head = peek(spliced)
    assert (head.kind, head.job_id, head.round, head.recipient) == (1, JOB, ROUND, "bob")
    assert refused_by_both(spliced) == ("cannot decrypt", "cannot decrypt")


@FUZZ
@given(payload=st.binary(max_size=256))
def test_the_splicing_tool_itself_keeps_a_valid_box_valid(payload: bytes) -> None:
    """``_reheader`` with no change rebuilds the same envelope: the refusals above are real."""
    data = make(payload)
    assert _reheader(data)[:-SIG] == data[:-SIG]
    assert fast(_reheader(data)).payload == full(_reheader(data)).payload == payload


def test_a_box_sealed_for_another_recipient_is_refused() -> None:
    for_carol = make(recipient="carol", recipient_public=CAROL.public)
    assert refused_by_both(for_carol) == ("wrong recipient", "wrong recipient")
    readdressed = _reheader(for_carol, recipient="bob")
    assert refused_by_both(readdressed) == ("cannot decrypt", "cannot decrypt")


VALID = make(b"fuzz target payload " * 4)


@FUZZ
@given(bit=st.integers(0, len(VALID) * 8 - 1))
def test_any_single_bit_flip_is_refused(bit: int) -> None:
    """Every bit of the body is the AEAD's: both opens refuse a flip there.

    The signature is the one part the fast open does not read: a flip there
    is refused by the full open and by ``verify_envelope``, while the fast
    open returns the (authentic) payload marked ``signature_verified=False``.
    """
    data = bytearray(VALID)
    data[bit // 8] ^= 1 << (bit % 8)
    flipped = bytes(data)
    if bit // 8 < len(VALID) - SIG:
        fast_reason, _ = refused_by_both(flipped)
        assert fast_reason in REASONS
    else:
        assert reason_of(lambda: full(flipped)) == "bad signature"
        assert reason_of(lambda: verify(flipped)) == "bad signature"
        env = fast(flipped)
        assert env.signature_verified is False
        assert env.payload == b"fuzz target payload " * 4


def test_clear_envelopes_never_open_fast() -> None:
    clear = make(sealed=False)
    guard = ReplayGuard()
    assert reason_of(lambda: fast(clear, replay=guard)) == "not sealed"
    assert len(guard) == 0
    assert full(clear).payload == b"a share of an update"  # the full open checks its signature


@FUZZ
@given(first=st.binary(max_size=256), second=st.binary(max_size=256))
def test_a_disclosed_key_opens_only_its_own_box(first: bytes, second: bytes) -> None:
    one, two = make(first), make(second)
    key = disclose_key(one, recipient_keys=BOB, sender_public=ALICE.public)
    assert full(one, recipient_keys=None, disclosed_key=key).payload == first
    assert reason_of(lambda: full(two, recipient_keys=None, disclosed_key=key)) == (
        "cannot decrypt"
    )
    assert key != disclose_key(two, recipient_keys=BOB, sender_public=ALICE.public)


# -- an aggregator that knows the box's key ---------------------------------------------------


def _gf_mult(x: int, y: int) -> int:
    """Multiplication in GCM's GF(2^128) (NIST SP 800-38D, algorithm 1)."""
    z, v = 0, y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ (0xE1 << 120) if v & 1 else v >> 1
    return z


def _same_tag_forgery(data: bytes, key: bytes, delta: bytes) -> bytes:
    """Another ciphertext with the very same GCM tag under ``key`` (GHASH is linear in H).

    Add ``delta`` to ciphertext block 0 and ``delta * H`` to block 1: their
    terms in GHASH, ``delta * H^(m)`` and ``delta * H * H^(m-1)``, cancel.
    """
    head = peek(data)
    start = len(data) - SIG - head.payload_size
    h_block = Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(bytes(16))
    h = int.from_bytes(h_block, "big")
    d = int.from_bytes(delta, "big")
    fix = _gf_mult(d, h).to_bytes(16, "big")
    box = bytearray(data[start:-SIG])
    box[0:16] = bytes(a ^ b for a, b in zip(box[0:16], delta, strict=True))
    box[16:32] = bytes(a ^ b for a, b in zip(box[16:32], fix, strict=True))
    return data[:start] + bytes(box) + data[-SIG:]


def test_an_aggregator_with_the_key_can_forge_a_tag_but_not_the_signature() -> None:
    """The attack the signature exists for: the recipient knows the box's key.

    It can seal any other payload under the same header and key (a valid
    tag), or even keep the very tag and change the ciphertext. Either passes
    the AEAD, which is why the signature covers the whole ciphertext and
    never only the tag; the auditor's checks refuse both.
    """
    payload = bytes(range(64))
    data = make(payload)
    key = disclose_key(data, recipient_keys=BOB, sender_public=ALICE.public)
    head = peek(data)
    start = len(data) - SIG - head.payload_size
    header = data[:start]

    # 1. Another payload, same header, same key: a valid tag.
    other = AESGCM(key).encrypt(bytes(12), b"\xff" * 64, header)
    forged = header + other + data[-SIG:]
    assert AESGCM(key).decrypt(bytes(12), forged[start:-SIG], header) == b"\xff" * 64

    # 2. The same tag as the original, on another ciphertext.
    same_tag = _same_tag_forgery(data, key, b"\x01" + bytes(15))
    assert same_tag[-SIG - 16 : -SIG] == data[-SIG - 16 : -SIG]  # the tag did not change
    assert same_tag != data
    changed = AESGCM(key).decrypt(bytes(12), same_tag[start:-SIG], header)
    assert changed != payload and changed[32:] == payload[32:]
    # A signature over the header and the tag alone would still hold for it:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(header + same_tag[-SIG - 16 : -SIG])
    tag_only = digest.finalize()
    digest = hashes.Hash(hashes.SHA256())
    digest.update(header + data[-SIG - 16 : -SIG])
    assert tag_only == digest.finalize()

    for box in (forged, same_tag):
        assert reason_of(lambda b=box: verify(b)) == "bad signature"
        assert reason_of(lambda b=box: full(b, recipient_keys=None, disclosed_key=key)) == (
            "bad signature"
        )
    assert full(data, recipient_keys=None, disclosed_key=key).payload == payload


# -- what the fast open does not protect against (documented) --------------------------------


def test_key_compromise_impersonation_is_stopped_by_the_signature_only() -> None:
    """Whoever holds Bob's agreement key can seal to Bob as anyone: static-static's price.

    The fast open accepts such a box (it is what the module docstring
    warns of: re-key a node whose agreement key leaked); the full open
    refuses it, since the thief lacks Alice's signing key.
    """
    thief = NodeKeys(CAROL._signing, BOB._agreement)  # Bob's agreement key, stolen
    shared = thief._exchange(ALICE.public.agreement)
    template = make(b"x" * 48, sender_keys=ALICE)  # only for the header's shape
    head = peek(template)
    header = template[: len(template) - SIG - head.payload_size]
    info = b"tessera/envelope/v2/seal\x00" + ALICE.public.to_bytes() + BOB.public.to_bytes()
    key = HKDF(hashes.SHA256(), 32, salt=head.nonce, info=info + header).derive(shared)
    body = header + AESGCM(key).encrypt(bytes(12), b"poison" * 8, header)
    forged = body + thief._sign(envelope._to_sign(body))
    assert fast(forged).payload == b"poison" * 8
    assert reason_of(lambda: full(forged)) == "bad signature"


@FUZZ
@given(payload=st.binary(min_size=0, max_size=2048))
def test_a_sender_reads_back_what_it_sealed_and_nobody_else_can(payload: bytes) -> None:
    """``reopen_sent``: a contributor keeps its sealed share instead of the share itself."""
    data = make(payload)
    assert envelope.reopen_sent(data, sender_keys=ALICE, recipient_public=BOB.public) == payload
    # Carol, not the sender, cannot use the sender's path to read Alice's box to Bob.
    with pytest.raises(InvalidEnvelope, match=envelope.CANNOT_DECRYPT):
        envelope.reopen_sent(data, sender_keys=CAROL, recipient_public=BOB.public)
    # Nor does the box read back as sealed for another recipient.
    with pytest.raises(InvalidEnvelope, match=envelope.CANNOT_DECRYPT):
        envelope.reopen_sent(data, sender_keys=ALICE, recipient_public=CAROL.public)
    flipped = bytearray(data)
    flipped[len(data) - SIG - 1] ^= 1  # the last byte of the box: its tag
    with pytest.raises(InvalidEnvelope):
        envelope.reopen_sent(bytes(flipped), sender_keys=ALICE, recipient_public=BOB.public)
    with pytest.raises(InvalidEnvelope):  # a clear envelope has no box to read back
        envelope.reopen_sent(
            make(payload, sealed=False), sender_keys=ALICE, recipient_public=BOB.public
        )

"""Disclosing one box's key opens that box, for an auditor, and nothing else."""

from __future__ import annotations

import pytest

from tessera.crypto.envelope import disclose_key, open_envelope, seal
from tessera.crypto.keys import NodeKeys
from tessera.errors import InvalidEnvelope

A, B, C = (NodeKeys.from_seed(bytes([i]) * 32) for i in range(3))
DIRECTORY = {"a": A.public, "b": B.public, "c": C.public}


def box(payload: bytes) -> bytes:
    return seal(
        kind=1,
        job_id="j",
        round=0,
        sender="a",
        recipient="b",
        payload=payload,
        sender_keys=A,
        recipient_public=B.public,
    )


def audit_open(data: bytes, key: bytes):
    return open_envelope(
        data,
        recipient_keys=None,
        directory=DIRECTORY,
        expect_job="j",
        expect_round=0,
        expect_recipient="b",
        max_bytes=1 << 20,
        replay=None,
        disclosed_key=key,
    )


def test_disclosed_key_opens_exactly_that_box() -> None:
    first, second = box(b"share one"), box(b"share two")
    key = disclose_key(first, recipient_keys=B, sender_public=A.public)
    assert audit_open(first, key).payload == b"share one"
    with pytest.raises(InvalidEnvelope, match="cannot decrypt"):
        audit_open(second, key)


def test_a_made_up_key_or_a_forged_box_fails() -> None:
    data = box(b"secret")
    with pytest.raises(InvalidEnvelope, match="cannot decrypt"):
        audit_open(data, bytes(32))
    key = disclose_key(data, recipient_keys=B, sender_public=A.public)
    forged = data[:-70] + bytes([data[-70] ^ 1]) + data[-69:]
    with pytest.raises(InvalidEnvelope):
        audit_open(forged, key)  # the sender's signature still guards the box


def test_only_the_recipient_can_compute_the_key() -> None:
    data = box(b"secret")
    wrong = disclose_key(data, recipient_keys=C, sender_public=A.public)
    with pytest.raises(InvalidEnvelope, match="cannot decrypt"):
        audit_open(data, wrong)

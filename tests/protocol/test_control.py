"""Control messages on the wire: exact round trips, and garbage refused with a reason."""

from __future__ import annotations

from types import MappingProxyType

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.errors import RemoteProtocolError
from tessera.ids import JobId, NodeId
from tessera.protocol.control import (
    decode_aggregate_request,
    decode_decline,
    decode_train_request,
    decode_update,
    encode_aggregate_request,
    encode_decline,
    encode_train_request,
    encode_update,
    peek_train_request,
)
from tessera.protocol.messages import (
    AggregateRequest,
    SecureAssignment,
    TrainingDeclined,
    TrainRequest,
    UpdateSubmission,
)

DIGEST = "ab" * 32
WEIGHTS = np.arange(5, dtype=np.float32)


def resolve(digest: str, length: int) -> np.ndarray:
    assert digest == DIGEST
    return WEIGHTS[:length]


def assignment() -> SecureAssignment:
    return SecureAssignment(
        group="L0-3",
        aggregators=(NodeId("a"), NodeId("b"), NodeId("c")),
        backups=(NodeId("d"),),
        full_position=1,
        ring_bits=32,
        frac_bits=20,
        ring_terms=100,
        clip=1.5,
        max_weight=40.0,
        loss_cap=10.0,
        tree_digest="f" * 64,
        weight=0.375,  # the contribution policy's factor travels with the assignment
    )


@pytest.mark.parametrize("secure", [None, "yes"])
def test_train_request_round_trips_with_weights_by_digest(secure: str | None) -> None:
    request = TrainRequest(
        job_id=JobId("job"),
        round=3,
        weights=WEIGHTS,
        deadline=123.5,
        config=MappingProxyType({"prox_mu": 0.01}),
        secure=assignment() if secure else None,
    )
    data = encode_train_request(request, DIGEST)
    assert peek_train_request(data) == (DIGEST, 5)
    wire = decode_train_request(data, resolve)
    assert wire.weights_sha256 == DIGEST
    got = wire.request
    assert (got.job_id, got.round, got.deadline, dict(got.config)) == (
        "job",
        3,
        123.5,
        {"prox_mu": 0.01},
    )
    assert got.secure == request.secure
    np.testing.assert_array_equal(got.weights, WEIGHTS)


def test_a_statistics_request_round_trips_and_fetches_no_weights() -> None:
    request = TrainRequest(
        job_id=JobId("job"),
        round=0,
        weights=np.zeros(0, np.float32),
        deadline=9.0,
        secure=assignment(),
        statistics=True,
    )
    data = encode_train_request(request, DIGEST)

    def nothing_to_fetch(digest: str, length: int) -> np.ndarray:
        raise AssertionError("a statistics request names no weights")

    got = decode_train_request(data, nothing_to_fetch).request
    assert got.statistics and got.weights.shape == (0,) and got.secure == request.secure
    # Written before the field existed: a training request.
    plain = encode_train_request(
        TrainRequest(job_id=JobId("job"), round=1, weights=WEIGHTS, deadline=9.0), DIGEST
    )
    older = msgpack.unpackb(plain)
    del older["statistics"]
    assert decode_train_request(msgpack.packb(older), resolve).request.statistics is False
    older["statistics"] = "yes"
    with pytest.raises(RemoteProtocolError, match="true or false"):
        decode_train_request(msgpack.packb(older), resolve)


def test_aggregate_request_round_trips() -> None:
    req = AggregateRequest(
        job_id=JobId("job"),
        round=1,
        group="L1-0",
        position=2,
        inputs=("L0-0", "L0-1"),
        senders=(NodeId("x"), NodeId("y")),
        leaf=False,
        parent=NodeId("coordinator"),
        parent_group="",
        report_at=99.0,
        ring_bits=64,
        frac_bits=40,
        ring_terms=1000,
        length=7,
        tree_digest="e" * 64,
        audit=MappingProxyType({"L0-0": (True, MappingProxyType({"n1": NodeId("n1")}))}),
        audit_fraction=0.25,
        send_evidence=False,
        evidence_on_request=True,
    )
    got = decode_aggregate_request(encode_aggregate_request(req))
    assert {k: v for k, v in vars_of(got).items() if k != "audit"} == {
        k: v for k, v in vars_of(req).items() if k != "audit"
    }
    assert {c: (leaf, dict(m)) for c, (leaf, m) in got.audit.items()} == {
        "L0-0": (True, {"n1": "n1"})
    }


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5, float("nan"), "all", True])
def test_aggregate_request_with_a_bad_audit_fraction_is_refused(fraction: object) -> None:
    req = AggregateRequest(
        job_id=JobId("job"),
        round=0,
        group="L0-0",
        position=0,
        inputs=("n1",),
        senders=(NodeId("n1"),),
        leaf=True,
        parent=NodeId("p"),
        parent_group="L1-0",
        report_at=1.0,
        ring_bits=32,
        frac_bits=16,
        ring_terms=10,
        length=3,
        tree_digest="e" * 64,
    )
    obj = msgpack.unpackb(encode_aggregate_request(req), raw=False)
    obj["audit_fraction"] = fraction
    with pytest.raises(RemoteProtocolError, match="audit_fraction"):
        decode_aggregate_request(msgpack.packb(obj, use_bin_type=True))


def vars_of(obj: object) -> dict[str, object]:
    return {name: getattr(obj, name) for name in obj.__slots__}  # type: ignore[attr-defined]


def test_update_and_decline_round_trip() -> None:
    update = UpdateSubmission(
        job_id=JobId("job"),
        round=2,
        delta=np.array([0.5, -1.25], np.float32),
        num_samples=7,
        loss=0.3,
    )
    got = decode_update(encode_update(update))
    np.testing.assert_array_equal(got.delta, update.delta)
    assert (got.num_samples, got.loss, got.round) == (7, 0.3, 2)
    decline = TrainingDeclined(job_id=JobId("job"), round=1, reason="consent revoked")
    assert decode_decline(encode_decline(decline)) == decline


def test_wrong_kind_version_and_types_are_refused() -> None:
    update = encode_update(
        UpdateSubmission(
            job_id=JobId("j"), round=0, delta=np.zeros(2, np.float32), num_samples=1, loss=0.0
        )
    )
    with pytest.raises(RemoteProtocolError, match="not a decline"):
        decode_decline(update)
    obj = msgpack.unpackb(update)
    obj["v"] = 99
    with pytest.raises(RemoteProtocolError, match="version"):
        decode_update(msgpack.packb(obj))
    obj["v"], obj["samples"] = 1, "many"
    with pytest.raises(RemoteProtocolError, match="samples"):
        decode_update(msgpack.packb(obj))
    obj["samples"], obj["delta"] = 1, b"\x00" * 3
    with pytest.raises(RemoteProtocolError, match="float32"):
        decode_update(msgpack.packb(obj))
    obj["delta"] = np.array([np.nan], np.float32).tobytes()
    with pytest.raises(RemoteProtocolError, match="NaN"):
        decode_update(msgpack.packb(obj))


def test_train_request_with_a_bad_digest_or_length_is_refused() -> None:
    request = TrainRequest(job_id=JobId("job"), round=0, weights=WEIGHTS, deadline=1.0)
    obj = msgpack.unpackb(encode_train_request(request, DIGEST))
    obj["weights"] = "../../etc/passwd"
    with pytest.raises(RemoteProtocolError, match="sha256"):
        decode_train_request(msgpack.packb(obj), resolve)
    obj["weights"], obj["length"] = DIGEST, 9
    with pytest.raises(RemoteProtocolError, match="length"):
        decode_train_request(msgpack.packb(obj), resolve)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_is_refused_cleanly(data: bytes) -> None:
    for decode in (decode_update, decode_decline, decode_aggregate_request):
        with pytest.raises(RemoteProtocolError):
            decode(data)
    with pytest.raises(RemoteProtocolError):
        decode_train_request(data, resolve)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["v", "k", "job", "round", "reason", "x"]),
        st.one_of(st.integers(-3, 30), st.text(max_size=5), st.none(), st.booleans(), st.floats()),
    )
)
def test_mutated_maps_are_refused_or_valid(obj: dict) -> None:
    try:
        msg = decode_decline(msgpack.packb(obj))
    except RemoteProtocolError:
        return
    assert isinstance(msg.reason, str) and msg.round >= 0

"""FedNova's words: the contributor's steps word, the wire, and the coordinator's checks."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import msgpack
import numpy as np
import pytest

from tessera.errors import RemoteProtocolError
from tessera.ids import JobId, NodeId
from tessera.protocol import Coordinator, RoundParams, make_strategy
from tessera.protocol.contributor import weighted_vector
from tessera.protocol.control import (
    decode_train_request,
    decode_update,
    encode_train_request,
    encode_update,
)
from tessera.protocol.effects import Rejected
from tessera.protocol.events import JobStarted, MessageReceived
from tessera.protocol.messages import TrainRequest, UpdateSubmission

from .test_control import DIGEST, WEIGHTS, assignment, resolve


def test_the_steps_word_follows_the_quality_words_and_divides_the_update() -> None:
    delta = np.array([3.0, -4.0], np.float32)  # norm 5, inside the clip
    plain = weighted_vector(delta, 50, 1.0, clip=10.0, max_weight=100.0, loss_cap=20.0)
    nova = weighted_vector(
        delta, 50, 1.0, clip=10.0, max_weight=100.0, loss_cap=20.0, steps=4, steps_bound=16.0
    )
    assert nova.shape == (plain.shape[0] + 1,)
    np.testing.assert_allclose(nova[:2], plain[:2] / 4, rtol=1e-15)
    assert nova[2] == 0.5 * 4 / 16  # w * tau / S, in [0, 1] like every tail word
    np.testing.assert_array_equal(nova[-3:], plain[-3:])
    capped = weighted_vector(
        delta, 50, 1.0, clip=10.0, max_weight=100.0, loss_cap=20.0, steps=99, steps_bound=16.0
    )
    assert capped[2] == 0.5  # tau past the public bound counts as the bound
    with pytest.raises(ValueError, match="local steps"):
        weighted_vector(delta, 50, 1.0, clip=10.0, max_weight=100.0, loss_cap=20.0, steps_bound=4)


def test_steps_travel_only_when_counted() -> None:
    update = UpdateSubmission(
        job_id=JobId("j"), round=1, delta=np.ones(3, np.float32), num_samples=4, loss=0.1
    )
    assert "steps" not in msgpack.unpackb(encode_update(update))  # today's bytes
    assert decode_update(encode_update(update)).steps == 0
    counted = replace(update, steps=12)
    assert decode_update(encode_update(counted)).steps == 12
    with pytest.raises(RemoteProtocolError, match="steps"):
        replace(update, steps=-1)
    with pytest.raises(RemoteProtocolError, match="local steps"):
        replace(assignment(), steps=0.5)


def test_the_steps_bound_travels_with_the_assignment() -> None:
    request = TrainRequest(
        job_id=JobId("job"),
        round=3,
        weights=WEIGHTS,
        deadline=1.0,
        config=MappingProxyType({}),
        secure=replace(assignment(), steps=16.0),
    )
    data = encode_train_request(request, DIGEST)
    got = decode_train_request(data, resolve).request.secure
    assert got is not None and got.steps == 16.0
    plain = replace(request, secure=assignment())
    assert "steps" not in msgpack.unpackb(encode_train_request(plain, DIGEST))["secure"]


def test_a_fednova_coordinator_refuses_an_update_without_steps() -> None:
    nodes = [NodeId("a"), NodeId("b")]
    params = RoundParams(job_id=JobId("j"), rounds=1, fednova=True)
    coordinator = Coordinator(params, nodes, np.zeros(2, np.float32), make_strategy("fedavg"))
    coordinator.handle(JobStarted(), 0.0)
    update = UpdateSubmission(
        job_id=JobId("j"), round=0, delta=np.ones(2, np.float32), num_samples=3, loss=0.0
    )
    (refused,) = coordinator.handle(MessageReceived(sender=nodes[0], message=update), 0.0)
    assert isinstance(refused, Rejected) and "FedNova" in refused.reason
    counted = replace(update, steps=2)
    assert coordinator.handle(MessageReceived(sender=nodes[0], message=counted), 0.0) == []

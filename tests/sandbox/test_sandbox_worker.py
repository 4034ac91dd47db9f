"""The worker's request handling, driven in memory: every bad input gets a reply, not a hang."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save

from tessera.sandbox import NodeCatalogue
from tessera.sandbox.frames import HEADER, FrameReader, encode
from tessera.sandbox.worker import handle, serve
from tessera.training import BatchedTrainer, ModelSpec, Recipe

from .sandbox_kit import Job, make_job

CATALOGUE = NodeCatalogue()
JOB = make_job(ModelSpec("mlp", (4,), 3, hidden=(8,)), Recipe("cross_entropy", batch_size=4), 21)


def _request(job: Job = JOB, **changes: Any) -> dict[str, Any]:
    request = {
        "op": "train",
        "spec": job.spec.to_json(),
        "recipe": job.recipe.to_json(),
        "x": save({"x": job.x}),
        "y": save({"y": job.y}),
        "weights": job.weights.astype("<f4").tobytes(),
        "seed": 5,
        "shuffle_id": 9,
        "prox_mu": None,
        "round": 0,
        "quality": False,
    }
    request.update(changes)
    return {k: v for k, v in request.items() if v is not ...}


def _spec_json(**changes: object) -> str:
    return json.dumps({**json.loads(JOB.spec.to_json()), **changes})


def _recipe_json(**changes: object) -> str:
    return json.dumps({**json.loads(JOB.recipe.to_json()), **changes})


def _serve(data: bytes, catalogue: NodeCatalogue = CATALOGUE) -> tuple[int, list[dict[str, Any]]]:
    out = io.BytesIO()
    status = serve(io.BytesIO(data), out, catalogue)
    reader = FrameReader()
    reader.feed(out.getvalue())
    replies = []
    while (reply := reader.next_message()) is not None:
        replies.append(reply)
    assert reader.pending == 0
    return status, replies


def test_train_equals_the_in_process_trainer_exactly() -> None:
    status, [reply] = _serve(encode(_request(prox_mu=0.5)))
    assert status == 0
    assert reply["ok"] is True
    ref = BatchedTrainer(
        JOB.spec, JOB.recipe, JOB.x, JOB.y, np.array([0, 21]), shuffle_ids=np.array([9])
    ).train(JOB.weights, [0], 5, prox_mu=0.5)
    assert np.array_equal(np.frombuffer(reply["delta"], "<f4"), ref.deltas[0])
    assert reply["num_samples"] == 21
    assert reply["loss"] == float(ref.loss[0])


def test_quality_statistics_equal_the_in_process_trainers() -> None:
    status, [reply] = _serve(encode(_request(quality=True)))
    assert status == 0
    ref = BatchedTrainer(
        JOB.spec, JOB.recipe, JOB.x, JOB.y, np.array([0, 21]), shuffle_ids=np.array([9])
    ).train(JOB.weights, [0], 5, quality=True)
    assert ref.loss_before is not None and ref.norm is not None and ref.labels is not None
    assert reply["quality"] == {
        "loss_before": float(ref.loss_before[0]),
        "norm": float(ref.norm[0]),
        "labels": [int(c) for c in ref.labels[0]],
    }
    assert sum(reply["quality"]["labels"]) == 21
    _, [plain] = _serve(encode(_request()))
    assert plain["quality"] is None  # measured only when asked


def test_round_sets_the_learning_rate_as_in_process() -> None:
    spec = ModelSpec("mlp", (4,), 3, hidden=(8,), activation="gelu", dropout=0.3)
    recipe = Recipe("cross_entropy", batch_size=4, lr_schedule="step", lr_step_every=2)
    job = make_job(spec, recipe, 21)
    trainer = BatchedTrainer(
        spec, recipe, job.x, job.y, np.array([0, 21]), shuffle_ids=np.array([9])
    )
    deltas = []
    for round_ in (0, 3):
        _, [reply] = _serve(encode(_request(job, round=round_)))
        assert reply["ok"] is True, reply
        ref = trainer.train(job.weights, [0], 5, round=round_)
        deltas.append(np.frombuffer(reply["delta"], "<f4"))
        assert np.array_equal(deltas[-1], ref.deltas[0])
    assert not np.array_equal(deltas[0], deltas[1])  # round 3 trains at half the rate


def test_ping_reports_limits() -> None:
    reply = handle({"op": "ping"}, CATALOGUE)
    assert reply["ok"] is True
    assert set(reply["limits"]) == {"as", "cpu", "nofile", "fsize", "core", "nproc"}
    assert reply["seccomp"] is False  # handle() alone loads no filter into the test process


@pytest.mark.parametrize(
    ("request_", "kind", "needle"),
    [
        ({}, "invalid", "unknown op None"),
        ({"op": 3}, "invalid", "unknown op 3"),
        ({"op": "exec", "code": "import os"}, "invalid", "unknown op 'exec'"),
        ({"op": "ping", "extra": 1}, "invalid", "unknown fields ['extra']"),
        (_request(spec=5), "invalid", "spec must be str"),
        (_request(spec="{not json"), "config", "not valid JSON"),
        (_request(recipe='{"loss": "mse", "lr": -1}'), "config", "must be positive"),
        (_request(x=b"garbage"), "invalid", "not a valid safetensors payload"),
        (_request(x="text"), "invalid", "x must be bytes"),
        (_request(x=save({"x": JOB.x.astype(np.float64)})), "invalid", "dtype float64"),
        (_request(x=save({"x": JOB.x, "z": JOB.x})), "invalid", "exactly one tensor"),
        (_request(y=save({"y": JOB.y.astype(np.int16)})), "invalid", "dtype int16"),
        (_request(y=save({"y": JOB.y[:5]})), "data", "y must be 21 integer class labels"),
        (_request(y=save({"y": JOB.y + 7})), "data", "class labels must lie in [0, 3)"),
        (_request(weights=b"\0" * 12), "invalid", "weights hold 12 bytes"),
        (_request(weights=[1.0, 2.0]), "invalid", "weights must be bytes"),
        (_request(seed=True), "invalid", "seed must be int"),
        (_request(seed="5"), "invalid", "seed must be int"),
        (_request(shuffle_id=-1), "invalid", "shuffle_id must lie in"),
        (_request(prox_mu="0.1"), "invalid", "prox_mu must be a number"),
        (_request(prox_mu=-1.0), "config", "must be >= 0"),
        (_request(prox_mu=...), "invalid", "missing fields ['prox_mu']"),
        (_request(round=...), "invalid", "missing fields ['round']"),
        (_request(round=-1), "invalid", "round must lie in"),
        (_request(round=1.5), "invalid", "round must be int"),
        (_request(spec=_spec_json(activation="swish")), "config", "must be one of"),
        (_request(spec=_spec_json(dropout=1.0)), "config", "must lie in [0, 1)"),
        (_request(spec=_spec_json(dropout="0.1")), "config", "must be a number"),
        (_request(recipe=_recipe_json(lr_schedule="warmup")), "config", "must be one of"),
        (_request(recipe=_recipe_json(lr_schedule="cosine")), "config", "needs the job's"),
        (_request(extra=b""), "invalid", "unknown fields ['extra']"),
        ({"op": "probe_network", "host": 5, "port": 80}, "invalid", "host must be str"),
        ({"op": "probe_network", "host": "a", "port": 0}, "invalid", "port must lie in"),
    ],
)
def test_bad_requests_get_a_typed_refusal(request_: dict[str, Any], kind: str, needle: str) -> None:
    status, [reply] = _serve(encode(request_))
    assert status == 0
    assert reply["ok"] is False
    assert reply["kind"] == kind
    assert needle in reply["error"]


def test_the_worker_checks_its_own_catalogue() -> None:
    _, [reply] = _serve(encode(_request()), NodeCatalogue(max_records=20))
    assert reply["kind"] == "refused"
    assert reply["error"] == "the job would train on 21 records; this node accepts at most 20"


@pytest.mark.parametrize(
    ("catalogue", "changes", "needle"),
    [
        (NodeCatalogue(activations=("relu",)), {"activation": "tanh"}, "model.activation 'tanh'"),
        (NodeCatalogue(max_dropout=0.2), {"dropout": 0.5}, "model.dropout is 0.5"),
    ],
)
def test_the_worker_refuses_model_options_outside_its_catalogue(
    catalogue: NodeCatalogue, changes: dict[str, object], needle: str
) -> None:
    _, [reply] = _serve(encode(_request(spec=_spec_json(**changes))), catalogue)
    assert reply["kind"] == "refused"
    assert needle in reply["error"]


def test_a_bad_body_is_answered_and_the_stream_goes_on() -> None:
    garbage = HEADER.pack(3) + b"\xc1\xc1\xc1"
    status, replies = _serve(garbage + encode({"op": "ping"}))
    assert status == 0
    assert [r["ok"] for r in replies] == [False, True]
    assert "malformed frame body" in replies[0]["error"]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (encode({"op": "ping"})[:-1], "truncated frame"),
        (HEADER.pack(1 << 31) + b"1234", "exceeds the limit"),
        (b"\x00\x00", "truncated frame header"),
    ],
    ids=["body", "oversized", "header"],
)
def test_framing_errors_answer_once_and_stop(data: bytes, needle: str) -> None:
    status, [pong, reply] = _serve(encode({"op": "ping"}) + data)
    assert status == 2
    assert pong["ok"] is True
    assert reply["ok"] is False
    assert needle in reply["error"]


def test_probes_are_refused_unless_the_worker_was_started_for_tests() -> None:
    reply = handle({"op": "probe", "code": "result = 1"}, CATALOGUE)
    assert reply["kind"] == "refused"
    assert "probes are for tests" in reply["error"]
    assert handle({"op": "probe", "code": "result = 6 * 7"}, CATALOGUE, probes=True) == {
        "ok": True,
        "result": "42",
    }

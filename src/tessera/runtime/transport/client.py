"""A typed client of the coordinator's API, for node agents and AI providers.

Connection failures (a coordinator restarting) are retried with backoff for
up to ``patience`` seconds, so nothing a node sends is lost while the
coordinator is down; a 4xx answer is final and raised as ``ServiceRefused``
with the server's reason. Every envelope POST is idempotent on the server
(a replayed nonce is refused with 409), so retrying one is safe.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import msgpack

from tessera.crypto.documents import SignedDocument
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.errors import TesseraError
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
    ) -> None:
        self.url = url.rstrip("/")
        self.patience = patience
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
                log.info("coordinator unavailable (%s); retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _get(self, path: str, **kw: Any) -> httpx.Response:
        return self._retry(lambda: check(self.http.get(path, **kw)))

    def _post(self, path: str, **kw: Any) -> httpx.Response:
        return self._retry(lambda: check(self.http.post(path, **kw)))

    # -- identities and artefacts ---------------------------------------------------
    def coordinator_keys(self) -> PublicKeys:
        raw = self._get("/v1/coordinator").json()["public_keys"]
        return PublicKeys.from_bytes(base64.b64decode(raw))

    def register(self, document: SignedDocument) -> dict[str, Any]:
        result: dict[str, Any] = self._post(
            "/v1/nodes", json={"document": document.to_json()}
        ).json()
        return result

    def put_artefact(self, data: bytes, media_type: str) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self._retry(
            lambda: check(
                self.http.put(
                    f"/v1/artefacts/{sha}", content=data, headers={"content-type": media_type}
                )
            )
        )
        return sha

    def get_artefact(self, sha256: str) -> bytes:
        data = self._get(f"/v1/artefacts/{sha256}").content
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ServiceRefused(502, f"artefact {sha256} does not match its hash")
        return data

    # -- jobs ----------------------------------------------------------------------------
    def submit_job(self, document: SignedDocument) -> dict[str, Any]:
        result: dict[str, Any] = self._post(
            "/v1/jobs", json={"document": document.to_json()}
        ).json()
        return result

    def status(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._get(f"/v1/jobs/{job_id}").json()
        return result

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
        result: dict[str, Any] = self._post(f"/v1/jobs/{job_id}/consents", json=body).json()
        return result

    def revoke(self, job_id: str, revocation: SignedDocument, receipt: SignedDocument) -> None:
        self._post(
            f"/v1/jobs/{job_id}/revocations",
            json={"revocation": revocation.to_json(), "receipt": receipt.to_json()},
        )

    # -- mail ----------------------------------------------------------------------------
    def post_mail(self, data: bytes) -> int | None:
        """Store one envelope; None when the server already has it (a retried POST)."""
        try:
            result: int = self._post(
                "/v1/mail", content=data, headers={"content-type": "application/octet-stream"}
            ).json()["id"]
        except ServiceRefused as exc:
            if exc.status == 409 and "replayed" in exc.detail:
                return None
            raise
        return result

    def pull_mail(
        self, node: str, keys: NodeKeys, after: int, wait: float
    ) -> list[tuple[int, bytes]]:
        # A retry (the coordinator restarting) waits only what is left: the caller's
        # timers are due at the original deadline, not one long poll later.
        deadline = time.monotonic() + wait

        def call() -> httpx.Response:
            left = max(0.0, deadline - time.monotonic())
            path = f"/v1/mail?after={after}&wait={left:.3f}"
            headers = sign_request(keys, node, "GET", path, time.time())
            return check(self.http.get(path, headers=headers, timeout=left + 30))

        raw = msgpack.unpackb(self._retry(call).content, raw=False)
        return [(int(i), bytes(d)) for i, d in raw]

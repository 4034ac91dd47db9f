"""The coordinator's pages (``coordinator.pages``), through its ASGI app (TestClient).

Every rule the pages keep: a login link works once and for 5 minutes (the
service's clock is injected), the session cookie's flags, the security
headers, 401 without a session and 403 for a party with no role in the job,
a job's free text escaped, a participant node not shown the AI provider's
fields, the report uploaded by the job's AI provider alone and served in a
sandbox, and a secure job's open round drawn as SVG.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tessera.ai_provider.client import build_job
from tessera.coordinator.access import NODE_STATUS
from tessera.coordinator.app import create_coordinator_app
from tessera.coordinator.pages import PAGE_CSP, REPORT_BYTES, REPORT_CSP
from tessera.coordinator.service import CoordinatorService
from tessera.coordinator.sessions import COOKIE, LINK_SECONDS, SESSION_SECONDS
from tessera.crypto.documents import SignedDocument, sign_document
from tessera.crypto.keys import NodeKeys
from tessera.jobs.beacon import roster_digest, sign_reveal
from tessera.runtime.transport.auth import sign_request
from tessera.runtime.transport.mail import WEIGHTS_MEDIA_TYPE
from tessera.storage import Store
from tessera.storage.blobs import BlobStore

from .coordinator_kit import (
    AI,
    COORDINATOR_KEYS,
    CREATED_AT,
    JOB,
    PROVIDER,
    Node,
    beacon_secret,
    consent_body,
    job_id,
    preprocessing,
    receipt,
    registration,
    tiny_config,
    tiny_job,
)

NAMES = ("node-a", "node-b", "node-c", "node-d")
STRANGER = NodeKeys.from_seed(b"pages-stranger")  # an AI provider of no job here
XSS = "<script>alert('pwned')</script>"


class Clock:
    """The service's clock, moved by the tests."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Site:
    """A coordinator's app over a fresh SQLite file, and a browser-like client per party."""

    service: CoordinatorService
    app: Any
    clock: Clock
    clients: list[TestClient] = field(default_factory=list)

    def browser(self, base_url: str = "http://testserver") -> TestClient:
        client = TestClient(self.app, base_url=base_url, follow_redirects=False)
        self.clients.append(client)
        return client

    def signed(
        self,
        method: str,
        path: str,
        keys: NodeKeys = AI,
        node: str | None = None,
        *,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Any:
        headers = sign_request(keys, method, path, at=self.clock(), node=node, body=body)
        if content_type is not None:
            headers["content-type"] = content_type
        return self.browser().request(method, path, content=body, headers=headers)

    def link(self, keys: NodeKeys = AI, node: str | None = None) -> str:
        answer = self.signed("POST", "/v1/sessions", keys, node)
        assert answer.status_code == 201, answer.text
        link: str = answer.json()["link"]
        assert link.startswith("/ui/login?token=")
        return link

    def login(self, keys: NodeKeys = AI, node: str | None = None) -> TestClient:
        """A browser signed in as the party."""
        browser = self.browser()
        answer = browser.get(self.link(keys, node))
        assert answer.status_code == 303, answer.text
        return browser

    def submit(self, doc: SignedDocument, weights: bytes) -> None:
        sha = hashlib.sha256(weights).hexdigest()
        put = self.signed(
            "PUT", f"/v1/artefacts/{sha}", body=weights, content_type=WEIGHTS_MEDIA_TYPE
        )
        assert put.status_code == 201, put.text
        answer = self.browser().post("/v1/jobs", json={"document": doc.to_json()})
        assert answer.status_code == 201, answer.text

    def register(self, node: Node) -> None:
        answer = self.browser().post(
            "/v1/nodes", json={"document": registration(node.keys, node.id).to_json()}
        )
        assert answer.status_code == 201, answer.text

    def consent(self, doc: SignedDocument, node: Node) -> None:
        node.receipt = receipt(node.keys, node.id, doc)
        answer = self.browser().post(
            f"/v1/jobs/{job_id(doc)}/consents", json=consent_body(node.receipt, node.keys, doc)
        )
        assert answer.status_code == 201, answer.text


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    clock = Clock()
    store = Store(f"sqlite:///{tmp_path / 'c.db'}", blobs=BlobStore(tmp_path / "c.mail"))
    service = CoordinatorService(store, COORDINATOR_KEYS, clock=clock)
    app = create_coordinator_app(service)
    made = Site(service, app, clock)
    with TestClient(app):  # the lifespan: the service resumes, and closes at the end
        try:
            yield made
        finally:
            for client in made.clients:
                client.close()
    store.close()


@pytest.fixture
def nodes(site: Site) -> dict[str, Node]:
    out = {name: Node.make(name) for name in NAMES}
    for node in out.values():
        site.register(node)
    return out


@pytest.fixture
def waiting(site: Site, nodes: dict[str, Node]) -> SignedDocument:
    """The tiny job, waiting for 3 consents; node-a consented."""
    doc, weights = tiny_job()
    site.submit(doc, weights)
    site.consent(doc, nodes["node-a"])
    return doc


def assert_page_headers(answer: Any) -> None:
    assert answer.headers["content-security-policy"] == PAGE_CSP
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["referrer-policy"] == "no-referrer"


# -- sessions ------------------------------------------------------------------------------


def test_a_login_link_opens_one_session_and_sets_a_strict_cookie(site: Site) -> None:
    browser = site.browser()
    link = site.link()
    answer = browser.get(link)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/"  # the token leaves the address bar
    cookie = answer.headers["set-cookie"]
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path", "max-age", "samesite"} <= flags
    assert "samesite=strict" in cookie.lower() and "path=/ui" in cookie.lower()
    assert f"max-age={int(SESSION_SECONDS)}" in cookie.lower()
    assert "secure" not in flags  # served over plain http here
    assert browser.get("/ui/").status_code == 200

    again = site.browser().get(link)  # the same link, once more: refused, saying why
    assert again.status_code == 403
    assert "used already" in again.text
    assert_page_headers(again)
    unknown = site.browser().get("/ui/login?token=not-a-token")
    assert unknown.status_code == 403 and "unknown or expired" in unknown.text
    assert site.browser().get("/ui/login").status_code == 403


def test_a_login_link_expires_after_five_minutes_and_a_session_after_its_day(
    site: Site,
) -> None:
    late = site.link()
    site.clock.now += LINK_SECONDS + 1
    answer = site.browser().get(late)
    assert answer.status_code == 403 and "expired" in answer.text

    browser = site.login()
    assert browser.get("/ui/").status_code == 200
    site.clock.now += SESSION_SECONDS + 1
    ended = browser.get("/ui/")
    assert ended.status_code == 401


def test_over_https_the_cookie_is_secure(site: Site) -> None:
    browser = site.browser("https://testserver")
    answer = browser.get(site.link())
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"].lower()
    assert "; secure" in cookie and "httponly" in cookie
    assert browser.get("/ui/").status_code == 200  # sent back over https


def test_a_session_is_asked_for_with_a_signed_request(site: Site, nodes: dict[str, Node]) -> None:
    assert site.browser().post("/v1/sessions").status_code == 401
    node = nodes["node-b"]
    browser = site.browser()
    assert browser.get(site.link(node.keys, node.id)).status_code == 303
    assert "node node-b" in browser.get("/ui/").text


def test_logout_ends_the_session(site: Site) -> None:
    browser = site.login()
    assert browser.get("/ui/logout").status_code == 200
    assert browser.get("/ui/").status_code == 401


# -- who sees what -------------------------------------------------------------------------


def test_without_a_session_every_page_is_a_401_saying_how_to_get_a_link(
    site: Site, waiting: SignedDocument
) -> None:
    browser = site.browser()
    for path in ("/ui/", f"/ui/jobs/{JOB}", f"/ui/jobs/{JOB}/tree", f"/ui/jobs/{JOB}/report"):
        answer = browser.get(path)
        assert answer.status_code == 401, path
        assert "tessera job page" in answer.text and "/v1/sessions" in answer.text
        assert_page_headers(answer)
    live = browser.get(f"/ui/jobs/{JOB}/live")
    assert live.status_code == 401 and live.json() == {"detail": "no session"}
    forged = site.browser()
    forged.cookies.set(COOKIE, "made-up", path="/ui")
    assert forged.get("/ui/").status_code == 401


def test_a_stranger_sees_no_job_and_is_refused_each_page(
    site: Site, waiting: SignedDocument
) -> None:
    browser = site.login(STRANGER)
    jobs = browser.get("/ui/")
    assert jobs.status_code == 200 and JOB not in jobs.text
    for path in (f"/ui/jobs/{JOB}", f"/ui/jobs/{JOB}/tree", f"/ui/jobs/{JOB}/report"):
        answer = browser.get(path)
        assert answer.status_code == 403, path
        assert "only the job&#x27;s" in answer.text
        assert_page_headers(answer)
    assert browser.get(f"/ui/jobs/{JOB}/live").status_code == 403
    assert browser.get("/ui/jobs/no-such-job").status_code == 404

    # A node that did not consent sees the waiting job offered, but not its pages.
    node_d = Node.make("node-d")
    offered = site.login(node_d.keys, node_d.id)
    assert JOB in offered.get("/ui/").text
    assert offered.get(f"/ui/jobs/{JOB}").status_code == 403


def test_the_ai_provider_sees_everything_and_a_participant_only_its_share(
    site: Site, waiting: SignedDocument, nodes: dict[str, Node]
) -> None:
    ai = site.login()
    listed = ai.get("/ui/")
    assert listed.status_code == 200 and f'href="/ui/jobs/{JOB}"' in listed.text
    assert "1 / 3" in listed.text  # consents: valid / needed
    page = ai.get(f"/ui/jobs/{JOB}")
    assert page.status_code == 200
    assert_page_headers(page)
    assert '<dd id="state">waiting</dd>' in page.text
    assert '<dd id="consents">1 / 3</dd>' in page.text
    assert 'id="rounds"' in page.text and 'id="refused"' in page.text
    assert '<script src="/ui/static/live.js">' in page.text
    assert "<script>" not in page.text  # no inline script: the CSP would refuse it

    node = nodes["node-a"]
    mine = site.login(node.keys, node.id)
    view = mine.get(f"/ui/jobs/{JOB}")
    assert view.status_code == 200
    assert '<dd id="consents">-</dd>' in view.text
    assert 'id="refused"' not in view.text and "participant-list" not in view.text
    assert "1 / 3" not in mine.get("/ui/").text

    for name in ("node-b", "node-c"):  # the job starts: node-d stays out
        site.consent(waiting, nodes[name])
    full = ai.get(f"/ui/jobs/{JOB}/live").json()
    shown = mine.get(f"/ui/jobs/{JOB}/live").json()
    assert full["state"] == shown["state"] == "running"
    assert full["participant_list"] == ["node-a", "node-b", "node-c"]
    assert {"refused", "participant_list"} <= set(full)
    assert not {"refused", "participant_list", "min_consents", "valid_consents"} & set(shown)
    assert shown["consents"] == "-" and shown["participants"] == "3"
    ours = {"role", "purpose", "round", "consents", "participants", "rounds"}
    assert set(shown) - ours <= set(NODE_STATUS)


def test_a_jobs_free_text_is_escaped(site: Site, nodes: dict[str, Node]) -> None:
    doc, weights = build_job(
        tiny_config("xss"),
        AI,
        provider=PROVIDER,
        dataset="records",
        user_field="school",
        preprocessing=preprocessing(),
        min_consents=3,
        purpose=XSS,
        created_at=CREATED_AT,
    )
    site.submit(doc, weights)
    jid = job_id(doc)
    ai = site.login()
    node = nodes["node-a"]
    offered = site.login(node.keys, node.id)
    site.consent(doc, node)
    for browser in (ai, offered):
        for path in ("/ui/", f"/ui/jobs/{jid}"):
            text = browser.get(path).text
            assert XSS not in text, path
            assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in text, path
    assert ai.get(f"/ui/jobs/{jid}/live").json()["purpose"] == XSS  # JSON: live.js sets text


def test_the_live_script_is_served_from_here(site: Site) -> None:
    answer = site.browser().get("/ui/static/live.js")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/javascript")
    assert "textContent" in answer.text and "innerHTML" not in answer.text


# -- the report ----------------------------------------------------------------------------

REPORT = b"<!doctype html><html><body><h1>report</h1><script>alert(1)</script></body></html>"


def test_the_report_is_uploaded_by_the_jobs_ai_provider_alone_and_served_sandboxed(
    site: Site, waiting: SignedDocument, nodes: dict[str, Node]
) -> None:
    path = f"/v1/jobs/{JOB}/report"
    html = "text/html; charset=utf-8"
    node = nodes["node-a"]
    unsigned = site.browser().put(path, content=REPORT, headers={"content-type": html})
    assert unsigned.status_code == 401
    by_node = site.signed("PUT", path, node.keys, node.id, body=REPORT, content_type=html)
    assert by_node.status_code == 403
    by_stranger = site.signed("PUT", path, STRANGER, body=REPORT, content_type=html)
    assert by_stranger.status_code == 403
    assert site.signed("PUT", path, body=REPORT, content_type="text/plain").status_code == 400
    big = b"x" * (REPORT_BYTES + 1)
    assert site.signed("PUT", path, body=big, content_type=html).status_code == 413
    assert site.signed("PUT", path, body=b"\xff\xfe", content_type=html).status_code == 400
    unknown = site.signed("PUT", "/v1/jobs/nope/report", body=REPORT, content_type=html)
    assert unknown.status_code == 404

    ai = site.login()
    assert ai.get(f"/ui/jobs/{JOB}/report").status_code == 404  # none yet
    answer = site.signed("PUT", path, body=REPORT, content_type=html)
    assert answer.status_code == 201, answer.text
    assert answer.json()["sha256"] == hashlib.sha256(REPORT).hexdigest()
    newer = REPORT.replace(b"report", b"report, round 2")
    assert site.signed("PUT", path, body=newer, content_type=html).status_code == 201

    for browser in (ai, site.login(node.keys, node.id)):
        served = browser.get(f"/ui/jobs/{JOB}/report")
        assert served.status_code == 200
        assert served.content == newer  # the latest
        assert served.headers["content-security-policy"] == REPORT_CSP
        assert served.headers["content-security-policy"].startswith("sandbox;")
        assert served.headers["x-frame-options"] == "DENY"
        assert served.headers["content-type"].startswith("text/html")
    assert site.login(STRANGER).get(f"/ui/jobs/{JOB}/report").status_code == 403
    assert site.service.store.get_job(JOB).report == hashlib.sha256(newer).hexdigest()


# -- the tree ------------------------------------------------------------------------------


def _secure_job() -> tuple[SignedDocument, bytes]:
    """The tiny job made secure: 4 participants, groups of 2, 2 aggregators a group."""
    doc, weights = tiny_job()
    b = doc.body
    secure = {
        **b["config"]["secure"],
        "enabled": True,
        "max_weight": 10.0,
        "k": 2,
        "group_size": 2,
        "fan_in": 3,
    }
    body = {
        **b,
        "config": {
            **b["config"],
            "recipe": {**b["config"]["recipe"], "clip_norm": 1.0},
            "secure": secure,
        },
        "recipe": {**b["recipe"], "clip_norm": 1.0},
        "min_consents": len(NAMES),
    }
    return sign_document(AI, "job", body), weights


def test_a_secure_jobs_open_round_is_drawn_as_svg(site: Site, nodes: dict[str, Node]) -> None:
    plain = site.login()
    site.submit(*tiny_job())
    site.consent(tiny_job()[0], nodes["node-a"])
    answer = plain.get(f"/ui/jobs/{JOB}/tree")
    assert answer.status_code == 200 and "plaintext job" in answer.text

    doc, weights = _secure_job()
    jid = job_id(doc)
    site.submit(doc, weights)
    for node in nodes.values():
        site.consent(doc, node)
    assert "no round is open" in plain.get(f"/ui/jobs/{jid}/tree").text  # reveals pending
    for node in nodes.values():
        reveal = sign_reveal(
            node.keys,
            job_id=jid,
            job_digest=doc.digest,
            node=node.id,
            roster=roster_digest(NAMES),
            secret=beacon_secret(node.id),
        )
        answer = site.browser().post(f"/v1/jobs/{jid}/reveals", json={"reveal": reveal.to_json()})
        assert answer.status_code == 200, answer.text
    end = time.monotonic() + 10
    while (driver := site.service.drivers.get(jid)) is None or driver.open_tree() is None:
        assert time.monotonic() < end, "no round opened"
        time.sleep(0.02)
    tree = driver.open_tree()
    assert tree is not None

    node = nodes["node-c"]
    for browser in (plain, site.login(node.keys, node.id)):
        page = browser.get(f"/ui/jobs/{jid}/tree")
        assert page.status_code == 200
        assert_page_headers(page)
        text = page.text
        assert '<svg id="tree"' in text
        assert text.count('<g class="group"') == len(tree.groups)
        for group in tree.groups:
            assert f'id="group-{group.id}"' in text
            if group.is_leaf:
                assert f"{len(group.members)} members" in text
            for seat in group.aggregators:
                assert seat in text
        parents = sum(1 for g in tree.groups if g.parent is not None)
        assert text.count("<line ") == parents
    assert site.login(STRANGER).get(f"/ui/jobs/{jid}/tree").status_code == 403
    json.dumps(tree.to_json())  # the tree is the one the nodes re-derive (public to them)

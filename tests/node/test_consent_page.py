"""The consent page (``node.consent_page``) through Starlette's TestClient, against a
real coordinator (``coordinator_kit.Harness``): only the holder of the login link gets
in, the session cookie is HttpOnly and SameSite=Strict, a POST without the session's
CSRF token is refused, every string from a job is escaped, and the page binds
loopback only unless told otherwise. Granting and revoking for real, with a data
provider, is the browser test's (tests/browser/test_consent_page.py)."""

from __future__ import annotations

import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from tests.coordinator.coordinator_kit import AI, PROVIDER, Harness, preprocessing, tiny_config

from tessera.ai_provider.client import build_job
from tessera.data.prepare import Preprocessor
from tessera.errors import ConfigError
from tessera.jobs.document import JobSpec
from tessera.node.agent import AgentConfig, NodeAgent
from tessera.node.consent_page import (
    CSP,
    KEY_FILE,
    SESSION_COOKIE,
    create_consent_app,
    page_secret,
    parse_bind,
)

NASTY = '<script>alert("owned")</script>'


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path / "coordinator.db")
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture
def agent(harness: Harness, tmp_path: Path) -> Iterator[NodeAgent]:
    node = NodeAgent(
        AgentConfig(
            node_id="node-1",
            coordinator=harness.url,
            insecure_loopback=True,
            keys_path=tmp_path / "node.key",
            state_dir=tmp_path / "state",
            subject="user-1",
            provider="http://127.0.0.1:9",
            provider_key=PROVIDER,
            consent_page="127.0.0.1:0",
        )
    )
    node.register()
    try:
        yield node
    finally:
        node.client.close()


def nasty_job(harness: Harness) -> JobSpec:
    """A job whose purpose, dataset and a field name are HTML (a job's strings are its
    author's to choose)."""
    frame = pd.DataFrame(
        {"score": [0, 2, 4, 2], NASTY: [5.0, 6.0, 7.0, 6.5], "gender": ["F", "M", "F", "M"]}
    )
    pre = Preprocessor.fit(
        frame, target="score", features=[NASTY, "gender"], categorical=["gender"],
        task="classification",
    )  # fmt: skip
    cfg = tiny_config("nasty")
    cfg = cfg.model_copy(
        update={"data": cfg.data.model_copy(update={"features": [NASTY, "gender"]})}
    )
    doc, weights = build_job(
        cfg,
        AI,
        provider=PROVIDER,
        dataset="<i>records</i>",
        user_field="school",
        preprocessing=pre.to_json(),
        min_consents=3,
        purpose=f"predict grades {NASTY}",
    )
    harness.submit(doc, weights)
    return JobSpec.from_document(doc)


def logged_in(agent: NodeAgent) -> tuple[TestClient, str]:
    key = page_secret(agent.cfg.state_dir)
    client = TestClient(create_consent_app(agent, key))
    return client, key


def test_the_login_key_is_kept_private_and_the_same_across_restarts(agent: NodeAgent) -> None:
    key = page_secret(agent.cfg.state_dir)
    assert len(key) >= 43  # token_urlsafe(32)
    path = agent.cfg.state_dir / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert page_secret(agent.cfg.state_dir) == key


def test_login_sets_a_strict_httponly_cookie_and_drops_the_key(agent: NodeAgent) -> None:
    client, key = logged_in(agent)
    answer = client.get(f"/login?key={key}", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert key not in cookie  # the session is not the key
    page = client.get("/")
    assert page.status_code == 200 and "Jobs offered to you" in page.text
    assert page.headers["content-security-policy"] == CSP
    assert "default-src 'self'" in CSP and "script" not in page.text.lower()
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "no-referrer"


def test_a_stranger_without_the_key_gets_401_saying_where_the_link_is(
    agent: NodeAgent, harness: Harness
) -> None:
    spec = nasty_job(harness)
    client, _ = logged_in(agent)
    for path in ("/", f"/jobs/{spec.job_id}", "/login?key=wrong", "/login"):
        answer = client.get(path)
        assert answer.status_code == 401, path
        assert "consent-page.url" in answer.text
    posted = client.post(f"/jobs/{spec.job_id}/grant", data={"csrf": "x"})
    assert posted.status_code == 401
    assert agent.consented_jobs() == []


def test_a_post_without_the_sessions_csrf_token_is_refused(
    agent: NodeAgent, harness: Harness
) -> None:
    spec = nasty_job(harness)
    client, key = logged_in(agent)
    client.get(f"/login?key={key}")
    page = client.get(f"/jobs/{spec.job_id}")
    assert page.status_code == 200
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token is not None
    for form in ({}, {"csrf": "forged"}, {"csrf": token.group(1) + "x"}):
        answer = client.post(f"/jobs/{spec.job_id}/grant", data=form, follow_redirects=False)
        assert answer.status_code == 403, form
    assert agent.consented_jobs() == []
    # Another browser's session has another token.
    other, _ = logged_in(agent)
    other.get(f"/login?key={key}")
    answer = other.post(f"/jobs/{spec.job_id}/grant", data={"csrf": token.group(1)})
    assert answer.status_code == 403


def test_every_string_from_a_job_is_escaped(agent: NodeAgent, harness: Harness) -> None:
    spec = nasty_job(harness)
    client, key = logged_in(agent)
    client.get(f"/login?key={key}")
    index = client.get("/")
    assert spec.job_id in index.text  # offered: it names this node's data provider
    page = client.get(f"/jobs/{spec.job_id}")
    assert page.status_code == 200
    assert NASTY not in page.text and "<i>records</i>" not in page.text
    assert "&lt;script&gt;alert(&quot;owned&quot;)&lt;/script&gt;" in page.text
    assert "&lt;i&gt;records&lt;/i&gt;" in page.text
    assert spec.digest in page.text  # the document's digest, in full
    assert 'id="grant"' in page.text


def test_a_job_for_another_provider_is_not_offered(agent: NodeAgent, harness: Harness) -> None:
    doc, weights = build_job(
        tiny_config("elsewhere"),
        AI,
        provider="f" * 64,
        dataset="records",
        user_field="school",
        preprocessing=preprocessing(),
        min_consents=3,
        purpose="another provider's records",
    )
    harness.submit(doc, weights)
    spec = JobSpec.from_document(doc)
    client, key = logged_in(agent)
    client.get(f"/login?key={key}")
    assert spec.job_id not in client.get("/").text
    page = client.get(f"/jobs/{spec.job_id}")
    assert "another data provider" in page.text and 'id="grant"' not in page.text


@pytest.mark.parametrize("bind", ["0.0.0.0:8080", "192.168.1.5:0", "example.org:80", "[::]:0"])
def test_a_non_loopback_bind_is_refused_unless_allowed(bind: str) -> None:
    with pytest.raises(ConfigError, match="not a loopback address"):
        parse_bind(bind)
    assert parse_bind(bind, allow_remote=True)[1] >= 0


@pytest.mark.parametrize("bind", ["127.0.0.1:0", "localhost:8080", "[::1]:9000"])
def test_loopback_binds_are_taken(bind: str) -> None:
    host, port = parse_bind(bind)
    assert host in ("127.0.0.1", "localhost", "::1") and port >= 0


def test_a_malformed_bind_is_refused() -> None:
    for bind in ("127.0.0.1", ":80", "127.0.0.1:http", "127.0.0.1:70000"):
        with pytest.raises(ConfigError, match="host:port"):
            parse_bind(bind)


def test_a_started_page_prints_its_link_once_and_keeps_it_private(
    agent: NodeAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    from tessera.node.consent_page import URL_FILE, start_consent_page

    page = start_consent_page(agent)
    try:
        said = capsys.readouterr().out
        assert said.count(page.login_url) == 1 and page.login_url.startswith("http://127.0.0.1:")
        kept = agent.cfg.state_dir / URL_FILE
        assert kept.read_text().strip() == page.login_url
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    finally:
        page.stop()


def test_a_restarted_agent_keeps_its_users_consents_and_revocations(
    harness: Harness, tmp_path: Path
) -> None:
    """A saved receipt without a saved revocation is a consent; with one, it is not."""
    state = tmp_path / "state"
    for folder, jobs in (
        ("receipts", ("kept-1", "withdrawn-2")),
        ("revocations", ("withdrawn-2",)),
    ):
        (state / folder).mkdir(parents=True)
        for job in jobs:
            (state / folder / f"{job}.json").write_text("{}")
    agent = NodeAgent(
        AgentConfig(
            node_id="node-1",
            coordinator=harness.url,
            insecure_loopback=True,
            keys_path=tmp_path / "node.key",
            state_dir=state,
            consent_to=["told-3"],
        )
    )
    try:
        assert agent.consented_jobs() == ["kept-1", "told-3"]
        assert agent.revoked_jobs() == ["withdrawn-2"]
        assert agent._revoked_job("withdrawn-2") and not agent._revoked_job("kept-1")
        assert agent._revoked_job("../../etc/passwd")  # not a job id: never a path
    finally:
        agent.client.close()

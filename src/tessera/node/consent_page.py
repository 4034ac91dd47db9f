"""The consent page: the user's own window on the jobs their node is offered.

Served by the node agent itself (``AgentConfig.consent_page``), on the
user's side, from a background thread: FastAPI under uvicorn, on loopback
unless the operator allows another address. Only the user may use it: a
random secret, kept 0600 in the node's state folder, makes the login link
the agent prints once (and keeps in ``STATE/consent-page.url``); logging in
sets an HttpOnly, SameSite=Strict session cookie and redirects to ``/``, so
the key leaves the address bar. Every POST carries that cookie and the
session's CSRF token in the form. Without a session a page answers 401,
saying where the link is.

``/`` lists the jobs the coordinator offers this node (waiting jobs naming
the user's data provider) and the jobs it consented to, each with its state
at the coordinator; ``/jobs/{id}`` shows one job's signed document in plain
words (``node.consent_words``, from the document only once its signature is
verified, as the agent verifies it) with its digest in full, and a button to
grant or revoke consent: ``NodeAgent.consent`` and ``NodeAgent.revoke``,
through this page's own coordinator client (the agent's loop holds its own in
a long poll). Every string from a job is escaped; the pages carry no script,
a CSP, ``X-Frame-Options: DENY`` and no referrer.
"""

from __future__ import annotations

import hmac
import html
import ipaddress
import logging
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from tessera.errors import ConfigError, TesseraError
from tessera.jobs.document import JobSpec
from tessera.node.consent_words import JobWords, job_words
from tessera.runtime.transport.client import CoordinatorClient, ServiceRefused
from tessera.runtime.transport.serve import RunningServer, serve_in_thread
from tessera.storage.private import replace_private

if TYPE_CHECKING:
    from tessera.node.agent import NodeAgent

log = logging.getLogger("tessera.node.consent_page")

SESSION_COOKIE = "tessera_consent_session"
KEY_FILE = "consent-page.key"
URL_FILE = "consent-page.url"
CSP = "default-src 'self'; style-src 'self' 'unsafe-inline'; form-action 'self'"
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SESSION_SECONDS = 12 * 3600
_MAX_FORM = 4096


def parse_bind(value: str, *, allow_remote: bool = False) -> tuple[str, int]:
    """``host:port`` to bind; a non-loopback host is refused unless ``allow_remote``."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError("consent_page", f"expected host:port, got {value!r}")
    host = host.strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not allow_remote:
        raise ConfigError(
            "consent_page",
            f"{host} is not a loopback address: the consent page is its user's alone "
            "(allow another address explicitly, behind TLS, if you must)",
        )
    return host, int(port_text)


def page_secret(state_dir: Path) -> str:
    """The login key: made once (``secrets.token_urlsafe(32)``), kept 0600."""
    path = state_dir / KEY_FILE
    if path.exists():
        key = path.read_text().strip()
        if len(key) >= 32:
            return key
    key = secrets.token_urlsafe(32)
    replace_private(path, key)
    return key


@dataclass
class ConsentPage:
    server: RunningServer
    client: CoordinatorClient  # the page's own, closed with it
    url: str  # the page's address
    login_url: str  # the address with the login key: the user's alone

    def stop(self) -> None:
        self.server.stop()
        self.client.close()


def start_consent_page(agent: NodeAgent) -> ConsentPage:
    """Serve ``agent``'s consent page from a background thread; print its link once."""
    assert agent.cfg.consent_page is not None
    host, port = parse_bind(agent.cfg.consent_page, allow_remote=agent.cfg.consent_page_remote)
    key = page_secret(agent.cfg.state_dir)
    app = create_consent_app(agent, key)
    server = serve_in_thread(app, host=host, port=port)
    login = f"{server.url}/login?key={key}"
    replace_private(agent.cfg.state_dir / URL_FILE, login + "\n")  # whole: a parent waits for it
    # The one place the link is said: the user opens it in their browser.
    print(f"consent page of {agent.node}: {login}", flush=True)
    log.info("consent page of %s serving at %s", agent.node, server.url)
    return ConsentPage(server=server, client=app.state.client, url=server.url, login_url=login)


class _Sessions:
    """Logged-in browsers: session token -> (CSRF token, expiry)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[str, tuple[str, float]] = {}

    def open(self) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._live[token] = (secrets.token_urlsafe(32), time.monotonic() + _SESSION_SECONDS)
        return token

    def csrf(self, token: str | None) -> str | None:
        """The session's CSRF token, or None for no (or an expired) session."""
        if not token:
            return None
        with self._lock:
            found = self._live.get(token)
            if found is None or found[1] < time.monotonic():
                self._live.pop(token, None)
                return None
            return found[0]


class _Jobs:
    """What the page shows, from the coordinator through the page's own client."""

    def __init__(self, agent: NodeAgent) -> None:
        self.agent = agent
        self.lock = threading.Lock()  # one request to the coordinator at a time
        self.client = CoordinatorClient(
            agent.cfg.coordinator,
            verify=agent.cfg.verify,
            keys=agent.keys,
            node=agent.node,
            patience=10.0,
            timeout=30.0,
        )
        self._specs: dict[str, JobSpec] = {}

    def spec(self, job_id: str) -> JobSpec:
        """The job's document, verified (its signature, its id), or TesseraError."""
        found = self._specs.get(job_id)
        if found is None:
            found = JobSpec.from_document(self.client.job_document(job_id))
            if found.job_id != job_id:
                raise TesseraError(f"the coordinator's document for {job_id} names another job")
            self._specs[job_id] = found
        return found

    def words(self, job_id: str) -> JobWords:
        cfg = self.agent.cfg
        spec = self.spec(job_id)
        return job_words(spec, consent_days=cfg.consent_days, limits=cfg.sandbox_limits)

    def ours(self, spec: JobSpec) -> bool:
        return spec.data.provider == self.agent.cfg.provider_key

    def listing(self) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
        """(offered: id, state) and (consented or revoked: id, state, this node's word)."""
        consented, revoked = self.agent.consented_jobs(), self.agent.revoked_jobs()
        states: dict[str, str] = {}
        for entry in self.client.jobs():
            states[str(entry["job_id"])] = str(entry["state"])
        offered = []
        for job_id, state in sorted(states.items()):
            if state != "waiting" or job_id in consented or job_id in revoked:
                continue
            try:
                if self.ours(self.spec(job_id)):
                    offered.append((job_id, state))
            except TesseraError as exc:  # a document that does not verify is never shown
                log.warning("job %s offered with a bad document: %s", job_id, exc)
        mine = [(j, states.get(j, "unknown"), "consented") for j in consented]
        mine += [(j, states.get(j, "unknown"), "revoked") for j in revoked if j not in consented]
        return offered, mine

    def state(self, job_id: str) -> str:
        try:
            return str(self.client.status(job_id)["state"])
        except ServiceRefused:  # a node sees the status of jobs it consented to only
            for entry in self.client.jobs():
                if entry["job_id"] == job_id:
                    return str(entry["state"])
            return "unknown"


def create_consent_app(agent: NodeAgent, key: str) -> FastAPI:  # noqa: PLR0915 - one per route
    """The page's ASGI app for ``agent``; ``key`` is the login secret."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    sessions = _Sessions()
    jobs = _Jobs(agent)
    app.state.client = jobs.client
    where = agent.cfg.state_dir / URL_FILE

    @app.middleware("http")
    async def headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    def session(request: Request) -> str | None:
        return sessions.csrf(request.cookies.get(SESSION_COOKIE))

    def refused() -> HTMLResponse:
        body = (
            "<p>This page is its user's alone. Open the link this node printed when it "
            f"started; it is also kept in <code>{_e(str(where))}</code> on the node's machine.</p>"
        )
        return HTMLResponse(_layout("Not logged in", body), status_code=401)

    @app.get("/login")
    def login(request: Request) -> Response:
        given = request.query_params.get("key", "")
        if not given or not hmac.compare_digest(given.encode(), key.encode()):
            return refused()
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            sessions.open(),
            max_age=_SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            path="/",
        )
        return response

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> Response:
        if session(request) is None:
            return refused()
        try:
            with jobs.lock:
                offered, mine = jobs.listing()
        except (TesseraError, httpx.HTTPError) as exc:
            return _error(f"the coordinator did not answer: {exc}")
        rows = "".join(
            f'<tr><td><a href="/jobs/{_e(j)}">{_e(j)}</a></td><td>{_e(s)}</td>'
            f'<td><a href="/jobs/{_e(j)}">read and decide</a></td></tr>'
            for j, s in offered
        )
        offered_html = (
            f"<table><tr><th>job</th><th>state</th><th></th></tr>{rows}</table>"
            if rows
            else "<p>No job is waiting for your consent.</p>"
        )
        rows = "".join(
            f'<tr><td><a href="/jobs/{_e(j)}">{_e(j)}</a></td><td>{_e(s)}</td>'
            f"<td>{_e(word)}</td></tr>"
            for j, s, word in mine
        )
        mine_html = (
            f"<table><tr><th>job</th><th>state</th><th>your consent</th></tr>{rows}</table>"
            if rows
            else "<p>You have consented to no job.</p>"
        )
        body = (
            f"<p>Node <b>{_e(agent.node)}</b>.</p>"
            f'<h2>Jobs offered to you</h2><div id="offered">{offered_html}</div>'
            f'<h2>Your consents</h2><div id="consents">{mine_html}</div>'
        )
        return HTMLResponse(_layout("Your consent", body))

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(job_id: str, request: Request) -> Response:
        csrf = session(request)
        if csrf is None:
            return refused()
        if not _JOB_ID.match(job_id):
            return _error("not a job id", 404)
        try:
            with jobs.lock:
                words = jobs.words(job_id)
                ours = jobs.ours(jobs.spec(job_id))
                state = jobs.state(job_id)
        except (TesseraError, httpx.HTTPError) as exc:
            return _error(f"job {job_id}: {exc}", 404)
        consented = job_id in agent.consented_jobs()
        done = request.query_params.get("done", "")
        said = {"granted": "You granted your consent.", "revoked": "You revoked your consent."}
        notice = f'<p class="notice" id="notice">{_e(said[done])}</p>' if done in said else ""
        sections = "".join(
            f"<section><h2>{_e(sec.title)}</h2><ul>"
            + "".join(f"<li>{_e(s)}</li>" for s in sec.sentences)
            + "</ul></section>"
            for sec in words.sections
        )
        if not ours:
            action = "<p>This job asks for data at another data provider than yours.</p>"
        elif consented:
            action = _form(job_id, "revoke", "Revoke consent", csrf)
        elif state == "waiting":
            action = _form(job_id, "grant", "Grant consent", csrf)
        else:
            action = "<p>This job has started: its participants are fixed.</p>"
        yours = (
            "granted"
            if consented
            else ("revoked" if job_id in agent.revoked_jobs() else "not given")
        )
        body = (
            f"{notice}<p>Job <b id='job-id'>{_e(words.job_id)}</b>, "
            f"state at the coordinator: <b id='state'>{_e(state)}</b>; "
            f"your consent: <b id='yours'>{_e(yours)}</b>.</p>"
            f"<p>{_e(words.purpose)}</p>{sections}"
            "<h2>The signed document</h2><p>Its digest (what your consent receipt names): "
            f'<code id="digest">{_e(words.digest)}</code></p>{action}'
            '<p><a href="/">All jobs</a></p>'
        )
        return HTMLResponse(_layout(f"Job {words.job_id}", body))

    async def decide(request: Request, job_id: str, grant: bool) -> Response:
        csrf = session(request)
        if csrf is None:
            return refused()
        raw = await request.body()
        if len(raw) > _MAX_FORM:
            return _error("form too large", 413)
        form = parse_qs(raw.decode("latin-1"))
        given = (form.get("csrf") or [""])[0]
        if not hmac.compare_digest(given.encode(), csrf.encode()):
            return _error("this form is stale or not from this page: reload and try again", 403)
        if not _JOB_ID.match(job_id):
            return _error("not a job id", 404)

        def act() -> None:
            with jobs.lock:
                if grant:
                    if not jobs.ours(jobs.spec(job_id)):
                        raise TesseraError("the job asks for data at another provider")
                    agent.consent(job_id, jobs.client)
                else:
                    agent.revoke(job_id, jobs.client)

        try:
            await run_in_threadpool(act)
        except (TesseraError, httpx.HTTPError, ServiceRefused) as exc:
            return _error(f"could not {'grant' if grant else 'revoke'}: {exc}", 409)
        word = "granted" if grant else "revoked"
        log.info("consent to %s %s on the consent page", job_id, word)
        return RedirectResponse(f"/jobs/{job_id}?done={word}", status_code=303)

    @app.post("/jobs/{job_id}/grant")
    async def grant(job_id: str, request: Request) -> Response:
        return await decide(request, job_id, grant=True)

    @app.post("/jobs/{job_id}/revoke")
    async def revoke(job_id: str, request: Request) -> Response:
        return await decide(request, job_id, grant=False)

    return app


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _form(job_id: str, action: str, label: str, csrf: str) -> str:
    return (
        f'<form method="post" action="/jobs/{_e(job_id)}/{action}">'
        f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
        f'<button type="submit" id="{action}">{_e(label)}</button></form>'
    )


def _error(message: str, status: int = 502) -> HTMLResponse:
    body = f'<p class="error" id="error">{_e(message)}</p><p><a href="/">All jobs</a></p>'
    return HTMLResponse(_layout("Something went wrong", body), status_code=status)


_STYLE = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;line-height:1.4}"
    "code{word-break:break-all}table{border-collapse:collapse}"
    "td,th{padding:.3em .8em;border-bottom:1px solid #ccc;text-align:left}"
    ".notice{background:#e8f5e9;padding:.5em}.error{background:#fdecea;padding:.5em}"
    "button{font-size:1.1em;padding:.4em 1em}"
)


def _layout(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{_e(title)}</h1>{body}</body></html>"
    )


__all__ = [
    "ConsentPage",
    "create_consent_app",
    "page_secret",
    "parse_bind",
    "start_consent_page",
]

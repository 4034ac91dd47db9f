"""The coordinator's web pages: jobs, their progress live, the round's tree, the report.

For people, in a browser, under ``/ui/``. A party opens a session through a
one-time login link it asked for with a signed request (``POST
/v1/sessions``; ``coordinator.sessions``), and then sees what it may see
through the API, no more: the same rules (``coordinator.access``) decide.

================================  =================================================
page                              who, and what
================================  =================================================
``/ui/``                          the jobs the party has a role in (a node also the
                                  jobs waiting for consent): state, consents (to the
                                  AI provider), current round
``/ui/jobs/{id}``                 the job's progress, live (``/ui/jobs/{id}/live``,
                                  polled every 2 s by ``/ui/static/live.js``): to
                                  the AI provider all of its status; to a node of
                                  the job ``access.NODE_STATUS`` and its own part
``/ui/jobs/{id}/tree``            a secure job's open round's tree (SVG), to the
                                  job's AI provider and nodes (each node derives it)
``/ui/jobs/{id}/report``          the job's report.html as its AI provider uploaded
                                  it, sandboxed, to the AI provider and participants
================================  =================================================

Every page is rendered here, every string from a job escaped
(``html.escape``); no page runs inline script (the CSP forbids it), none may
be framed, none sends a referrer. No session: 401; a party with no role in
the job: 403; both as pages that say why.
"""

from __future__ import annotations

import html
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from tessera.coordinator import access
from tessera.coordinator.service import CoordinatorService, Refused
from tessera.coordinator.sessions import (
    COOKIE,
    SESSION_SECONDS,
    LoginRefused,
    Party,
    Sessions,
)
from tessera.protocol.topology import Tree
from tessera.storage import NotFound

#: The pages' policy: scripts and styles from here only (no inline script), images also
#: inline (the tree is inline SVG, not an image).
PAGE_CSP = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'"
#: The uploaded report's: a sandbox (no script, no same origin, no forms), nothing fetched.
REPORT_CSP = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"
#: The largest report.html an AI provider may upload (its plots are inline PNGs).
REPORT_BYTES = 20_000_000
REPORT_MEDIA_TYPE = "text/html; charset=utf-8"
LIVE_SECONDS = 2.0  # how often a job's page asks for its progress (live.js reads it)

HOW_TO_LOGIN = (
    "Ask for a login link with a signed request: an AI provider runs "
    "<code>tessera job page --coordinator URL --keys FILE</code> (<code>tessera up</code> "
    "prints one); a node's owner POSTs to <code>/v1/sessions</code> signed with the "
    "node's keys. Each link works once, for 5 minutes."
)


def _headers(csp: str = PAGE_CSP) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
    }


def _e(value: object) -> str:
    """Any value as HTML text, escaped (quotes too: safe in attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def _page(title: str, body: str, *, party: Party | None = None, status: int = 200) -> Response:
    who = f'<p class="who">signed in as {_e(party.name)}</p>' if party is not None else ""
    text = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)} - Tessera coordinator</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .2rem .6rem; }}
dt {{ font-weight: bold; float: left; clear: left; width: 12rem; }} dd {{ margin-left: 12rem; }}
.who {{ color: #666; }} nav a {{ margin-right: 1rem; }}
</style></head>
<body><nav><a href="/ui/">jobs</a></nav>{who}
<h1>{_e(title)}</h1>
{body}
</body></html>"""
    return HTMLResponse(text, status_code=status, headers=_headers())


def _refusal(status: int, reason: str, party: Party | None = None) -> Response:
    titles = {401: "Not signed in", 403: "Not allowed", 404: "Not found"}
    extra = f"<p>{HOW_TO_LOGIN}</p>" if status == 401 else ""
    body = f'<p id="reason">{_e(reason)}</p>{extra}'
    return _page(titles.get(status, "Refused"), body, party=party, status=status)


def _consents(status: dict[str, Any]) -> str:
    return f"{status['valid_consents']} / {status['min_consents']}"


def _round(value: object) -> str:
    return "-" if value is None else str(value)


def _purpose(document: dict[str, Any]) -> str:
    """The purpose the job's signed document states (public: users read it to consent)."""
    body = document.get("body")
    return str(body.get("purpose", "")) if isinstance(body, dict) else ""


def job_view(service: CoordinatorService, party: Party, job_id: str) -> dict[str, Any]:
    """What ``party`` may see of a job's progress: the page and its live updates both.

    The AI provider sees its whole status (``access.status``); a node of the job sees
    ``access.NODE_STATUS``, the participant count once the job started (the
    participants route gives it the list itself) and, per round, whether its own
    update was included. That last one is safe to show: it is about the node alone and
    names nobody else (neither who else was included nor how many), and the node's user
    is the one person entitled to know whether their own update counted.
    """
    caller = party.caller(service.clock())
    role = access.job_for(service, caller, job_id, access.Role.AI_PROVIDER, access.Role.PARTICIPANT)
    status = service.status(job_id)
    rounds = status["rounds"]
    out: dict[str, Any] = {key: status[key] for key in access.NODE_STATUS}
    out["role"] = role.value
    out["purpose"] = _purpose(service.job(job_id).document)
    out["round"] = _round(status["current_round"])
    if role is access.Role.AI_PROVIDER:
        members = status["participants"]
        out["consents"] = _consents(status)
        out["participants"] = "-" if members is None else str(len(members))
        out["participant_list"] = list(members or [])
        out["refused"] = list(status["refused"])
        out["rounds"] = [
            {
                "round": r["round"],
                "participants": f"{r['participants']} / {r['selected']}",
                "included": len(r.get("included") or ()),
                "excluded": len(r.get("excluded") or ()),
                "skipped": "yes" if r.get("skipped") else "no",
            }
            for r in rounds
        ]
        return out
    me = str(party.node)
    members = status["participants"]
    out["consents"] = "-"  # not in NODE_STATUS: how many others consented is not a node's
    out["participants"] = "-" if members is None or me not in members else str(len(members))
    out["rounds"] = [
        {"round": r["round"], "you": "included" if me in (r.get("included") or ()) else "not"}
        for r in rounds
    ]
    return out


def _job_page(view: dict[str, Any], job_id: str) -> str:
    jid = _e(job_id)
    facts = [
        ("State", "state", view["state"]),
        ("Consents (valid / needed)", "consents", view["consents"]),
        ("Participants", "participants", view["participants"]),
        ("Current round", "round", view["round"]),
        ("Error", "error", view.get("error") or ""),
    ]
    rows = "".join(
        f'<dt>{label}</dt><dd id="{key}">{_e(value)}</dd>' for label, key, value in facts
    )
    ai = view["role"] == access.Role.AI_PROVIDER.value
    columns = (
        ("round", "participants", "included", "excluded", "skipped") if ai else ("round", "you")
    )
    head = "".join(f"<th>{c}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(r[c])}</td>" for c in columns) + "</tr>" for r in view["rounds"]
    )
    parts = [
        f'<main id="job" data-live="/ui/jobs/{jid}/live" data-every="{LIVE_SECONDS}">',
        f'<p id="purpose">{_e(view["purpose"])}</p>',
        f"<dl>{rows}</dl>",
        f'<p><a href="/ui/jobs/{jid}/tree">the current round\'s tree</a> '
        f'<a href="/ui/jobs/{jid}/report">the report</a></p>',
        f'<h2>Rounds</h2><table id="rounds"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>",
    ]
    if ai:
        names = "".join(f"<li>{_e(n)}</li>" for n in view["participant_list"])
        refused = "".join(f"<li>{_e(line)}</li>" for line in view["refused"])
        parts.append(f'<h2>Participants</h2><ul id="participant-list">{names}</ul>')
        parts.append(f'<h2>Refusals</h2><ul id="refused">{refused}</ul>')
    parts.append('</main><script src="/ui/static/live.js"></script>')
    return "\n".join(parts)


# -- the tree as SVG ------------------------------------------------------------------------

_BOX_W, _BOX_H, _GAP_X, _GAP_Y, _PAD = 210, 78, 18, 54, 10


def _names(nodes: tuple[str, ...], most: int = 3) -> str:
    shown = ", ".join(nodes[:most])
    return shown + (f" +{len(nodes) - most}" if len(nodes) > most else "") if nodes else "-"


def tree_svg(tree: Tree) -> str:
    """The tree as inline SVG: one row per level (the root on top), a box per group
    (its id, members count, aggregators and backups), a line to its parent."""
    top = max(g.level for g in tree.groups)
    rows: dict[int, list[Any]] = {}
    for group in sorted(tree.groups, key=lambda g: g.id):
        rows.setdefault(group.level, []).append(group)
    widest = max(len(r) for r in rows.values())
    width = widest * (_BOX_W + _GAP_X) + 2 * _PAD
    height = (top + 1) * (_BOX_H + _GAP_Y) + 2 * _PAD
    place: dict[str, tuple[float, float]] = {}
    for level, groups in rows.items():
        offset = _PAD + (widest - len(groups)) * (_BOX_W + _GAP_X) / 2
        row_y: float = _PAD + (top - level) * (_BOX_H + _GAP_Y)
        for i, group in enumerate(groups):
            place[group.id] = (offset + i * (_BOX_W + _GAP_X), row_y)
    lines, boxes = [], []
    for group in tree.groups:
        x, y = place[group.id]
        if group.parent is not None and group.parent in place:
            px, py = place[group.parent]
            lines.append(
                f'<line x1="{x + _BOX_W / 2:.0f}" y1="{y:.0f}" x2="{px + _BOX_W / 2:.0f}" '
                f'y2="{py + _BOX_H:.0f}" stroke="#888"/>'
            )
        text = [
            f"group {group.id} (level {group.level})",
            f"{len(group.members)} members"
            if group.is_leaf
            else f"{len(group.children)} child groups",
            f"aggregators: {_names(group.aggregators)}",
            f"backups: {_names(group.backups)}",
        ]
        spans = "".join(
            f'<text x="{x + 8:.0f}" y="{y + 18 + 17 * i:.0f}" font-size="12">{_e(t)}</text>'
            for i, t in enumerate(text)
        )
        boxes.append(
            f'<g class="group" id="group-{_e(group.id)}"><title>{_e(group.id)}: '
            f"aggregators {_e(', '.join(group.aggregators))}; "
            f"backups {_e(', '.join(group.backups))}</title>"
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{_BOX_W}" height="{_BOX_H}" rx="6" '
            f'fill="#eef4fb" stroke="#4a78a8"/>{spans}</g>'
        )
    return (
        f'<svg id="tree" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
        f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
        f'aria-label="the round\'s tree">{"".join(lines)}{"".join(boxes)}</svg>'
    )


# -- the router ---------------------------------------------------------------------------


def router(service: CoordinatorService, sessions: Sessions) -> APIRouter:  # noqa: PLR0915
    """The pages (not in the OpenAPI description: they are for browsers)."""
    pages = APIRouter(prefix="/ui", include_in_schema=False)

    def party_of(request: Request) -> Party | None:
        return sessions.party(request.cookies.get(COOKIE))

    def guarded(request: Request, job_id: str) -> Party | Response:
        """The session's party, if it has a role in the job; else the refusal page."""
        party = party_of(request)
        if party is None:
            return _refusal(401, "You have no session here, or it expired.")
        try:
            access.job_for(
                service,
                party.caller(service.clock()),
                job_id,
                access.Role.AI_PROVIDER,
                access.Role.PARTICIPANT,
            )
        except Refused as exc:
            return _refusal(exc.status, exc.reason, party)
        return party

    @pages.get("/login")
    def login(request: Request, token: str = "") -> Response:
        """Exchange a one-time token for a session cookie, then go to the jobs (the token
        leaves the address bar with the redirect)."""
        try:
            session, _ = sessions.redeem(token)
        except LoginRefused as exc:
            return _refusal(403, exc.reason)
        answer = RedirectResponse("/ui/", status_code=303, headers=_headers())
        answer.set_cookie(
            COOKIE,
            session,
            max_age=int(SESSION_SECONDS),
            path="/ui",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return answer

    @pages.get("/logout")
    def logout(request: Request) -> Response:
        sessions.end(request.cookies.get(COOKIE))
        answer = _page("Signed out", "<p>Your session has ended.</p>")
        answer.delete_cookie(COOKIE, path="/ui")
        return answer

    @pages.get("/static/live.js")
    def live_js() -> Response:
        script = resources.files("tessera.coordinator").joinpath("live.js").read_text("utf-8")
        return Response(script, media_type="text/javascript", headers=_headers())

    @pages.get("/")
    def jobs(request: Request) -> Response:
        party = party_of(request)
        if party is None:
            return _refusal(401, "You have no session here, or it expired.")
        caller = party.caller(service.clock())
        rows = []
        for job in access.jobs(service, caller):
            status = service.status(job["job_id"])
            mine = access.role(service, caller, service.job(job["job_id"]))
            consents = _consents(status) if mine is access.Role.AI_PROVIDER else "-"
            jid = _e(job["job_id"])
            link = f'<a href="/ui/jobs/{jid}">{jid}</a>' if mine is not None else jid
            purpose = _purpose(service.job(job["job_id"]).document)
            rows.append(
                f'<tr data-job="{jid}"><td>{link}</td><td>{_e(purpose)}</td>'
                f"<td>{_e(job['state'])}</td>"
                f"<td>{_e(consents)}</td><td>{_e(_round(status['current_round']))}</td></tr>"
            )
        table = (
            '<table id="jobs"><thead><tr><th>job</th><th>purpose</th><th>state</th>'
            f"<th>consents</th><th>round</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
            if rows
            else '<p id="jobs">No jobs you have a role in.</p>'
        )
        return _page("Jobs", table, party=party)

    @pages.get("/jobs/{job_id}")
    def job(request: Request, job_id: str) -> Response:
        party = guarded(request, job_id)
        if isinstance(party, Response):
            return party
        view = job_view(service, party, job_id)
        return _page(f"Job {job_id}", _job_page(view, job_id), party=party)

    @pages.get("/jobs/{job_id}/live")
    def live(request: Request, job_id: str) -> Response:
        party = party_of(request)
        if party is None:
            return JSONResponse({"detail": "no session"}, 401, headers=_headers())
        try:
            view = job_view(service, party, job_id)
        except Refused as exc:
            return JSONResponse({"detail": exc.reason}, exc.status, headers=_headers())
        return JSONResponse(view, headers=_headers())

    @pages.get("/jobs/{job_id}/tree")
    def tree(request: Request, job_id: str) -> Response:
        party = guarded(request, job_id)
        if isinstance(party, Response):
            return party
        record = service.job(job_id)
        driver = service.drivers.get(job_id)
        found = None if driver is None else driver.open_tree()
        if not service.spec(record).secure:
            body = '<p id="no-tree">No tree: a plaintext job sends its updates straight here.</p>'
        elif found is None:
            body = '<p id="no-tree">No tree: no round is open.</p>'
        else:
            body = (
                f'<p id="tree-round">Round {_e(_round(record.current_round))}: '
                f"{len(found.groups)} groups over "
                f"{1 + max(g.level for g in found.groups)} levels, "
                f"k = {found.params.k} aggregators a group.</p>{tree_svg(found)}"
            )
        return _page(f"Job {job_id}: the round's tree", body, party=party)

    @pages.get("/jobs/{job_id}/report")
    async def report(request: Request, job_id: str) -> Response:
        party = guarded(request, job_id)
        if isinstance(party, Response):
            return party
        sha = service.job(job_id).report
        if sha is None:
            return _refusal(404, "Its AI provider has uploaded no report yet.", party)
        try:
            data = await run_in_threadpool(service.store.get_artefact, sha)
        except NotFound:
            return _refusal(404, "The report is missing from the store.", party)
        return Response(data, media_type=REPORT_MEDIA_TYPE, headers=_headers(REPORT_CSP))

    return pages


def check_report(job_id: str, data: bytes, media_type: str) -> None:
    """A report upload: text/html, UTF-8, at most ``REPORT_BYTES``; Refused saying why not."""
    if media_type.split(";", maxsplit=1)[0].strip().lower() != "text/html":
        raise Refused(400, "a report is text/html (its content-type)")
    if len(data) > REPORT_BYTES:
        raise Refused(413, f"a report is at most {REPORT_BYTES:,} bytes")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, f"the report of {job_id} is not UTF-8 text") from None


def session_link(token: str) -> str:
    """The path of a login link for ``token`` (URL-safe: no quoting needed)."""
    return f"/ui/login?token={token}"


__all__ = [
    "PAGE_CSP",
    "REPORT_BYTES",
    "REPORT_CSP",
    "check_report",
    "job_view",
    "router",
    "session_link",
    "tree_svg",
]

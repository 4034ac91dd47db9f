"""The coordinator's pages in a real browser, against a real coordinator on loopback.

The coordinator is ``create_coordinator_app`` served by uvicorn in a thread
(``tests/coordinator/coordinator_kit.Harness``). The AI provider asks for a
login link with a signed request (``CoordinatorClient.page_link``); the
browser opens it, lands on the jobs list with the token gone from the
address bar, opens the job, and watches its consents and state change as
nodes consent, without reloading (``live.js`` polls every 2 s). Then a
secure job's open round shows as a tree.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.coordinator.coordinator_kit import JOB, Harness, Node, beacon_secret, job_id, tiny_job
from tests.coordinator.test_pages import NAMES, _secure_job

from tessera.jobs.beacon import roster_digest, sign_reveal


@pytest.fixture
def coord(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path / "coordinator.db")
    try:
        yield harness
    finally:
        harness.stop()


@pytest.fixture
def nodes(coord: Harness) -> dict[str, Node]:
    out = {name: Node.make(name) for name in NAMES}
    for node in out.values():
        coord.register(node.keys, node.id)
    return out


def reveal_all(coord: Harness, doc: Any, nodes: dict[str, Node]) -> None:
    for node in nodes.values():
        reveal = sign_reveal(
            node.keys,
            job_id=job_id(doc),
            job_digest=doc.digest,
            node=node.id,
            roster=roster_digest(NAMES),
            secret=beacon_secret(node.id),
        )
        answer = coord.http.post(
            f"/v1/jobs/{job_id(doc)}/reveals", json={"reveal": reveal.to_json()}
        )
        assert answer.status_code == 200, answer.text


def test_the_ai_provider_watches_its_job_live_and_sees_the_tree(
    page: Any, coord: Harness, nodes: dict[str, Node]
) -> None:
    from playwright.sync_api import expect

    doc, weights = tiny_job()
    coord.submit(doc, weights)
    with coord.client() as client:
        link = client.page_link()
    assert link.startswith(coord.url + "/ui/login?token=")

    page.goto(link)
    assert page.url == coord.url + "/ui/"  # redirected: the token left the address bar
    expect(page.locator("#jobs")).to_contain_text(JOB)
    expect(page.locator(f'tr[data-job="{JOB}"]')).to_contain_text("waiting")

    page.click(f'a[href="/ui/jobs/{JOB}"]')
    expect(page.locator("#state")).to_have_text("waiting")
    expect(page.locator("#consents")).to_have_text("0 / 3")
    expect(page.locator("#round")).to_have_text("-")
    loaded = page.evaluate("performance.getEntriesByType('navigation').length")

    assert coord.consent(doc, nodes["node-a"]).status_code == 201
    expect(page.locator("#consents")).to_have_text("1 / 3", timeout=10_000)
    for name in ("node-b", "node-c"):
        assert coord.consent(doc, nodes[name]).status_code == 201
    expect(page.locator("#state")).to_have_text("running", timeout=10_000)
    expect(page.locator("#consents")).to_have_text("3 / 3")
    expect(page.locator("#round")).to_have_text("0")
    expect(page.locator("#participant-list li")).to_have_count(3)
    # No reload happened: the same document, updated in place.
    assert page.evaluate("performance.getEntriesByType('navigation').length") == loaded
    assert page.locator("#job").get_attribute("data-updated") is not None

    page.goto(f"{coord.url}/ui/jobs/{JOB}/tree")
    expect(page.locator("#no-tree")).to_contain_text("plaintext job")

    secure, weights = _secure_job()
    coord.submit(secure, weights)
    for node in nodes.values():
        assert coord.consent(secure, node).status_code == 201
    reveal_all(coord, secure, nodes)
    sid = job_id(secure)
    end = time.monotonic() + 10
    while (driver := coord.service.drivers.get(sid)) is None or driver.open_tree() is None:
        assert time.monotonic() < end, "no round opened"
        time.sleep(0.05)
    tree = driver.open_tree()
    assert tree is not None
    page.goto(f"{coord.url}/ui/jobs/{sid}/tree")
    expect(page.locator("svg#tree")).to_be_visible()
    expect(page.locator("svg#tree g.group")).to_have_count(len(tree.groups))
    for group in tree.groups:
        said = f"{len(group.members)} members" if group.is_leaf else "child groups"
        expect(page.locator(f'[id="group-{group.id}"]')).to_contain_text(said)


def test_a_page_without_a_session_says_how_to_get_a_link(page: Any, coord: Harness) -> None:
    from playwright.sync_api import expect

    answer = page.goto(f"{coord.url}/ui/")
    assert answer is not None and answer.status == 401
    expect(page.locator("body")).to_contain_text("tessera job page")
    used = f"{coord.url}/ui/login?token=nothing-here"
    assert page.goto(used).status == 403
    expect(page.locator("#reason")).to_contain_text("unknown or expired")

"""Back-pressure on long polls: past ``max_polls`` held at once, a poll is answered 503
with Retry-After at once (not queued until the coordinator runs out of sockets), a poll
that finds mail is always served, and the client waits what Retry-After asks."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tessera.runtime.transport.auth import sign_request
from tessera.runtime.transport.client import _retry_after

from .coordinator_kit import Harness, Node


def _poll(coord: Harness, node: Node, wait: float) -> httpx.Response:
    path = f"/v1/mail?after=0&wait={wait}"
    headers = sign_request(node.keys, "GET", path, at=time.time(), node=node.id)
    return coord.http.get(path, headers=headers)


def test_a_poll_past_the_limit_is_pushed_back_and_a_freed_slot_taken(tmp_path: Path) -> None:
    coord = Harness(tmp_path / "coordinator.db", max_polls=1)
    try:
        a, b = Node.make("node-a"), Node.make("node-b")
        for node in (a, b):
            coord.register(node.keys, node.id)
        held: list[httpx.Response] = []
        first = threading.Thread(target=lambda: held.append(_poll(coord, a, 3.0)))
        t0 = time.monotonic()
        first.start()
        time.sleep(0.5)  # a's poll waits on the server, holding the one slot

        pushed = _poll(coord, b, 3.0)
        assert pushed.status_code == 503, pushed.text
        assert pushed.headers["retry-after"] == "5"
        assert "long polls" in pushed.json()["detail"]
        assert time.monotonic() - t0 < 2.5  # answered at once, not after a wait
        assert _poll(coord, b, 0.0).status_code == 200  # a poll that holds nothing is served

        first.join()
        assert held[0].status_code == 200  # a's poll ended normally ...
        assert _poll(coord, b, 0.2).status_code == 200  # ... and freed its slot
    finally:
        coord.stop()


@pytest.mark.parametrize(
    ("header", "seconds"), [("5", 5.0), (None, 0.0), ("soon", 0.0), ("999", 60.0), ("-3", 0.0)]
)
def test_the_client_waits_what_retry_after_asks(header: str | None, seconds: float) -> None:
    request = httpx.Request("GET", "http://coordinator/v1/mail")
    headers = {} if header is None else {"retry-after": header}
    response = httpx.Response(503, headers=headers, request=request)
    exc = httpx.HTTPStatusError("busy", request=request, response=response)
    assert _retry_after(exc) == seconds
    assert _retry_after(httpx.ConnectError("down")) == 0.0


def test_a_stopping_coordinator_answers_its_held_polls_at_once(tmp_path: Path) -> None:
    """SIGTERM (``run_server``'s ``on_exit``): held polls return empty batches, so the
    shutdown waits for none of them, and later polls do not wait either."""
    coord = Harness(tmp_path / "coordinator.db")
    try:
        a = Node.make("node-a")
        coord.register(a.keys, a.id)
        held: list[tuple[httpx.Response, float]] = []

        def poll() -> None:
            t0 = time.monotonic()
            held.append((_poll(coord, a, 20.0), time.monotonic() - t0))

        first = threading.Thread(target=poll)
        first.start()
        time.sleep(0.5)
        coord.service.signal.close_all()
        first.join(10)
        [(answer, waited)] = held
        assert answer.status_code == 200 and waited < 5.0  # not its 20 s
        t0 = time.monotonic()
        assert _poll(coord, a, 20.0).status_code == 200
        assert time.monotonic() - t0 < 5.0
    finally:
        coord.stop()

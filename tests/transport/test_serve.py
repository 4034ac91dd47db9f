"""Servers on real sockets: the thread runner, the blocking CLI runner, BodyLimit."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from tessera.runtime.transport.serve import BodyLimit, serve_in_thread

LIMIT = 1000
DETAIL = {"detail": f"request body exceeds {LIMIT} bytes"}


class CountingApp:
    """A bare ASGI app that reads the whole body and reports its size."""

    def __init__(self) -> None:
        self.most_seen = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        total, more = 0, True
        while more:
            message = await receive()
            total += len(message.get("body", b""))
            self.most_seen = max(self.most_seen, total)
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(total).encode()})


def _fastapi_echo() -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    return app


def _chunks(count: int, size: int = 300) -> Iterator[bytes]:
    for _ in range(count):
        yield b"x" * size


def test_thread_server_serves_and_stops() -> None:
    server = serve_in_thread(_fastapi_echo())
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert httpx.post(f"{server.url}/echo", content=b"abc").json() == {"size": 3}
    server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{server.url}/echo", content=b"abc")
    server.stop()  # idempotent


def test_port_in_use_raises_in_the_caller() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            serve_in_thread(CountingApp(), port=port)


def test_failed_startup_is_reported() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    with pytest.raises(RuntimeError, match="failed to start") as info:
        serve_in_thread(app, log_level="critical")
    assert isinstance(info.value.__cause__, SystemExit)


@pytest.fixture(scope="module")
def counting() -> Iterator[tuple[str, CountingApp]]:
    app = CountingApp()
    with serve_in_thread(BodyLimit(app, LIMIT), log_level="error") as server:
        yield server.url, app


@pytest.mark.parametrize("size", [0, 1, LIMIT])
def test_bodies_within_the_limit_pass(counting: tuple[str, CountingApp], size: int) -> None:
    url, _ = counting
    response = httpx.post(url, content=b"x" * size)
    assert response.status_code == 200 and response.text == str(size)


def test_chunked_body_within_the_limit_passes(counting: tuple[str, CountingApp]) -> None:
    url, _ = counting
    response = httpx.post(url, content=_chunks(3))
    assert response.status_code == 200 and response.text == "900"


def test_declared_length_over_the_limit_is_refused_unread(
    counting: tuple[str, CountingApp],
) -> None:
    url, app = counting
    app.most_seen = 0
    response = httpx.post(url, content=b"x" * (LIMIT + 1))
    assert response.status_code == 413 and response.json() == DETAIL
    assert response.headers["connection"] == "close"
    assert app.most_seen == 0


def test_chunked_body_over_the_limit_is_cut_off(counting: tuple[str, CountingApp]) -> None:
    url, app = counting
    app.most_seen = 0
    request = httpx.Request("POST", url, content=_chunks(40))
    assert "content-length" not in request.headers
    with httpx.Client() as client:
        response = client.send(request)
        assert response.status_code == 413 and response.json() == DETAIL
        assert app.most_seen <= LIMIT  # the crossing chunk never reaches the app
        again = client.post(url, content=b"still serving")
        assert again.status_code == 200


def test_fastapi_app_behind_the_limit() -> None:
    with serve_in_thread(BodyLimit(_fastapi_echo(), LIMIT), log_level="error") as server:
        ok = httpx.post(f"{server.url}/echo", content=_chunks(2))
        assert ok.json() == {"size": 600}
        refused = httpx.post(f"{server.url}/echo", content=_chunks(5))
        assert refused.status_code == 413 and refused.json() == DETAIL
        refused = httpx.post(f"{server.url}/echo", content=b"x" * 5000)
        assert refused.status_code == 413 and refused.json() == DETAIL


def test_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        BodyLimit(CountingApp(), -1)


RUN_SERVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tessera.runtime.transport.serve import run_server

    async def app(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"up"})

    run_server(app, host="127.0.0.1", port=0, log_level="warning", ready_file=Path(sys.argv[1]))
    print("returned cleanly", file=sys.stderr)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_server_announces_itself_and_stops_on_signal(
    tmp_path: Path, sig: signal.Signals
) -> None:
    ready = tmp_path / "ready"
    ready.write_text("http://stale.invalid:1\n")  # a leftover from a crashed run
    process = subprocess.Popen(
        [sys.executable, "-c", RUN_SERVER, str(ready)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        url = ""
        while not url.startswith("http://127.0.0.1:"):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.02)
            url = ready.read_text().strip() if ready.exists() else ""
        assert httpx.get(url).text == "up"
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert f"tessera: listening on {url}" in stderr
    assert "returned cleanly" in stderr
    assert not ready.exists()

"""Run an ASGI app for real: in a background thread (tests, notebooks) or blocking (the CLI).

Theory of operation: we bind the listening socket ourselves and hand it to
uvicorn. That turns "port 0" into a known port before the server starts, and a
port already in use into an ``OSError`` raised in the caller's thread rather
than uvicorn's log line followed by ``sys.exit`` inside the server.

``serve_in_thread`` returns once uvicorn reports it is serving, and re-raises
whatever stopped it from getting there. ``run_server`` blocks; SIGINT and
SIGTERM start uvicorn's graceful shutdown (a second SIGINT forces it) and the
function then *returns*, instead of uvicorn's default of re-raising the
signal, so the caller's cleanup runs and the process exits normally.

``BodyLimit`` is plain ASGI middleware, usable around any app. It refuses a
declared ``Content-Length`` above the limit before reading a byte, and counts
streamed (chunked) bodies as they arrive: the chunk that crosses the limit is
never handed to the app, so the app never holds more than ``max_bytes``.
The 413 carries ``Connection: close``: the server stops reading a body it has
refused instead of draining it, which bounds what a hostile client can push.
The price is that a client still sending a very large body may see the
connection reset before it reads the 413.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

import uvicorn

from tessera.runtime.transport.tls import CertPaths, server_ssl_kwargs

__all__ = ["BodyLimit", "RunningServer", "run_server", "serve_in_thread"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_log = logging.getLogger("tessera.net")
_START_TIMEOUT_S = 10.0


class RunningServer:
    """A uvicorn server serving in a daemon thread; stop it or use ``with``."""

    def __init__(
        self,
        server: uvicorn.Server,
        thread: threading.Thread,
        sock: socket.socket,
        url: str,
    ) -> None:
        self._server = server
        self._thread = thread
        self._sock = sock
        self.url = url
        self.port: int = sock.getsockname()[1]

    def stop(self, timeout: float = 10) -> None:
        """Shut down gracefully; force it if ``timeout`` seconds pass first."""
        self._server.config.timeout_graceful_shutdown = max(1, int(timeout))
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(1)
        self._sock.close()
        if self._thread.is_alive():
            raise TimeoutError(f"server at {self.url} did not stop within {timeout} s")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RunningServer({self.url!r})"


def serve_in_thread(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ssl: CertPaths | None = None,
    log_level: str = "warning",
) -> RunningServer:
    """Serve ``app`` from a daemon thread and return once it accepts connections."""
    sock = _bind(host, port)
    try:
        config = _config(app, host, sock, ssl, log_level)
        config.load()  # TLS files and the app are checked here, in the caller's thread
    except BaseException:
        sock.close()
        raise
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def target() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported to the starting thread below
            failure.append(exc)

    thread = threading.Thread(target=target, name=f"uvicorn:{config.port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive():
            sock.close()
            cause = failure[0] if failure else None
            raise RuntimeError(f"server on {host}:{config.port} failed to start") from cause
        if time.monotonic() > deadline:
            server.should_exit = True
            thread.join(1)
            sock.close()
            raise TimeoutError(f"server on {host}:{config.port} did not start in time")
        time.sleep(0.005)
    return RunningServer(server, thread, sock, _url(host, config.port, ssl))


def run_server(
    app: ASGIApp,
    *,
    host: str,
    port: int,
    ssl: CertPaths | None = None,
    log_level: str = "info",
    ready_file: Path | None = None,
    on_exit: Callable[[], None] | None = None,
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM, then shut down gracefully and return
    (``on_exit``, told at the signal, ends the app's long requests).

    The bound URL is printed to stderr (and logged), so ``port=0`` is usable
    by hand. With ``ready_file``, the URL is also written there atomically
    once the server accepts connections; a stale file is removed at start and
    the file is removed again on the way out, so a parent process can wait
    for it to appear.
    """
    if ready_file is not None:
        ready_file.parent.mkdir(parents=True, exist_ok=True)
        ready_file.unlink(missing_ok=True)
    sock = _bind(host, port)
    try:
        config = _config(app, host, sock, ssl, log_level)
        url = _url(host, config.port, ssl)

        def announce() -> None:
            print(f"tessera: listening on {url}", file=sys.stderr, flush=True)
            _log.info("listening on %s", url)
            if ready_file is not None:
                _write_atomic(ready_file, url + "\n")

        _GracefulServer(config, on_started=announce, on_exit=on_exit).run(sockets=[sock])
    finally:
        sock.close()
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)


class _GracefulServer(uvicorn.Server):
    """uvicorn.Server that announces readiness and returns after a signal."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        on_started: Callable[[], None],
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self._on_started = on_started
        self._on_exit = on_exit

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._on_started()

    def handle_exit(self, sig: int, _frame: FrameType | None) -> None:
        # Unlike the base class, do not record the signal for re-raising after
        # shutdown: returning normally lets run_server's caller clean up.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        if not self.should_exit and self._on_exit is not None:
            self._on_exit()  # the app ends its long requests: the shutdown need not wait
        self.should_exit = True


class BodyLimit:
    """ASGI middleware: answer 413 to request bodies larger than ``max_bytes``.

    If the app already started its response when a streamed body crosses the
    limit, a 413 can no longer be sent; the request is then aborted with an
    exception and the server drops the connection.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, *, routes: Mapping[str, int] | None = None
    ) -> None:
        """``routes``: paths with a limit of their own (a route that streams large bodies)."""
        if max_bytes < 0 or any(n < 0 for n in (routes or {}).values()):
            raise ValueError("max_bytes must be >= 0")
        self.app = app
        self.max_bytes = max_bytes
        self.routes = dict(routes or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.routes.get(scope.get("path", ""), self.max_bytes)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._refuse(scope, send, limit)
            return
        state = _Exchange()

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state.received += len(message.get("body", b""))
                if state.received > limit:
                    if not state.started:
                        state.refused = True
                        await self._refuse(scope, send, limit)
                    raise _BodyTooLarge(limit)
            return message

        async def tracked_send(message: Message) -> None:
            if state.refused:
                return  # we answered already; whatever the app sends is dropped
            if message["type"] == "http.response.start":
                state.started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except Exception:
            # Any error after our 413 is the app reacting to the aborted body
            # (possibly wrapped by a framework); the client has its answer.
            if not state.refused:
                raise

    async def _refuse(self, scope: Scope, send: Send, limit: int) -> None:
        _log.warning(
            "413 for %s %s: request body exceeds %d bytes",
            scope.get("method"),
            scope.get("path"),
            limit,
        )
        body = json.dumps({"detail": f"request body exceeds {limit} bytes"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


@dataclass(slots=True)
class _Exchange:
    """What BodyLimit has seen of one request/response exchange."""

    received: int = 0
    started: bool = False
    refused: bool = False


class _BodyTooLarge(Exception):
    """Raised into the app when a streamed body crosses the limit."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"request body exceeds {max_bytes} bytes")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server refuses malformed lengths itself
    return None


def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket here, so errors surface in the caller."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only
    # then, and without it every small response waits for the client's delayed ACK
    # (benchmarks/deployment.py measured 3-4x fewer mailbox messages per second).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.set_inheritable(True)
    return sock


GRACEFUL_SHUTDOWN_S = 3


def _config(
    app: ASGIApp, host: str, sock: socket.socket, ssl: CertPaths | None, log_level: str
) -> uvicorn.Config:
    tls = server_ssl_kwargs(ssl) if ssl is not None else {}
    return uvicorn.Config(
        app,
        host=host,
        port=sock.getsockname()[1],
        log_level=log_level,
        ssl_certfile=tls.get("ssl_certfile"),
        ssl_keyfile=tls.get("ssl_keyfile"),
        # On SIGTERM, requests still running after this are cancelled: a node's long poll
        # would otherwise hold the shutdown for up to its whole wait (its mail stays
        # stored; the node asks again), and a supervisor would have to SIGKILL us.
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )


def _url(host: str, port: int, ssl: CertPaths | None) -> str:
    """A URL a local client can use: wildcard addresses become loopback."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if ssl is not None else 'http'}://{host}:{port}"


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            os.fchmod(handle.fileno(), 0o644)
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

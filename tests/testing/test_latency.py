"""The delay relay: bytes intact and in order, late by the delay (not slowed), and every
connection and the thread gone when it closes."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tessera.testing.latency import DelayRelay

DELAY = 0.1


class Echo(socketserver.BaseRequestHandler):
    """Sends back what it reads (``heard``); says when its peer closed (``ended``)."""

    ended = threading.Event()
    heard = bytearray()

    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                type(self).heard += data
                self.request.sendall(data)
        except ConnectionResetError:
            pass  # its echo met a socket the relay had closed: the end, too
        finally:
            type(self).ended.set()


@pytest.fixture
def echo() -> Iterator[socketserver.ThreadingTCPServer]:
    Echo.ended, Echo.heard = threading.Event(), bytearray()
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo) as server:
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield server
        server.shutdown()
        thread.join(5)


def relay_to(server: socketserver.ThreadingTCPServer, jitter_s: float = 0.0) -> DelayRelay:
    port = int(server.server_address[1])
    return DelayRelay("127.0.0.1", "127.0.0.1", port, delay_s=DELAY, jitter_s=jitter_s, seed=1)


def connect(relay: DelayRelay) -> socket.socket:
    return socket.create_connection(("127.0.0.1", relay.port), timeout=5)


def receive(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        assert chunk, "closed early"
        got += chunk
    return bytes(got)


def test_bytes_arrive_intact_and_in_order_both_ways(echo: socketserver.ThreadingTCPServer) -> None:
    payload = os.urandom(3 << 20)  # many chunks each way, with jitter on every one
    with relay_to(echo, jitter_s=0.02) as relay, connect(relay) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        assert receive(sock, len(payload)) == payload
        sender.join()
    assert relay.relayed.bytes_up == relay.relayed.bytes_down == len(payload)
    assert relay.relayed.chunks_up > 1 and relay.relayed.connections == 1


def test_each_chunk_is_late_by_the_delay_not_slowed(
    echo: socketserver.ThreadingTCPServer,
) -> None:
    with relay_to(echo) as relay, connect(relay) as sock:
        start = time.monotonic()
        sock.sendall(b"ping")
        assert receive(sock, 4) == b"ping"
        rtt = time.monotonic() - start
        assert 2 * DELAY <= rtt < 2 * DELAY + 1.0
        # Ten messages a few ms apart: each is late by the delay from when it was sent,
        # so all are back about one round trip after the first, not ten.
        start = time.monotonic()
        for i in range(10):
            sock.sendall(bytes([i]))
            time.sleep(0.005)
        assert receive(sock, 10) == bytes(range(10))
        assert time.monotonic() - start < 5 * DELAY  # about 2.5 of it; ten round trips: 20


def test_closing_one_side_closes_the_other(echo: socketserver.ThreadingTCPServer) -> None:
    with relay_to(echo) as relay:
        sock = connect(relay)
        sock.sendall(b"last words")
        sock.close()
        assert Echo.ended.wait(5)  # the target saw its end, after the data
        assert Echo.heard == b"last words"


def test_a_target_that_is_down_closes_the_client() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # nobody listens there once this closes
    with DelayRelay("127.0.0.1", "127.0.0.1", port, delay_s=DELAY) as relay, connect(relay) as sock:
        assert sock.recv(1) == b""


def test_closing_the_relay_cuts_its_links_and_ends_its_thread(
    echo: socketserver.ThreadingTCPServer, caplog: pytest.LogCaptureFixture
) -> None:
    relay = relay_to(echo).start()
    sock = connect(relay)
    sock.sendall(b"x")
    assert receive(sock, 1) == b"x"
    relay.close()
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(1) == b""
    sock.close()
    assert not any(t.name == "DelayRelay" for t in threading.enumerate())
    assert relay._loop is not None and relay._loop.is_closed()
    with pytest.raises(ConnectionRefusedError):
        connect(relay)
    relay.close()  # twice is harmless, and so is closing one never started
    DelayRelay("127.0.0.1", "127.0.0.1", 9, delay_s=DELAY).close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # nothing left running

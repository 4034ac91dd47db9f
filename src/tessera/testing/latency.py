"""A TCP relay that adds latency, as Toxiproxy's latency toxic does.

``DelayRelay`` listens on a port of its own and forwards every connection it
accepts to one target, bytes both ways, holding each chunk ``delay_s`` (plus
a uniform draw in ``[0, jitter_s]``) after it arrived before passing it on.
The hold counts from each chunk's arrival, so a stream is late, not slow: a
pipe with latency, not a rate limit. Chunks keep their order in each
direction (a chunk never leaves before the one read ahead of it). It relays
bytes, so TLS passes through untouched: the target's certificate must also
name the relay's address (``Deployment.cert_hosts``).

The fault tests use it where a kernel has no ``netem``: nodes in their
network namespaces reach the coordinator through a relay the test process
runs on the bridge (``FaultNetwork.host_address``).

    with DelayRelay(net.host_address, "10.0.0.2", 8443, delay_s=0.1) as relay:
        ...  # connect to relay.address instead of 10.0.0.2:8443
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from dataclasses import dataclass, field

CHUNK = 64 * 1024
QUEUED = 256  # chunks held a direction at most; then reading stops (TCP's own back-pressure)


@dataclass
class Relayed:
    """What went through, per direction: ``up`` client to target, ``down`` back."""

    connections: int = 0
    chunks_up: int = 0
    bytes_up: int = 0
    chunks_down: int = 0
    bytes_down: int = 0


@dataclass
class DelayRelay:
    """Relays ``listen_host:port`` to ``target_host:target_port`` in a thread of its own
    (``start``/``close``, or ``with``), each chunk late by the delay; ``seed`` fixes the
    jitter's draws."""

    listen_host: str
    target_host: str
    target_port: int
    delay_s: float
    jitter_s: float = 0.0
    seed: int = 0
    listen_port: int = 0  # 0: a free one, in ``port`` once started
    relayed: Relayed = field(default_factory=Relayed, init=False)

    def __post_init__(self) -> None:
        if self.delay_s < 0 or self.jitter_s < 0:
            raise ValueError("a delay and its jitter are at least 0")
        self.port = 0
        self._random = random.Random(self.seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"{self.listen_host}:{self.port}"

    def start(self) -> DelayRelay:
        if self._loop is not None:
            raise RuntimeError("a relay starts once")
        self._loop = loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="DelayRelay", daemon=True)
        self._thread.start()
        serving = asyncio.start_server(self._accept, self.listen_host, self.listen_port)
        try:
            self._server = asyncio.run_coroutine_threadsafe(serving, loop).result(10)
        except BaseException:
            self.close()
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def close(self) -> None:
        """Stop listening, cut every relayed connection, end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._shut(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

    def __enter__(self) -> DelayRelay:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    async def _shut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._links):
            task.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        try:
            await self._link(reader, writer)
        except asyncio.CancelledError:
            pass  # closed under it (``close``): asyncio would log a cancelled callback
        finally:
            self._links.discard(task)

    async def _link(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.relayed.connections += 1
        try:
            target_r, target_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_w.close()  # the target is down: the client sees its connection closed
            return
        except asyncio.CancelledError:
            client_w.close()
            raise
        pipes = {
            asyncio.create_task(self._pipe(client_r, target_w, up=True)),
            asyncio.create_task(self._pipe(target_r, client_w, up=False)),
        }
        try:
            # The first side to close (or fail) ends both, once what it sent before is
            # through: HTTP needs no half-closed link, and none is left behind.
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            for w in (client_w, target_w):
                w.close()
            for w in (client_w, target_w):
                with contextlib.suppress(OSError):
                    await w.wait_closed()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool
    ) -> None:
        """One direction until its end of stream: read, stamp each chunk with the time it is
        due, and (in ``send``) write it then. Ends early if either socket fails."""
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUED)

        async def send() -> None:
            while True:
                due, chunk = await held.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not chunk:  # the end of the stream, as late as the data before it
                    return
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.create_task(send())
        last = 0.0
        try:
            while True:
                chunk = await reader.read(CHUNK)
                due = time.monotonic() + self.delay_s + self._random.uniform(0, self.jitter_s)
                last = max(due, last)  # jitter never reorders
                if chunk:
                    self._count(len(chunk), up=up)
                await held.put((last, chunk))
                if not chunk:
                    break
            await sender
        finally:
            sender.cancel()

    def _count(self, n: int, *, up: bool) -> None:
        r = self.relayed
        if up:
            r.chunks_up, r.bytes_up = r.chunks_up + 1, r.bytes_up + n
        else:
            r.chunks_down, r.bytes_down = r.chunks_down + 1, r.bytes_down + n

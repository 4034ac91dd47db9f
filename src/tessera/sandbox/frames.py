"""Length-prefixed msgpack frames: the only language spoken on the sandbox pipes.

A frame is a 4-byte big-endian body length followed by a msgpack map with
string keys. Nothing else can travel: no pickle, no msgpack extension types,
no trailing bytes. Each side caps the body size it accepts and checks the
header against that cap before reading a byte of body, so a lying header
costs nothing; bodies are read in bounded chunks, so memory grows only with
bytes actually received.

``encode``/``decode`` and ``FrameReader`` are pure (bytes in, messages out);
``read_body`` is the one blocking helper, for the worker's plain pipe loop.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import BinaryIO

import msgpack

from tessera.sandbox.errors import FrameError

HEADER = struct.Struct(">I")
#: Largest body either side will accept by default.
MAX_FRAME_BYTES = 1 << 30
_CHUNK = 1 << 24

Message = dict[str, object]  # decoded from untrusted bytes: read with checks


def encode(message: Mapping[str, object], *, max_size: int = MAX_FRAME_BYTES) -> bytes:
    """Header plus msgpack body of ``message``."""
    body: bytes = msgpack.packb(dict(message), use_bin_type=True)
    if len(body) > max_size:
        raise FrameError(f"a frame of {len(body):,} bytes exceeds the limit of {max_size:,}")
    return HEADER.pack(len(body)) + body


def body_length(header: bytes, max_size: int = MAX_FRAME_BYTES) -> int:
    """The body length announced by ``header``, checked against ``max_size``."""
    if len(header) != HEADER.size:
        raise FrameError(f"truncated frame header ({len(header)} of {HEADER.size} bytes)")
    (length,) = HEADER.unpack(header)
    if length > max_size:
        raise FrameError(f"a frame of {length:,} bytes exceeds the limit of {max_size:,}")
    return int(length)


def _no_extensions(code: int, _data: bytes) -> None:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def decode(body: bytes) -> Message:
    """The map in ``body``; anything else is a ``FrameError``."""
    try:
        message = msgpack.unpackb(
            body, raw=False, strict_map_key=True, use_list=True, ext_hook=_no_extensions
        )
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise FrameError(f"malformed frame body ({type(exc).__name__}: {exc})") from None
    if not isinstance(message, dict) or not all(isinstance(k, str) for k in message):
        raise FrameError("a frame must hold a map with string keys")
    return message


class FrameReader:
    """Incremental decoder for bytes that arrive in arbitrary pieces."""

    def __init__(self, max_size: int = MAX_FRAME_BYTES) -> None:
        self._max = max_size
        self._buf = bytearray()
        self._need: int | None = None

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned as a message."""
        return len(self._buf)

    def next_message(self) -> Message | None:
        """The next complete message, or None until more bytes arrive."""
        if self._need is None:
            if len(self._buf) < HEADER.size:
                return None
            self._need = body_length(bytes(self._buf[: HEADER.size]), self._max)
            del self._buf[: HEADER.size]
        if len(self._buf) < self._need:
            return None
        body = bytes(self._buf[: self._need])
        del self._buf[: self._need]
        self._need = None
        return decode(body)


def read_body(stream: BinaryIO, max_size: int = MAX_FRAME_BYTES) -> bytes | None:
    """The next frame's body from a blocking stream; None at a clean end of stream."""
    header = stream.read(HEADER.size)
    if not header:
        return None
    length = body_length(header, max_size)
    parts, got = [], 0
    while got < length:
        part = stream.read(min(_CHUNK, length - got))
        if not part:
            raise FrameError(f"truncated frame: {got:,} of {length:,} bytes before end of stream")
        parts.append(part)
        got += len(part)
    return b"".join(parts)

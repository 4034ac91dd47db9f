"""Payload bytes of the secure-aggregation messages (inside signed envelopes); see ``kinds``.

Binary for the bulky ones (shares, partial sums: raw little-endian ring
words of the round's width, 1, 2, 4 or 8 bytes each, no per-element
overhead), canonical JSON for small control messages
(reports, commitments). Every decoder checks lengths and ranges and raises
``RemoteProtocolError`` with a clear reason: a peer's bytes never reach numpy
or the state machines unchecked.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from tessera.crypto.fixedpoint import WIDTHS, Ring, Words
from tessera.crypto.sharing import FullShare, SeedShare, Share
from tessera.errors import RemoteProtocolError
from tessera.protocol.limits import MAX_CONTROL_BYTES

SEED_BYTES = 32
_SHARE = struct.Struct("<BBHI")  # share kind, ring bits, position, words
_PARTIAL = struct.Struct("<BHII")  # ring bits, position, contributors, words


def _dtype(bits: int) -> type[np.unsignedinteger[Any]]:
    """The word of a ring of ``bits`` (``fixedpoint.WIDTHS``: 8, 16, 32 or 64)."""
    if bits not in WIDTHS:
        raise RemoteProtocolError(f"unsupported ring of {bits} bits")
    return Ring(bits=bits, frac_bits=0).dtype


def _group_bytes(group: str) -> bytes:
    raw = group.encode()
    if len(raw) > 255:
        raise RemoteProtocolError("group id too long")
    return bytes([len(raw)]) + raw


# bytes in, bytes out; a memoryview in, a view out (no copy of a large body)
_Buf = TypeVar("_Buf", bytes, memoryview)


def _take_group(data: bytes | memoryview, offset: int) -> tuple[str, int]:
    if offset >= len(data):
        raise RemoteProtocolError("truncated group id")
    n = data[offset]
    raw = bytes(data[offset + 1 : offset + 1 + n])
    if len(raw) != n:
        raise RemoteProtocolError("truncated group id")
    try:
        return raw.decode(), offset + 1 + n
    except UnicodeDecodeError:
        raise RemoteProtocolError("group id is not utf-8") from None


@dataclass(frozen=True, slots=True)
class SharePayload:
    group: str
    position: int
    ring_bits: int
    length: int
    share: Share


def encode_share(group: str, position: int, ring: Ring, length: int, share: Share) -> bytes:
    if isinstance(share, SeedShare):
        return _SHARE.pack(0, ring.bits, position, length) + _group_bytes(group) + share.seed
    words = share.words.astype(share.words.dtype.newbyteorder("<"), copy=False)
    return full_share_prefix(group, position, ring, length) + words.tobytes()


def full_share_prefix(group: str, position: int, ring: Ring, length: int) -> bytes:
    """What a full share's payload holds before its ``length`` little-endian words
    (for a payload written piece by piece)."""
    return _SHARE.pack(1, ring.bits, position, length) + _group_bytes(group)


def decode_share(data: bytes) -> SharePayload:
    if len(data) < _SHARE.size:
        raise RemoteProtocolError("truncated share")
    kind, bits, position, length = _SHARE.unpack_from(data)
    group, offset = _take_group(data, _SHARE.size)
    body = memoryview(data)[offset:]
    if kind == 0:
        if len(body) != SEED_BYTES:
            raise RemoteProtocolError("seed share must carry exactly 32 bytes")
        return SharePayload(group, position, bits, length, SeedShare(bytes(body)))
    if kind != 1:
        raise RemoteProtocolError(f"unknown share kind {kind}")
    dtype = _dtype(bits)
    if len(body) != length * np.dtype(dtype).itemsize:
        raise RemoteProtocolError("share length does not match its header")
    words: Words = np.frombuffer(body, dtype=np.dtype(dtype).newbyteorder("<")).astype(
        dtype, copy=False
    )
    return SharePayload(group, position, bits, length, FullShare(words))


@dataclass(frozen=True, slots=True)
class PartialPayload:
    group: str
    position: int
    contributors: int
    words: Words


def encode_partial(group: str, position: int, contributors: int, words: Words) -> bytes:
    bits = words.dtype.itemsize * 8
    head = _PARTIAL.pack(bits, position, contributors, words.shape[0])
    return head + _group_bytes(group) + words.astype(words.dtype.newbyteorder("<")).tobytes()


def decode_partial(data: bytes) -> PartialPayload:
    if len(data) < _PARTIAL.size:
        raise RemoteProtocolError("truncated partial sum")
    bits, position, contributors, length = _PARTIAL.unpack_from(data)
    group, offset = _take_group(data, _PARTIAL.size)
    dtype = _dtype(bits)
    body = memoryview(data)[offset:]
    if len(body) != length * np.dtype(dtype).itemsize:
        raise RemoteProtocolError("partial sum length does not match its header")
    words: Words = np.frombuffer(body, dtype=np.dtype(dtype).newbyteorder("<")).astype(
        dtype, copy=False
    )
    return PartialPayload(group, position, contributors, words)


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def _unjson(data: bytes, what: str) -> dict[str, Any]:
    if len(data) > MAX_CONTROL_BYTES:
        raise RemoteProtocolError(f"{what} is too large")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):  # bad JSON or UTF-8, huge ints, deep nesting
        raise RemoteProtocolError(f"{what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError(f"{what} must be a JSON object")
    return obj


def _ids(obj: dict[str, Any], key: str, what: str) -> tuple[str, ...]:
    value = obj.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RemoteProtocolError(f"{what}.{key} must be a list of ids")
    if len(set(value)) != len(value):
        raise RemoteProtocolError(f"{what}.{key} repeats an id")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class Report:
    """Aggregator -> coordinator: which inputs arrived for (group, position)."""

    group: str
    position: int
    received: tuple[str, ...]


def encode_report(report: Report) -> bytes:
    return _json(
        {"group": report.group, "position": report.position, "received": sorted(report.received)}
    )


def decode_report(data: bytes) -> Report:
    obj = _unjson(data, "report")
    group, position = obj.get("group"), obj.get("position")
    if not isinstance(group, str) or not isinstance(position, int):
        raise RemoteProtocolError("report needs a group and a position")
    return Report(group, position, _ids(obj, "received", "report"))


@dataclass(frozen=True, slots=True)
class Commit:
    """Coordinator -> a group's aggregators: sum exactly ``included`` (None: dropped)."""

    group: str
    included: tuple[str, ...] | None


def encode_commit(commit: Commit) -> bytes:
    included = None if commit.included is None else sorted(commit.included)
    return _json({"group": commit.group, "included": included})


def decode_commit(data: bytes) -> Commit:
    obj = _unjson(data, "commitment")
    group = obj.get("group")
    if not isinstance(group, str):
        raise RemoteProtocolError("commitment needs a group")
    if obj.get("included") is None:
        return Commit(group, None)
    return Commit(group, _ids(obj, "included", "commitment"))


def encode_shared(staleness: int) -> bytes:
    """Contributor -> coordinator (buffered jobs): my shares are sealed, this stale."""
    return _json({"staleness": staleness})


def decode_shared(data: bytes) -> int:
    obj = _unjson(data, "shared notice")
    staleness = obj.get("staleness")
    if isinstance(staleness, bool) or not isinstance(staleness, int) or staleness < 0:
        raise RemoteProtocolError("shared notice needs a staleness >= 0")
    return staleness


@dataclass(frozen=True, slots=True)
class Reassign:
    """Position ``position`` of ``group`` is now served by ``replacement``."""

    group: str
    position: int
    replacement: str


def encode_reassign(r: Reassign) -> bytes:
    return _json({"group": r.group, "position": r.position, "replacement": r.replacement})


def decode_reassign(data: bytes) -> Reassign:
    obj = _unjson(data, "reassignment")
    group, position, replacement = obj.get("group"), obj.get("position"), obj.get("replacement")
    if not (isinstance(group, str) and isinstance(position, int) and isinstance(replacement, str)):
        raise RemoteProtocolError("reassignment needs a group, a position and a replacement")
    return Reassign(group, position, replacement)


def encode_labelled(group: str, position: int, body: bytes) -> bytes:
    """``body`` tagged with the (group, position) it concerns."""
    return _group_bytes(group) + struct.pack("<H", position) + body


def decode_labelled(data: _Buf) -> tuple[str, int, _Buf]:
    group, offset = _take_group(data, 0)
    if len(data) < offset + 2:
        raise RemoteProtocolError("truncated label")
    (position,) = struct.unpack_from("<H", data, offset)
    return group, position, data[offset + 2 :]


def encode_named(name: str, body: bytes) -> bytes:
    """``body`` preceded by the id it belongs to (an input's, in evidence)."""
    return _group_bytes(name) + body


def decode_named(data: bytes | memoryview, offset: int = 0) -> tuple[str, int]:
    """An id written by ``encode_named``, and where its body starts."""
    return _take_group(data, offset)


@dataclass(frozen=True, slots=True)
class Accusation:
    """An auditor's finding: ``accused`` at (group, position) summed wrongly."""

    group: str
    position: int
    accused: str
    reason: str


def encode_accusation(a: Accusation, proof: bytes) -> bytes:
    """The finding (JSON), then its proof (``protocol.accusation.encode_proof``)."""
    head = _json(
        {"group": a.group, "position": a.position, "accused": a.accused, "reason": a.reason}
    )
    return struct.pack("<I", len(head)) + head + proof


def decode_accusation(data: bytes) -> tuple[Accusation, bytes]:
    """The finding and its proof, unchecked (the coordinator judges it)."""
    if len(data) < 4:
        raise RemoteProtocolError("truncated accusation")
    (n,) = struct.unpack_from("<I", data)
    if 4 + n > len(data):
        raise RemoteProtocolError("truncated accusation")
    return _decode_finding(data[4 : 4 + n]), data[4 + n :]


def _decode_finding(data: bytes) -> Accusation:
    obj = _unjson(data, "accusation")
    group, position = obj.get("group"), obj.get("position")
    accused, reason = obj.get("accused"), obj.get("reason")
    if not (isinstance(group, str) and isinstance(position, int)):
        raise RemoteProtocolError("accusation needs a group and a position")
    if not (isinstance(accused, str) and isinstance(reason, str)):
        raise RemoteProtocolError("accusation needs the accused and a reason")
    return Accusation(group, position, accused, reason[:200])

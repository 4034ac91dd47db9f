"""Model weights as named float32 arrays, and their flat-vector form.

Weights cross every boundary as an ordered mapping name -> float32 array
(saved as safetensors, never pickle). Aggregation works on one flat float32
vector; ``Layout`` is the bijection between the two, fixed per model.

Downlink delta (``delta_bytes``, ``apply_delta``): a node that holds an earlier
global model can be sent the new one as the XOR of the two models' float32 bit
patterns, its four byte planes (low bytes, ..., sign and exponent bytes) one
after the other, deflated (zlib, in the standard library). XOR is exact, so the
node rebuilds the new model bit for bit; between two rounds most weights keep
their sign, exponent and top mantissa bits, so the high planes are mostly zero
bytes and deflate to little. Without an earlier model it is the model's own
byte planes, deflated.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load, save

from tessera.errors import DataError

Vector = npt.NDArray[np.float32]
NamedArrays = dict[str, npt.NDArray[np.float32]]


@dataclass(frozen=True)
class Layout:
    """Names and shapes of a model's tensors, in a fixed order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, arrays: Mapping[str, npt.NDArray[np.float32]]) -> Layout:
        return cls(tuple(arrays), tuple(tuple(int(d) for d in a.shape) for a in arrays.values()))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(np.prod(s, dtype=np.int64)) for s in self.shapes)

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def flatten(self, arrays: Mapping[str, npt.NDArray[np.float32]]) -> Vector:
        if tuple(arrays) != self.names:
            raise DataError(f"weights have tensors {list(arrays)}, expected {list(self.names)}")
        parts = []
        for name, shape in zip(self.names, self.shapes, strict=True):
            a = np.asarray(arrays[name], dtype=np.float32)
            if a.shape != shape:
                raise DataError(f"tensor {name!r} has shape {a.shape}, expected {shape}")
            parts.append(a.reshape(-1))
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def unflatten(self, vector: Vector) -> NamedArrays:
        if vector.shape != (self.size,):
            raise DataError(f"flat weights have shape {vector.shape}, expected ({self.size},)")
        out: NamedArrays = {}
        offset = 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes, strict=True):
            out[name] = vector[offset : offset + size].reshape(shape).astype(np.float32)
            offset += size
        return out


def to_bytes(arrays: Mapping[str, npt.NDArray[np.float32]]) -> bytes:
    """Canonical safetensors bytes of named float32 arrays."""
    return save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()})


def from_bytes(data: bytes, layout: Layout | None = None) -> NamedArrays:
    """Parse safetensors bytes; with ``layout``, order and check against it."""
    try:
        raw = load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise DataError(f"not a valid safetensors payload: {exc}") from exc
    if any(a.dtype != np.float32 for a in raw.values()):
        raise DataError("weights must be float32")
    if layout is None:
        return dict(raw)
    if set(raw) != set(layout.names):
        raise DataError(f"weights have tensors {sorted(raw)}, expected {sorted(layout.names)}")
    ordered = {name: raw[name] for name in layout.names}
    layout.flatten(ordered)  # shape check
    return ordered


def _planes(bits: npt.NDArray[np.uint32]) -> bytes:
    return bits.astype("<u4").view(np.uint8).reshape(-1, 4).T.tobytes()


def _bits(vector: Vector) -> npt.NDArray[np.uint32]:
    if vector.dtype != np.float32 or vector.ndim != 1:
        raise DataError("a downlink delta is of a one-dimensional float32 vector")
    return vector.view(np.uint32)


def delta_bytes(new: Vector, old: Vector | None = None) -> bytes:
    """``new`` as a holder of ``old`` (None: of nothing) is sent it, compressed; exact."""
    bits = _bits(new)
    if old is not None:
        if old.shape != new.shape:
            raise DataError(f"a delta from {old.shape} weights to {new.shape} ones")
        bits = bits ^ _bits(old)
    return zlib.compress(_planes(bits), 6)


def apply_delta(payload: bytes, old: Vector | None, size: int) -> Vector:
    """The ``size`` weights ``delta_bytes(new, old)`` stands for, bit for bit."""
    inflate = zlib.decompressobj()
    try:  # never inflate past the model's size (a hostile payload)
        raw = inflate.decompress(payload, 4 * size + 1)
    except zlib.error as exc:
        raise DataError(f"not a downlink delta: {exc}") from None
    if len(raw) != 4 * size or not inflate.eof or inflate.unconsumed_tail:
        raise DataError(f"a downlink delta must inflate to {size} float32 weights")
    bits = np.frombuffer(raw, np.uint8).reshape(4, size).T.copy().view("<u4").reshape(-1)
    if old is not None:
        if old.shape != (size,):
            raise DataError(f"a delta to {size} weights from {old.shape} ones")
        bits = bits ^ _bits(old)
    out: Vector = bits.astype(np.uint32).view(np.float32)
    return out


def digest(data: bytes) -> str:
    """Content address of an artefact."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def save_file(path: Path, arrays: Mapping[str, npt.NDArray[np.float32]]) -> str:
    """Write safetensors to ``path`` atomically; returns the content digest."""
    data = to_bytes(arrays)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return digest(data)


def load_file(path: Path, layout: Layout | None = None) -> NamedArrays:
    return from_bytes(path.read_bytes(), layout)

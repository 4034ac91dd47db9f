"""Wire forms of the coordinator's control messages and of plaintext updates.

In the simulator, ``TrainRequest`` and ``AggregateRequest`` travel as Python
objects. Over a network every message is a signed envelope, so these need
bytes too: msgpack maps with a version, checked field by field on the way in
(a peer's bytes never reach a message constructor unchecked).

A train request does not carry the global model: it names it by SHA-256,
and the node fetches that artefact and checks its hash (``weights_resolver``)
— the model is published once per round instead of once per contributor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import msgpack
import numpy as np

from tessera.errors import RemoteProtocolError
from tessera.ids import JobId, NodeId
from tessera.protocol.kinds import Kind
from tessera.protocol.limits import MAX_MSGPACK_BYTES
from tessera.protocol.messages import (
    AggregateRequest,
    SecureAssignment,
    TrainingDeclined,
    TrainRequest,
    UpdateSubmission,
)
from tessera.weights import Vector

VERSION = 1


WeightsResolver = Callable[[str, int], Vector]
"""(sha256 hex, length) -> the global weights, hash-checked by the runtime."""


@dataclass(frozen=True, slots=True)
class TrainRequestWire:
    """A train request as it travels: the weights named by their digest."""

    request: TrainRequest
    weights_sha256: str


def _pack(kind: Kind, body: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb({"v": VERSION, "k": int(kind), **body}, use_bin_type=True)
    return data


def _unpack(data: bytes, kind: Kind) -> dict[str, Any]:
    if len(data) > MAX_MSGPACK_BYTES:
        raise RemoteProtocolError(f"{kind.name.lower()} message is too large")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=MAX_MSGPACK_BYTES)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        raise RemoteProtocolError(f"{kind.name.lower()} message is not valid msgpack") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError(f"{kind.name.lower()} message must be a map")
    if obj.get("v") != VERSION:
        raise RemoteProtocolError(f"unsupported {kind.name.lower()} message version {obj.get('v')}")
    if obj.get("k") != int(kind):
        raise RemoteProtocolError(f"message body is not a {kind.name.lower()} message")
    return obj


def _get(obj: Mapping[str, Any], key: str, typ: type | tuple[type, ...], what: str) -> Any:
    value = obj.get(key)
    if isinstance(value, bool) and bool not in (typ if isinstance(typ, tuple) else (typ,)):
        raise RemoteProtocolError(f"{what}.{key} has the wrong type")
    if not isinstance(value, typ):
        raise RemoteProtocolError(f"{what}.{key} is missing or has the wrong type")
    return value


def _count(obj: Mapping[str, Any], key: str, what: str) -> int:
    value: int = _get(obj, key, int, what)
    if value < 0:
        raise RemoteProtocolError(f"{what}.{key} must be >= 0")
    return value


def _real(obj: Mapping[str, Any], key: str, what: str) -> float:
    value = float(_get(obj, key, (int, float), what))
    if not math.isfinite(value):
        raise RemoteProtocolError(f"{what}.{key} must be finite")
    return value


def _strs(obj: Mapping[str, Any], key: str, what: str) -> tuple[str, ...]:
    value = _get(obj, key, list, what)
    if not all(isinstance(v, str) for v in value):
        raise RemoteProtocolError(f"{what}.{key} must be a list of strings")
    return tuple(value)


# -- train requests ------------------------------------------------------------------


def encode_train_request(request: TrainRequest, weights_sha256: str) -> bytes:
    secure = request.secure
    return _pack(
        Kind.TRAIN,
        {
            "job": request.job_id,
            "round": request.round,
            "weights": weights_sha256,
            "length": int(request.weights.shape[0]),
            "deadline": request.deadline,
            "config": {k: float(v) for k, v in request.config.items()},
            "statistics": request.statistics,
            # A buffered job's only (absent: synchronous rounds, the bytes as before).
            **({} if request.max_staleness is None else {"stale": request.max_staleness}),
            "secure": None
            if secure is None
            else {
                "group": secure.group,
                "aggregators": list(secure.aggregators),
                "backups": list(secure.backups),
                "full_position": secure.full_position,
                "ring_bits": secure.ring_bits,
                "frac_bits": secure.frac_bits,
                "ring_terms": secure.ring_terms,
                "clip": secure.clip,
                "max_weight": secure.max_weight,
                "loss_cap": secure.loss_cap,
                "tree_digest": secure.tree_digest,
                "weight": secure.weight,
                "quality": secure.quality,
                **({"steps": secure.steps} if secure.steps else {}),
            },
        },
    )


def peek_train_request(data: bytes) -> tuple[str, int]:
    """(weights sha256, length) of an encoded train request: what to fetch first."""
    obj = _unpack(data, Kind.TRAIN)
    digest = _get(obj, "weights", str, "train")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise RemoteProtocolError("train.weights must be a hex sha256")
    return digest, _count(obj, "length", "train")


def decode_train_request(data: bytes, resolve: WeightsResolver) -> TrainRequestWire:
    obj = _unpack(data, Kind.TRAIN)
    digest, length = peek_train_request(data)
    config = _get(obj, "config", dict, "train")
    if not all(isinstance(k, str) and isinstance(v, int | float) for k, v in config.items()):
        raise RemoteProtocolError("train.config must map names to numbers")
    secure = None
    raw = obj.get("secure")
    if raw is not None:
        if not isinstance(raw, dict):
            raise RemoteProtocolError("train.secure must be a map")
        secure = SecureAssignment(
            group=_get(raw, "group", str, "secure"),
            aggregators=tuple(NodeId(n) for n in _strs(raw, "aggregators", "secure")),
            backups=tuple(NodeId(n) for n in _strs(raw, "backups", "secure")),
            full_position=_count(raw, "full_position", "secure"),
            ring_bits=_count(raw, "ring_bits", "secure"),
            frac_bits=_count(raw, "frac_bits", "secure"),
            ring_terms=_count(raw, "ring_terms", "secure"),
            clip=_real(raw, "clip", "secure"),
            max_weight=_real(raw, "max_weight", "secure"),
            loss_cap=_real(raw, "loss_cap", "secure"),
            tree_digest=_get(raw, "tree_digest", str, "secure"),
            weight=_real(raw, "weight", "secure") if "weight" in raw else 1.0,
            quality=_count(raw, "quality", "secure") if "quality" in raw else 0,
            steps=_real(raw, "steps", "secure") if "steps" in raw else 0.0,
        )
    statistics = obj.get("statistics", False)  # absent in requests written before it
    if not isinstance(statistics, bool):
        raise RemoteProtocolError("train.statistics must be true or false")
    # A statistics request names no weights: nothing to fetch.
    weights = _NO_WEIGHTS if statistics and length == 0 else resolve(digest, length)
    if weights.shape != (length,):
        raise RemoteProtocolError("the named weights do not have the announced length")
    request = TrainRequest(
        job_id=JobId(_get(obj, "job", str, "train")),
        round=_count(obj, "round", "train"),
        weights=weights,
        deadline=_real(obj, "deadline", "train"),
        config=MappingProxyType({k: float(v) for k, v in config.items()}),
        secure=secure,
        statistics=statistics,
        max_staleness=_count(obj, "stale", "train") if "stale" in obj else None,
    )
    return TrainRequestWire(request, digest)


_NO_WEIGHTS = np.zeros(0, np.float32)
_NO_WEIGHTS.flags.writeable = False


# -- aggregator assignments -----------------------------------------------------------


def encode_aggregate_request(req: AggregateRequest) -> bytes:
    return _pack(
        Kind.ASSIGN,
        {
            "job": req.job_id,
            "round": req.round,
            "group": req.group,
            "position": req.position,
            "inputs": list(req.inputs),
            "senders": list(req.senders),
            "leaf": req.leaf,
            "parent": req.parent,
            "parent_group": req.parent_group,
            "report_at": req.report_at,
            "ring_bits": req.ring_bits,
            "frac_bits": req.frac_bits,
            "ring_terms": req.ring_terms,
            "length": req.length,
            "tree_digest": req.tree_digest,
            "audit": {c: [leaf, dict(inputs)] for c, (leaf, inputs) in req.audit.items()},
            "audit_fraction": req.audit_fraction,
            "send_evidence": req.send_evidence,
            "evidence_on_request": req.evidence_on_request,
            "absent": list(req.absent),
            "group_sums": req.group_sums,
        },
    )


def _audit(raw: object) -> Mapping[str, tuple[bool, Mapping[str, NodeId]]]:
    if not isinstance(raw, dict):
        raise RemoteProtocolError("assign.audit must be a map")
    out: dict[str, tuple[bool, Mapping[str, NodeId]]] = {}
    for child, entry in raw.items():
        ok = isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], bool)
        if not ok or not isinstance(entry[1], dict):
            raise RemoteProtocolError("assign.audit entries are [leaf, {input: sender}]")
        inputs = entry[1]
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in inputs.items()):
            raise RemoteProtocolError("assign.audit inputs map ids to node ids")
        out[child] = (entry[0], MappingProxyType({k: NodeId(v) for k, v in inputs.items()}))
    return MappingProxyType(out)


def _fraction(raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw <= 1:
        raise RemoteProtocolError("assign.audit_fraction must be a number in (0, 1]")
    return float(raw)


def decode_aggregate_request(data: bytes) -> AggregateRequest:
    obj = _unpack(data, Kind.ASSIGN)
    w = "assign"
    inputs, senders = _strs(obj, "inputs", w), _strs(obj, "senders", w)
    if len(inputs) != len(senders):
        raise RemoteProtocolError("assign.inputs and assign.senders differ in length")
    return AggregateRequest(
        job_id=JobId(_get(obj, "job", str, w)),
        round=_count(obj, "round", w),
        group=_get(obj, "group", str, w),
        position=_count(obj, "position", w),
        inputs=inputs,
        senders=tuple(NodeId(s) for s in senders),
        leaf=_get(obj, "leaf", bool, w),
        parent=NodeId(_get(obj, "parent", str, w)),
        parent_group=_get(obj, "parent_group", str, w),
        report_at=_real(obj, "report_at", w),
        ring_bits=_count(obj, "ring_bits", w),
        frac_bits=_count(obj, "frac_bits", w),
        ring_terms=_count(obj, "ring_terms", w),
        length=_count(obj, "length", w),
        tree_digest=_get(obj, "tree_digest", str, w),
        audit=_audit(obj.get("audit", {})),
        audit_fraction=_fraction(obj.get("audit_fraction", 1.0)),
        send_evidence=_get(obj, "send_evidence", bool, w),
        evidence_on_request=_get(obj, "evidence_on_request", bool, w),
        absent=_strs(obj, "absent", w) if "absent" in obj else (),
        group_sums=_count(obj, "group_sums", w) if "group_sums" in obj else 0,
    )


# -- plaintext updates and declines ----------------------------------------------------


def encode_update(update: UpdateSubmission) -> bytes:
    delta = update.delta.astype("<f4", copy=False)
    return _pack(
        Kind.UPDATE,
        {
            "job": update.job_id,
            "round": update.round,
            "delta": delta.tobytes(),
            "samples": update.num_samples,
            "loss": update.loss,
            **({"steps": update.steps} if update.steps else {}),
            **({"stale": update.staleness} if update.staleness else {}),
        },
    )


def decode_update(data: bytes) -> UpdateSubmission:
    obj = _unpack(data, Kind.UPDATE)
    raw = _get(obj, "delta", bytes, "update")
    if len(raw) % 4:
        raise RemoteProtocolError("update.delta is not a whole number of float32 values")
    loss = float(_get(obj, "loss", (int, float), "update"))
    return UpdateSubmission(
        job_id=JobId(_get(obj, "job", str, "update")),
        round=_count(obj, "round", "update"),
        delta=np.frombuffer(raw, dtype="<f4").astype(np.float32),
        num_samples=_count(obj, "samples", "update"),
        loss=loss,
        steps=_count(obj, "steps", "update") if "steps" in obj else 0,
        staleness=_count(obj, "stale", "update") if "stale" in obj else 0,
    )


def encode_decline(msg: TrainingDeclined) -> bytes:
    return _pack(Kind.DECLINE, {"job": msg.job_id, "round": msg.round, "reason": msg.reason[:500]})


def decode_decline(data: bytes) -> TrainingDeclined:
    obj = _unpack(data, Kind.DECLINE)
    return TrainingDeclined(
        job_id=JobId(_get(obj, "job", str, "decline")),
        round=_count(obj, "round", "decline"),
        reason=_get(obj, "reason", str, "decline")[:500],
    )

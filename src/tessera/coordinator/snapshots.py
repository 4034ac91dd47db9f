"""A running job's snapshot on disk: the coordinator machine, its host's timers, the mailbox cursor.

One safetensors blob: the arrays (weights, the strategy's state) as tensors,
and the rest as canonical JSON in a ``meta`` byte tensor, so nothing is
unpickled and every field is checked when read. The snapshot is written in
the same transaction as the event it follows (``Store.commit_step``), so it
never runs ahead of the log.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from tessera.errors import TesseraError
from tessera.ids import NodeId
from tessera.protocol.coordinator import CoordinatorSnapshot
from tessera.protocol.timers import Timer, parse_timer, timer_text

FORMAT = "tessera-coordinator-snapshot/1"
_STRATEGY = "strategy."


class CorruptSnapshot(TesseraError):
    """A stored snapshot cannot be read back; the driver must not guess."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DriverState:
    machine: CoordinatorSnapshot
    timers: Sequence[tuple[Timer, float]]  # pending timers, in the order they fire
    cursor: int  # the highest mailbox id looked at


def encode_snapshot(state: DriverState) -> bytes:
    snap = state.machine
    meta = {
        "format": FORMAT,
        "round": snap.round,
        "opened_at": snap.opened_at,
        "withdrawn": list(snap.withdrawn),
        "timers": [[timer_text(timer), at] for timer, at in state.timers],
        "cursor": state.cursor,
        "spent": list(snap.spent),  # a private job's ledger
        # The contribution policy's verdicts: node -> [first round without it, why].
        "excluded": {node: [first, why] for node, (first, why) in snap.excluded.items()},
        "ratings": dict(snap.ratings),
        # How often each node was asked and heard in applied rounds (availability).
        "asked": dict(snap.asked),
        "heard": dict(snap.heard),
        "weight_total": snap.weight_total,
        "weight_rounds": snap.weight_rounds,
    }
    tensors = {"weights": snap.weights, "meta": _json_bytes(meta)}
    tensors |= {_STRATEGY + name: array for name, array in snap.strategy.items()}
    return save(tensors)


def decode_snapshot(data: bytes) -> DriverState:
    try:
        tensors = load(data)
        meta = json.loads(tensors.pop("meta").tobytes())
        if meta.get("format") != FORMAT:
            raise CorruptSnapshot(f"unknown snapshot format {meta.get('format')!r}")
        weights = tensors.pop("weights")
        strategy = {k.removeprefix(_STRATEGY): v for k, v in tensors.items()}
        if len(strategy) != len(tensors) or weights.dtype != np.float32 or weights.ndim != 1:
            raise CorruptSnapshot("a snapshot holds weights (float32), meta and strategy.* only")
        machine = CoordinatorSnapshot(
            round=int(meta["round"]),
            opened_at=float(meta["opened_at"]),
            weights=weights,
            strategy=strategy,
            withdrawn=tuple(NodeId(str(n)) for n in meta["withdrawn"]),
            spent=tuple(float(v) for v in meta.get("spent", ())),
            excluded={
                NodeId(str(n)): (int(first), str(why))
                for n, (first, why) in meta.get("excluded", {}).items()
            },
            ratings={NodeId(str(n)): float(v) for n, v in meta.get("ratings", {}).items()},
            asked={NodeId(str(n)): int(v) for n, v in meta.get("asked", {}).items()},
            heard={NodeId(str(n)): int(v) for n, v in meta.get("heard", {}).items()},
            weight_total=float(meta.get("weight_total", 0.0)),
            weight_rounds=int(meta.get("weight_rounds", 0)),
        )
        timers = [(parse_timer(str(name)), float(at)) for name, at in meta["timers"]]
        return DriverState(machine=machine, timers=timers, cursor=int(meta["cursor"]))
    except (SafetensorError, KeyError, TypeError, ValueError) as exc:
        raise CorruptSnapshot(f"the stored snapshot cannot be read: {exc}") from exc


def _json_bytes(value: object) -> np.ndarray:
    text = json.dumps(value, sort_keys=True, allow_nan=False)
    return np.frombuffer(text.encode(), dtype=np.uint8).copy()

"""The local training recipe every contributor of a job runs.

The optimizers follow ``torch.optim.SGD`` (momentum without dampening or
Nesterov; ``weight_decay`` added to the gradient) and ``torch.optim.Adam``
(betas 0.9/0.999, eps 1e-8, L2 ``weight_decay`` added to the gradient, not
AdamW). Optimizer state starts fresh for every node in every round.

``to_json``/``from_json`` carry a recipe (and, via ``parse_json_object``, a
``ModelSpec``) across process boundaries as canonical JSON: the sandbox worker
and the job documents take no pickle and no code.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np

from tessera.errors import ConfigError

LossName = Literal["cross_entropy", "mse"]
OptimizerName = Literal["sgd", "adam"]
LOSSES: tuple[LossName, ...] = ("cross_entropy", "mse")
OPTIMIZERS: tuple[OptimizerName, ...] = ("sgd", "adam")

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
MAX_LOCAL_EPOCHS = 1000
MAX_BATCH_SIZE = 1 << 20
#: A spec or recipe in JSON is a few hundred bytes; refuse anything far larger unread.
MAX_JSON_BYTES = 1 << 16


def as_real(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ConfigError(field, f"must be a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ConfigError(field, f"must be finite, got {out}")
    return out


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def parse_json_object(
    text: str | bytes, section: str, required: tuple[str, ...], optional: tuple[str, ...]
) -> dict[str, Any]:
    """One JSON object with exactly the given keys, else ``ConfigError`` naming the field.

    Strict on purpose: duplicate keys, unknown keys, NaN/Infinity and
    oversized documents are refused rather than guessed at. Values are left to
    the dataclass that receives them, which checks each one.
    """
    if not isinstance(text, str | bytes):
        raise ConfigError(section, f"JSON must be str or bytes, got {type(text).__name__}")
    if len(text) > MAX_JSON_BYTES:
        raise ConfigError(section, f"JSON of {len(text)} bytes exceeds {MAX_JSON_BYTES}")

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ConfigError(f"{section}.{key}", "appears more than once")
            out[key] = value
        return out

    try:
        raw = json.loads(text, object_pairs_hook=unique, parse_constant=_refuse_constant)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN, huge integers
        raise ConfigError(section, f"not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(section, f"must be a JSON object, got {type(raw).__name__}")
    for key in raw:
        if key not in required and key not in optional:
            raise ConfigError(f"{section}.{key}", "unknown field (check its spelling)")
    for key in required:
        if key not in raw:
            raise ConfigError(f"{section}.{key}", "is required")
    return raw


def _count(field: str, value: object, upper: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(field, f"must be an integer, got {value!r}")
    if not 1 <= int(value) <= upper:
        raise ConfigError(field, f"must lie in [1, {upper}], got {value}")
    return int(value)


@dataclass(frozen=True)
class Recipe:
    """Loss, optimizer and local schedule; ``prox_mu`` adds FedProx's
    ``mu/2 * ||w - w_global||^2``; ``clip_norm`` bounds the L2 norm of each
    node's update ``w_local - w_global``."""

    loss: LossName
    optimizer: OptimizerName = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    local_epochs: int = 1
    batch_size: int = 32
    prox_mu: float = 0.0
    clip_norm: float | None = None

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError("recipe.loss", f"must be one of {list(LOSSES)}, got {self.loss!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                "recipe.optimizer", f"must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        lr = as_real("recipe.lr", self.lr)
        if lr <= 0:
            raise ConfigError("recipe.lr", f"must be positive, got {lr}")
        momentum = as_real("recipe.momentum", self.momentum)
        if not 0 <= momentum < 1:
            raise ConfigError("recipe.momentum", f"must lie in [0, 1), got {momentum}")
        if momentum and self.optimizer != "sgd":
            raise ConfigError("recipe.momentum", "only sgd takes a momentum")
        weight_decay = as_real("recipe.weight_decay", self.weight_decay)
        if weight_decay < 0:
            raise ConfigError("recipe.weight_decay", f"must be >= 0, got {weight_decay}")
        prox_mu = as_real("recipe.prox_mu", self.prox_mu)
        if prox_mu < 0:
            raise ConfigError("recipe.prox_mu", f"must be >= 0, got {prox_mu}")
        clip = self.clip_norm
        if clip is not None:
            clip = as_real("recipe.clip_norm", clip)
            if clip <= 0:
                raise ConfigError("recipe.clip_norm", f"must be positive or None, got {clip}")
        object.__setattr__(self, "lr", lr)
        object.__setattr__(self, "momentum", momentum)
        object.__setattr__(self, "weight_decay", weight_decay)
        object.__setattr__(self, "prox_mu", prox_mu)
        object.__setattr__(self, "clip_norm", clip)
        object.__setattr__(
            self, "local_epochs", _count("recipe.local_epochs", self.local_epochs, MAX_LOCAL_EPOCHS)
        )
        object.__setattr__(
            self, "batch_size", _count("recipe.batch_size", self.batch_size, MAX_BATCH_SIZE)
        )

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, every field): equal recipes give equal bytes."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Recipe:
        """Parse ``to_json`` output; any problem is a ``ConfigError`` naming the field."""
        names = tuple(f.name for f in fields(cls))
        raw = parse_json_object(text, "recipe", required=("loss",), optional=names)
        return cls(**raw)

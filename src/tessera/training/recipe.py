"""The local training recipe every contributor of a job runs.

The optimizers follow ``torch.optim.SGD`` (momentum without dampening or
Nesterov; ``weight_decay`` added to the gradient) and ``torch.optim.Adam``
(betas 0.9/0.999, eps 1e-8, L2 ``weight_decay`` added to the gradient, not
AdamW). Optimizer state starts fresh for every node in every round.

The learning rate follows a schedule over the job's ROUNDS, never over local
steps: ``Recipe.lr_at(round)`` is a pure function of the recipe and the
0-based round number every node is told, so every node of a round trains
with the same rate, in the simulator and in a deployment alike.

- ``constant`` (the default): ``lr`` in every round.
- ``cosine``: ``lr * (1 - (1 - f) * (1 - cos(pi * r / (R - 1))) / 2)`` for
  round ``r`` of ``R = lr_rounds`` (the job's rounds), ``f = lr_min_fraction``:
  ``lr`` in round 0, ``f * lr`` in the last round and after it (a job of
  one round trains at ``lr``).
- ``step``: ``lr * lr_gamma ** (r // lr_step_every)``.

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
ScheduleName = Literal["constant", "cosine", "step"]
LOSSES: tuple[LossName, ...] = ("cross_entropy", "mse")
OPTIMIZERS: tuple[OptimizerName, ...] = ("sgd", "adam")
SCHEDULES: tuple[ScheduleName, ...] = ("constant", "cosine", "step")
#: Schedule parameters and their defaults; a recipe writes them only when they differ,
#: and an older document without them means a constant rate.
SCHEDULE_DEFAULTS: dict[str, object] = {
    "lr_schedule": "constant",
    "lr_min_fraction": 0.0,
    "lr_step_every": 10,
    "lr_gamma": 0.5,
    "lr_rounds": None,
}
MAX_ROUNDS = 1 << 20

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
    node's update ``w_local - w_global``; ``lr_schedule`` and its parameters
    set the learning rate of each round (module docstring, ``lr_at``)."""

    loss: LossName
    optimizer: OptimizerName = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    local_epochs: int = 1
    batch_size: int = 32
    prox_mu: float = 0.0
    clip_norm: float | None = None
    lr_schedule: ScheduleName = "constant"
    lr_min_fraction: float = 0.0
    lr_step_every: int = 10
    lr_gamma: float = 0.5
    lr_rounds: int | None = None

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
        self._check_schedule()

    def _check_schedule(self) -> None:
        if self.lr_schedule not in SCHEDULES:
            raise ConfigError(
                "recipe.lr_schedule",
                f"must be one of {list(SCHEDULES)}, got {self.lr_schedule!r}",
            )
        fraction = as_real("recipe.lr_min_fraction", self.lr_min_fraction)
        if not 0 <= fraction <= 1:
            raise ConfigError("recipe.lr_min_fraction", f"must lie in [0, 1], got {fraction}")
        gamma = as_real("recipe.lr_gamma", self.lr_gamma)
        if not 0 < gamma <= 1:
            raise ConfigError("recipe.lr_gamma", f"must lie in (0, 1], got {gamma}")
        every = _count("recipe.lr_step_every", self.lr_step_every, MAX_ROUNDS)
        rounds = self.lr_rounds
        if rounds is not None:
            rounds = _count("recipe.lr_rounds", rounds, MAX_ROUNDS)
        object.__setattr__(self, "lr_min_fraction", fraction)
        object.__setattr__(self, "lr_gamma", gamma)
        object.__setattr__(self, "lr_step_every", every)
        object.__setattr__(self, "lr_rounds", rounds)
        # A parameter of another schedule would be silently ignored: refuse it.
        uses = {
            "constant": (),
            "cosine": ("lr_min_fraction", "lr_rounds"),
            "step": ("lr_step_every", "lr_gamma"),
        }[self.lr_schedule]
        for name, default in SCHEDULE_DEFAULTS.items():
            if name != "lr_schedule" and name not in uses and getattr(self, name) != default:
                raise ConfigError(
                    f"recipe.{name}", f"the {self.lr_schedule} schedule does not use it"
                )
        if self.lr_schedule == "cosine" and rounds is None:
            raise ConfigError(
                "recipe.lr_rounds", "the cosine schedule needs the job's number of rounds"
            )

    def lr_at(self, round: int) -> float:
        """The learning rate of 0-based ``round``: a pure function of the recipe."""
        if isinstance(round, bool) or not isinstance(round, int | np.integer) or round < 0:
            raise ValueError(f"round must be a non-negative integer, got {round!r}")
        r = int(round)
        if self.lr_schedule == "cosine":
            assert self.lr_rounds is not None  # checked in __post_init__
            last = self.lr_rounds - 1
            t = min(r, last) / last if last else 0.0
            drop = (1.0 - self.lr_min_fraction) * (1.0 - math.cos(math.pi * t)) / 2
            return self.lr * (1.0 - drop)
        if self.lr_schedule == "step":
            return self.lr * self.lr_gamma ** (r // self.lr_step_every)
        return self.lr

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): equal recipes give equal bytes.

        Schedule parameters are written only when they differ from their
        defaults, so a recipe with a constant rate has the bytes it had before
        schedules existed.
        """
        doc = {
            key: value
            for key, value in asdict(self).items()
            if key not in SCHEDULE_DEFAULTS or value != SCHEDULE_DEFAULTS[key]
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Recipe:
        """Parse ``to_json`` output; any problem is a ``ConfigError`` naming the field."""
        names = tuple(f.name for f in fields(cls))
        raw = parse_json_object(text, "recipe", required=("loss",), optional=names)
        return cls(**raw)

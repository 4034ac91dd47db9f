"""Local training: model specs, recipes, batched many-node training, evaluation.

Specs and recipes load without torch (a node agent reads them); the trainer
and evaluation import torch on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tessera.training.evaluate import evaluate, metric_name, predict, r2_score
from tessera.training.recipe import Recipe
from tessera.training.spec import (
    ModelSpec,
    build_module,
    init_weights,
    layout,
    load_weights,
    module_weights,
)

if TYPE_CHECKING:
    from tessera.training.batched import BatchedTrainer, TrainResult, clip_deltas
    from tessera.training.shuffle import epoch_permutation

_LAZY = {
    "BatchedTrainer": "tessera.training.batched",
    "TrainResult": "tessera.training.batched",
    "clip_deltas": "tessera.training.batched",
    "epoch_permutation": "tessera.training.shuffle",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tessera.training' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "BatchedTrainer",
    "ModelSpec",
    "Recipe",
    "TrainResult",
    "build_module",
    "clip_deltas",
    "epoch_permutation",
    "evaluate",
    "init_weights",
    "layout",
    "load_weights",
    "metric_name",
    "module_weights",
    "predict",
    "r2_score",
]

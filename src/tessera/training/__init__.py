"""Local training: model specs, recipes, batched many-node training, evaluation."""

from tessera.training.batched import BatchedTrainer, TrainResult, clip_deltas
from tessera.training.evaluate import evaluate, metric_name, predict, r2_score
from tessera.training.recipe import Recipe
from tessera.training.shuffle import epoch_permutation
from tessera.training.spec import (
    ModelSpec,
    build_module,
    init_weights,
    layout,
    load_weights,
    module_weights,
)

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

"""Plain one-node training with torch.optim: the yardstick for the batched trainer.

Exposed to the tests as the ``train_one`` fixture.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tessera.training import ModelSpec, Recipe, build_module, clip_deltas, epoch_permutation
from tessera.training.shuffle import dropout_keep
from tessera.weights import Vector


def reference_train_one(
    spec: ModelSpec,
    *,
    recipe: Recipe,
    x: np.ndarray,
    y: np.ndarray,
    global_weights: Vector,
    node: int,
    seed: int,
    round: int = 0,
) -> tuple[np.ndarray, float]:
    """Delta and last-epoch mean loss of ``node`` trained alone on (x, y).

    The learning rate is ``recipe.lr_at(round)``; dropout multiplies each
    hidden dense activation module's output by the masks of ``dropout_keep``.
    """
    module = build_module(spec, global_weights)
    params = list(module.parameters())
    lr = recipe.lr_at(round)
    if recipe.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
    else:
        opt = torch.optim.Adam(params, lr=lr, weight_decay=recipe.weight_decay)
    where = {"epoch": 0, "lo": 0, "n": 0}  # the minibatch the hooks are in

    def dropout_hook(layer: int) -> Callable[..., torch.Tensor]:
        def hook(_module: torch.nn.Module, _args: object, out: torch.Tensor) -> torch.Tensor:
            positions = np.arange(where["lo"], where["lo"] + where["n"])
            keep = dropout_keep(
                seed,
                [node],
                where["epoch"],
                layer=layer,
                positions=positions,
                width=out.shape[1],
                p=spec.dropout,
            )[0]
            return out * torch.from_numpy(keep.astype(np.float32) / np.float32(1 - spec.dropout))

        return hook

    if spec.dropout:
        for layer in range(len(spec.hidden)):
            module.get_submodule(f"act{layer}").register_forward_hook(dropout_hook(layer))
    start = [p.detach().clone() for p in params]
    xt = torch.from_numpy(np.asarray(x, np.float32))
    if recipe.loss == "cross_entropy":
        yt = torch.from_numpy(np.asarray(y, np.int64))
    else:
        yt = torch.from_numpy(np.asarray(y, np.float32)).reshape(len(y), -1)
    n = len(x)
    total = 0.0
    for epoch in range(recipe.local_epochs):
        order = torch.from_numpy(epoch_permutation(seed, node, epoch, n))
        total = 0.0
        for lo in range(0, n, recipe.batch_size):
            idx = order[lo : lo + recipe.batch_size]
            where.update(epoch=epoch, lo=lo, n=len(idx))
            out = module(xt[idx])
            if recipe.loss == "cross_entropy":
                loss = F.cross_entropy(out, yt[idx])
            else:
                loss = F.mse_loss(out, yt[idx])
            total += float(loss.detach()) * len(idx)
            if recipe.prox_mu:
                prox = torch.stack(
                    [((p - s) ** 2).sum() for p, s in zip(params, start, strict=True)]
                ).sum()
                loss = loss + recipe.prox_mu / 2 * prox
            opt.zero_grad()
            torch.autograd.backward([loss])
            opt.step()
    flat = torch.cat([p.detach().reshape(-1) for p in params]) - torch.from_numpy(global_weights)
    delta = clip_deltas(flat.unsqueeze(0), recipe.clip_norm)[0]
    return delta.numpy(), total / n


TrainOne = Callable[..., tuple[np.ndarray, float]]


@pytest.fixture
def train_one() -> TrainOne:
    return reference_train_one

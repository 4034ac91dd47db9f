"""Micro-benchmark of tessera.training.BatchedTrainer (single thread).

Prints seconds per ``train`` call (best of several) for: 500 nodes of ~13
records (3 features, 6 classes; the size of Chem97's schools), 31,022 nodes
of one record each (one node per student), and one node holding all 31,022
records (the centralized baseline), for linear and mlp(32) models, with the
dense (bmm) and vmap engines; a plain one-node-at-a-time torch.optim loop
for scale; and a cnn on 8x8 digits-sized images.

Run: .venv/bin/python benchmarks/batched_training.py
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from tessera.training import (
    BatchedTrainer,
    ModelSpec,
    Recipe,
    build_module,
    epoch_permutation,
    init_weights,
    layout,
    load_weights,
)


def _best(fn: object, repeats: int) -> float:
    assert callable(fn)
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _case(spec: ModelSpec, sizes: np.ndarray, engine: str, repeats: int) -> float:
    rng = np.random.default_rng(0)
    n = int(sizes.sum())
    x = rng.normal(size=(n, *spec.input_shape)).astype(np.float32)
    y = rng.integers(0, spec.n_outputs, n)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    recipe = Recipe("cross_entropy", lr=0.05, local_epochs=1, batch_size=32)
    trainer = BatchedTrainer(spec, recipe, x, y, offsets, engine=engine)  # type: ignore[arg-type]
    weights = layout(spec).flatten(init_weights(spec, 0))
    nodes = np.arange(len(sizes))
    return _best(lambda: trainer.train(weights, nodes, seed=1), repeats)


def _plain_torch(spec: ModelSpec, sizes: np.ndarray) -> float:
    """The naive way, for scale: one torch.optim loop per node, nodes one after another."""
    rng = np.random.default_rng(0)
    n = int(sizes.sum())
    x = torch.from_numpy(rng.normal(size=(n, *spec.input_shape)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, spec.n_outputs, n))
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    weights = layout(spec).flatten(init_weights(spec, 0))
    module = build_module(spec, weights)

    def run() -> None:
        for node in range(len(sizes)):
            load_weights(module, spec, weights)
            opt = torch.optim.SGD(module.parameters(), lr=0.05)
            lo, hi = int(offsets[node]), int(offsets[node + 1])
            order = torch.from_numpy(epoch_permutation(1, node, 0, hi - lo)) + lo
            for start in range(0, hi - lo, 32):
                idx = order[start : start + 32]
                loss = F.cross_entropy(module(x[idx]), y[idx])
                opt.zero_grad()
                torch.autograd.backward([loss])
                opt.step()

    return _best(run, 1)


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(42)
    small = np.maximum(rng.poisson(13, 500), 1)
    cases = {
        f"500 nodes, {int(small.sum())} records": (small, 5),
        "31,022 nodes x 1 record": (np.ones(31_022, np.int64), 3),
        "1 node x 31,022 records": (np.array([31_022]), 2),
    }
    models = {
        "linear": ModelSpec("linear", (3,), 6),
        "mlp(32)": ModelSpec("mlp", (3,), 6, hidden=(32,)),
    }
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, 1 epoch, batch 32")
    for label, (sizes, repeats) in cases.items():
        for name, spec in models.items():
            for engine in ("dense", "vmap"):
                seconds = _case(spec, sizes, engine, repeats)
                print(f"{label:32s} {name:8s} {engine:6s} {seconds:8.4f} s")
    for label, sizes in (("500 nodes", small), ("1 node x 31,022 records", np.array([31_022]))):
        seconds = _plain_torch(models["mlp(32)"], sizes)
        note = "(plain torch.optim, one node at a time)"
        print(f"{label:32s} {'mlp(32)':8s} {'loop':6s} {seconds:8.4f} s  {note}")
    cnn = ModelSpec("cnn", (1, 8, 8), 10)
    digits = np.maximum(rng.poisson(18, 100), 1)
    seconds = _case(cnn, digits, "vmap", 2)
    label = f"100 nodes, {int(digits.sum())} 8x8 images"
    print(f"{label:32s} {'cnn':8s} {'vmap':6s} {seconds:8.4f} s")


if __name__ == "__main__":
    main()

"""Gradient attributions of a torch model: integrated gradients and saliency.

Integrated gradients (Sundararajan et al., 2017) credit each input of a row
with ``(x - b) * mean over a in (0, 1] of d f(b + a (x - b)) / dx``, from a
baseline ``b`` (default: zeros, in the encoded space the training mean of
every standardised numeric feature and no category of a one-hot), along a
straight path of ``steps`` midpoints. The attributions of a row add up to
``f(x) - f(b)`` up to the integration error (``AttributionTable.gap``). ``f`` is
the output explained: a classifier's logit of the predicted class (or of the
``target`` class given), a regression's output. Per source feature, a row's
attribution is summed over its encoded columns; the table averages its
absolute value (how much the feature moves the output) and its signed value.

A saliency map is the mean over rows of ``|d f / d x|`` per pixel (channels
averaged): where a small change of the input would move the output most.

Both are Captum's (``IntegratedGradients`` with the midpoint rule,
``Saliency``); torch and Captum load only when these are called. What they say:
how this model's output responds to its inputs near these rows. What they do
not: that the feature matters in the world, or what the model does far from
the baseline's path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from tessera.explain.features import Feature

if TYPE_CHECKING:
    import torch
    from torch import nn

DEFAULT_STEPS = 32
BATCH = 4096  # path points per backward pass


@dataclass(frozen=True)
class Attribution:
    feature: str
    mean_abs: float  # mean over rows of |sum of its columns' attributions|
    mean: float  # the same, signed


@dataclass(frozen=True)
class AttributionTable:
    """Features by mean absolute attribution, largest first. ``gap``: the mean over
    rows of |sum of attributions - (f(x) - f(b))|, the integration error."""

    rows: tuple[Attribution, ...]
    gap: float

    @property
    def ranking(self) -> tuple[str, ...]:
        return tuple(r.feature for r in self.rows)

    def __getitem__(self, feature: str) -> Attribution:
        for row in self.rows:
            if row.feature == feature:
                return row
        raise KeyError(feature)


def _outputs(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each row's explained output: column ``target[i]`` of row ``i``."""
    return out.gather(1, target.view(-1, 1)).squeeze(1)


def _targets(module: nn.Module, x: torch.Tensor, target: np.ndarray | None) -> torch.Tensor:
    import torch

    if target is not None:
        return torch.as_tensor(np.asarray(target, dtype=np.int64).reshape(len(x)))
    with torch.no_grad():
        out = module(x)
    return out.argmax(1) if out.shape[1] > 1 else torch.zeros(len(x), dtype=torch.int64)


def integrated_gradients(
    module: nn.Module,
    x: np.ndarray,
    *,
    baseline: np.ndarray | None = None,
    steps: int = DEFAULT_STEPS,
    target: np.ndarray | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per row and input, the attribution (shape of ``x``), and per row
    ``f(x) - f(b)`` (what the row's attributions should add up to).

    ``baseline``: one input (the shape of a row) or one per row; default zeros.
    ``target``: the output index explained per row; default the predicted class
    (a single-output model: its output).
    """
    import torch
    from captum.attr import IntegratedGradients

    if steps < 1:
        raise ValueError("steps must be at least 1")
    module = module.eval()
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    base = (
        torch.zeros_like(xt)
        if baseline is None
        else torch.as_tensor(
            np.broadcast_to(np.asarray(baseline, dtype=np.float32), xt.shape).copy()
        )
    )
    tgt = _targets(module, xt, target)
    attr = IntegratedGradients(module).attribute(
        xt,
        baselines=base,
        target=tgt,
        n_steps=steps,
        method="riemann_middle",  # the midpoints (i + 1/2) / steps
        internal_batch_size=max(1, BATCH // steps) * steps,
    )
    with torch.no_grad():
        delta = _outputs(module(xt), tgt) - _outputs(module(base), tgt)
    return attr.double().detach().numpy(), delta.double().numpy()


def feature_attributions(
    module: nn.Module,
    x: np.ndarray,
    features: Sequence[Feature],
    *,
    baseline: np.ndarray | None = None,
    steps: int = DEFAULT_STEPS,
    target: np.ndarray | None = None,
) -> AttributionTable:
    """Integrated gradients per source feature, averaged over the rows of ``x``."""
    attr, delta = integrated_gradients(module, x, baseline=baseline, steps=steps, target=target)
    flat = attr.reshape(len(attr), -1)
    rows = []
    for f in features:
        per_row = flat[:, list(f.columns)].sum(1)
        rows.append(Attribution(f.name, float(np.abs(per_row).mean()), float(per_row.mean())))
    rows.sort(key=lambda r: -r.mean_abs)
    gap = float(np.abs(flat.sum(1) - delta).mean()) if len(flat) else 0.0
    return AttributionTable(tuple(rows), gap)


def saliency_map(
    module: nn.Module, x: np.ndarray, *, target: np.ndarray | None = None
) -> npt.NDArray[np.float64]:
    """Mean ``|d f / d x|`` per pixel over the rows of ``x`` (``(n, C, H, W)`` or
    ``(n, H, W)``), channels averaged: an ``(H, W)`` array."""
    import torch
    from captum.attr import Saliency

    module = module.eval()
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if xt.dim() not in (3, 4):
        raise ValueError(f"a saliency map takes images (n, C, H, W) or (n, H, W), not {x.shape}")
    tgt = _targets(module, xt, target)
    total = torch.zeros(xt.shape[-2:], dtype=torch.float64)
    saliency = Saliency(module)
    for lo in range(0, len(xt), BATCH):
        xb = xt[lo : lo + BATCH].clone().requires_grad_(True)
        grad = saliency.attribute(xb, target=tgt[lo : lo + BATCH], abs=True)
        g = grad.detach().double()
        total += (g.mean(1) if g.dim() == 4 else g).sum(0)
    return (total / max(len(xt), 1)).numpy()

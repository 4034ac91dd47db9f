"""Train thousands of virtual nodes at once, each exactly as if it trained alone.

Torch costs about 0.3 ms per optimizer step whatever the model size, so
looping over tiny nodes in Python would spend all its time in overhead.
Instead a chunk of ``C`` nodes trains together: their parameters and
optimizer state are rows of one ``(C, P)`` tensor in ``Layout`` flat order,
one minibatch step of every node is a handful of batched tensor operations,
and the optimizers (``torch.optim.SGD`` and ``Adam`` semantics, with per-node
step counts) are written on those stacked rows.

Nodes of a chunk are sorted by size, largest first, so at step ``s`` the nodes
that still have a minibatch are a prefix of the chunk: the step runs on that
prefix only, and a node without data is frozen exactly (no update, no state
change) rather than masked. Only each node's last, short minibatch is padded;
padded rows carry zero weight and the loss is a mean over real rows. Nodes
are grouped into sub-chunks of similar ``min(size, batch_size)`` to keep that
padding small, and sized so that parameters, optimizer state and activations
of one sub-chunk stay within ``max_chunk_elements`` floats.

Gradients come from one of two engines: ``"dense"`` (hand-written forward
and backward with ``bmm``, for ``linear``/``mlp``; the fastest here) or
``"vmap"`` (``torch.func.vmap(grad(forward))`` over the node dimension, with a
functional forward that mirrors ``spec.py``'s module; any model, used for
``cnn``). Shuffles and dropout masks depend only on ``(seed, shuffle id,
epoch)`` and a record's position in the node's epoch order (see
``shuffle.py``), so a node's result does not depend on which nodes share its
chunk. Dropout is inverted (kept units scale by ``1/(1-p)``) and exists only
here: evaluation runs the plain module. The learning rate of a call is
``recipe.lr_at(round)``: the round number is the only thing a schedule needs.
A node's shuffle id defaults to its index; a deployed node that trains alone
passes its simulator index as ``shuffle_ids=[i]`` and gets exactly the
simulator's node ``i`` update.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch.func import grad_and_value, vmap

from tessera.errors import ConfigError, DataError
from tessera.training.caps import Stops, as_caps
from tessera.training.recipe import ADAM_BETAS, ADAM_EPS, Recipe, as_real
from tessera.training.shuffle import chunk_permutation, dropout_keep
from tessera.training.spec import ModelSpec, conv_plan, layout
from tessera.weights import Vector

Engine = Literal["auto", "dense", "vmap"]
#: Default bound on the floats one sub-chunk holds at once (64 MiB).
DEFAULT_MAX_CHUNK_ELEMENTS = 1 << 24
#: Sub-chunks of similar-sized nodes are only split off when at least this big.
MIN_SPLIT_NODES = 64
#: Records one forward pass of the quality statistics holds (bounded activations).
_EVAL_ROWS = 4096
#: Clipped updates are scaled to at most this fraction of the bound, so float32
#: rounding can never push a norm above ``clip_norm``.
CLIP_SAFETY = 1.0 - 1e-6


class GradFn(Protocol):
    def __call__(
        self,
        params: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        wts: torch.Tensor,
        *,
        need: bool,
        masks: Sequence[torch.Tensor] = (),
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(params (a, P), x (a, w, ...), y (a, w[, k]), weights (a, w), need the loss?,
        dropout scales per hidden dense layer (a, w, units), empty without dropout)
        -> (gradient (a, P), mean minibatch loss (a,) or None)."""
        ...


@dataclass
class TrainResult:
    """Per requested node, in the caller's order.

    ``deltas``: float32 ``(k, P)``, local minus global weights in Layout flat
    order, clipped to ``recipe.clip_norm`` when set. ``num_samples``: int64
    ``(k,)`` records each node holds. ``loss``: float32 ``(k,)`` mean
    per-record training loss over the last local epoch, each record's loss
    taken when its minibatch was used (without the FedProx term); 0 for a node
    without records (which also gets a zero delta).

    The node's own data-quality statistics, with ``quality=True`` (else None):
    ``loss_before`` float32 ``(k,)``, the global model's mean loss on the
    node's records before it trains; ``norm`` float32 ``(k,)``, the update's
    L2 norm before clipping; ``labels`` int64 ``(k, C)``, a classifier's
    records per class (``C = 0`` for a regression).

    ``steps``: int64 ``(k,)``, the local optimizer steps each node took
    (``local_epochs`` times its minibatches per epoch, or its ``max_steps``
    cap if lower; 0 without records). A node stopped by its cap reports the
    loss of the minibatches of its last, partial epoch.
    """

    deltas: npt.NDArray[np.float32]
    num_samples: npt.NDArray[np.int64]
    loss: npt.NDArray[np.float32]
    steps: npt.NDArray[np.int64] | None = None
    loss_before: npt.NDArray[np.float32] | None = None
    norm: npt.NDArray[np.float32] | None = None
    labels: npt.NDArray[np.int64] | None = None


def clip_deltas(deltas: torch.Tensor, clip_norm: float | None) -> torch.Tensor:
    """Scale each row of ``deltas`` in place to an L2 norm of at most ``clip_norm``."""
    if clip_norm is None or deltas.numel() == 0:
        return deltas
    norms = torch.linalg.vector_norm(deltas.to(torch.float64), dim=1)
    bound = clip_norm * CLIP_SAFETY
    scale = torch.where(norms > bound, bound / norms.clamp_min(1e-300), 1.0)
    deltas.mul_(scale.to(deltas.dtype).unsqueeze(1))
    return deltas


def _views(flat: torch.Tensor, shapes: tuple[tuple[int, ...], ...]) -> list[torch.Tensor]:
    """Per-tensor views ``(a, *shape)`` of stacked flat rows ``(a, P)``."""
    a = flat.shape[0]
    out, offset = [], 0
    for shape in shapes:
        size = math.prod(shape)
        out.append(flat[:, offset : offset + size].view(a, *shape))
        offset += size
    return out


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "gelu": F.gelu,  # exact (erf), as nn.GELU()
}


def _activation_backward(
    name: str, grad: torch.Tensor, pre: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """The gradient at an activation's input, by the kernels autograd itself uses."""
    result: torch.Tensor
    if name == "relu":  # grad where the output is positive, else 0 (one fused kernel)
        result = torch.ops.aten.threshold_backward(grad, out, 0)
    elif name == "tanh":
        result = torch.ops.aten.tanh_backward(grad, out)
    else:
        result = torch.ops.aten.gelu_backward(grad, pre)
    return result


class _DenseGrad:
    """Hand-written batched forward/backward of an affine(+activation, +dropout) stack."""

    def __init__(self, spec: ModelSpec, loss: str) -> None:
        self._shapes = layout(spec).shapes
        self._n_layers = len(self._shapes) // 2
        self._ce = loss == "cross_entropy"
        self._k = spec.n_outputs
        self._act_name = spec.activation
        self._act = _ACTIVATIONS[spec.activation]

    def __call__(
        self,
        params: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        wts: torch.Tensor,
        *,
        need: bool,
        masks: Sequence[torch.Tensor] = (),
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        views = _views(params, self._shapes)
        weights, biases = views[0::2], views[1::2]
        inputs = [x]  # each layer's input (after activation and dropout)
        pres: list[torch.Tensor] = []  # hidden pre-activations
        outs: list[torch.Tensor] = []  # hidden activations before dropout
        h = x
        for i in range(self._n_layers):
            h = torch.baddbmm(biases[i].unsqueeze(1), h, weights[i].transpose(1, 2))
            if i < self._n_layers - 1:
                pres.append(h)
                h = self._act(h)
                outs.append(h)
                if masks:
                    h = h * masks[i]
                inputs.append(h)
        dout, loss = self._loss_grad(h, y, wts, need)
        grads: list[torch.Tensor] = []
        for i in reversed(range(self._n_layers)):
            grads.append(dout.sum(1))
            grads.append(torch.bmm(dout.transpose(1, 2), inputs[i]))
            if i:
                dh = torch.bmm(dout, weights[i])
                if masks:
                    dh = dh * masks[i - 1]
                dout = _activation_backward(self._act_name, dh, pres[i - 1], outs[i - 1])
        a = params.shape[0]
        return torch.cat([g.reshape(a, -1) for g in reversed(grads)], dim=1), loss

    def _loss_grad(
        self, out: torch.Tensor, y: torch.Tensor, wts: torch.Tensor, need: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        w3 = wts.unsqueeze(-1)
        if self._ce:
            grad = torch.softmax(out, dim=-1).mul_(w3)
            target = y.unsqueeze(-1)
            grad.scatter_add_(-1, target, -w3)
            if not need:
                return grad, None
            per = torch.log_softmax(out, dim=-1).gather(-1, target).squeeze(-1)
            return grad, (per * wts).sum(1).neg_()
        diff = out - y
        grad = diff * (w3 * (2.0 / self._k))
        if not need:
            return grad, None
        return grad, (diff.square().mean(-1) * wts).sum(1)


def forward(
    spec: ModelSpec,
    params: Sequence[torch.Tensor],
    x: torch.Tensor,
    masks: Sequence[torch.Tensor] = (),
) -> torch.Tensor:
    """The spec's module as a function of its parameters (``layout`` order).

    Without ``masks`` it computes exactly what ``build_module(spec)`` does;
    ``masks[i]`` (records x units) scales hidden dense layer ``i``'s
    activations (dropout).
    """
    act = _ACTIVATIONS[spec.activation]
    h, i = x, 0
    if spec.kind == "cnn":
        for _c_in, _c_out, pool in conv_plan(spec)[0]:
            h = act(F.conv2d(h, params[i], params[i + 1], padding=1))
            if pool:
                h = F.max_pool2d(h, 2)
            i += 2
    h = h.flatten(1)
    for layer in range(len(spec.hidden)):
        h = act(F.linear(h, params[i], params[i + 1]))
        if masks:
            h = h * masks[layer]
        i += 2
    return F.linear(h, params[i], params[i + 1])


class _VmapGrad:
    """``vmap(grad(forward))`` over the node dimension."""

    def __init__(self, spec: ModelSpec, loss: str) -> None:
        self._shapes = layout(spec).shapes
        ce = loss == "cross_entropy"

        def node_loss(
            params: tuple[torch.Tensor, ...],
            x: torch.Tensor,
            y: torch.Tensor,
            wts: torch.Tensor,
            masks: tuple[torch.Tensor, ...],
        ) -> torch.Tensor:
            out = forward(spec, params, x, masks)
            per = F.cross_entropy(out, y, reduction="none") if ce else (out - y).square().mean(-1)
            return (per * wts).sum()

        self._fn = vmap(grad_and_value(node_loss))

    def __call__(
        self,
        params: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        wts: torch.Tensor,
        *,
        need: bool,
        masks: Sequence[torch.Tensor] = (),
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        grads, loss = self._fn(tuple(_views(params, self._shapes)), x, y, wts, tuple(masks))
        a = params.shape[0]
        return torch.cat([g.reshape(a, -1) for g in grads], dim=1), (loss if need else None)


class _Optimizer:
    """SGD (momentum, weight decay) or Adam on stacked rows; rows ``[:a]`` step."""

    def __init__(self, recipe: Recipe, n: int, p: int, lr: float) -> None:
        self._r = recipe
        self._lr = lr
        self._adam = recipe.optimizer == "adam"
        self._buf = torch.zeros(n, p) if recipe.momentum else None
        if self._adam:
            self._m = torch.zeros(n, p)
            self._v = torch.zeros(n, p)
            self._t = torch.zeros(n, dtype=torch.float64)

    def step(self, params: torch.Tensor, grad: torch.Tensor, a: int) -> None:
        r = self._r
        if r.weight_decay:
            grad.add_(params, alpha=r.weight_decay)
        if not self._adam:
            if self._buf is not None:
                grad = self._buf[:a].mul_(r.momentum).add_(grad)
            params.add_(grad, alpha=-self._lr)
            return
        b1, b2 = ADAM_BETAS
        t = self._t[:a].add_(1.0)
        m = self._m[:a].lerp_(grad, 1 - b1)
        v = self._v[:a].mul_(b2).addcmul_(grad, grad, value=1 - b2)
        step_size = (self._lr / (1 - b1**t)).to(torch.float32).unsqueeze(1)
        bc2_sqrt = (1 - b2**t).sqrt().to(torch.float32).unsqueeze(1)
        denom = v.sqrt().div_(bc2_sqrt).add_(ADAM_EPS)
        params.addcdiv_(m * step_size, denom, value=-1.0)


def _as_index(nodes: npt.ArrayLike, n_nodes: int) -> npt.NDArray[np.int64]:
    arr = np.asarray(nodes)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"nodes must be a 1-D integer array, got {arr.dtype} {arr.shape}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n_nodes):
        raise DataError(f"node indices must lie in [0, {n_nodes}), got {arr.min()}..{arr.max()}")
    return arr


def _shuffle_ids(ids: np.ndarray | None, n_nodes: int) -> npt.NDArray[np.int64]:
    if ids is None:
        return np.arange(n_nodes, dtype=np.int64)
    arr = np.asarray(ids)
    if arr.shape != (n_nodes,) or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"shuffle_ids must be {n_nodes} integers, got {arr.dtype} {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.int64).max):
        raise DataError("shuffle_ids must be non-negative 64-bit integers")
    return arr.astype(np.int64)


class BatchedTrainer:
    """Local training of many nodes whose records are grouped by node.

    Node ``i`` holds rows ``offsets[i]:offsets[i+1]`` of ``x`` (float32,
    ``(n, *spec.input_shape)``) and ``y`` (integer classes for
    cross-entropy; float targets ``(n,)`` or ``(n, n_outputs)`` for MSE).
    The arrays are converted to torch once. ``offsets=[0, n]`` makes one node
    of everything: the centralized baseline.

    ``shuffle_ids`` (one non-negative integer per node, default
    ``arange(n_nodes)``) key each node's minibatch shuffles. A node that trains
    alone passes the index it has in the federation, so its update equals the
    one it would get trained among all the others.
    """

    def __init__(
        self,
        spec: ModelSpec,
        recipe: Recipe,
        x: np.ndarray,
        y: np.ndarray,
        offsets: np.ndarray,
        *,
        max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
        engine: Engine = "auto",
        shuffle_ids: np.ndarray | None = None,
    ) -> None:
        if recipe.loss == "cross_entropy" and spec.n_outputs < 2:
            raise ConfigError("recipe.loss", "cross_entropy needs a model with n_outputs >= 2")
        if engine == "auto":
            engine = "vmap" if spec.kind == "cnn" else "dense"
        if engine == "dense" and spec.kind == "cnn":
            raise ValueError("the dense engine handles linear and mlp models only")
        if engine not in ("dense", "vmap"):
            raise ValueError(f"unknown engine {engine!r}")
        if max_chunk_elements < 1:
            raise ValueError("max_chunk_elements must be positive")
        self.spec = spec
        self.recipe = recipe
        self.layout = layout(spec)
        self.engine: Engine = engine
        self.max_chunk_elements = int(max_chunk_elements)

        x_arr = np.ascontiguousarray(x, dtype=np.float32)
        n = x_arr.shape[0] if x_arr.ndim else 0
        if x_arr.ndim < 1 or tuple(x_arr.shape[1:]) != spec.input_shape:
            raise DataError(f"x has shape {x_arr.shape}, expected (n, *{spec.input_shape})")
        if not np.isfinite(x_arr).all():
            raise DataError("x contains NaN or infinite values")
        self._x = torch.from_numpy(x_arr)
        if engine == "dense":
            self._x = self._x.reshape(n, spec.in_features)
        self._y = self._check_y(np.asarray(y), n)

        off = np.asarray(offsets)
        if off.ndim != 1 or off.size < 1 or not np.issubdtype(off.dtype, np.integer):
            raise DataError("offsets must be a non-empty 1-D integer array")
        off = off.astype(np.int64)
        if off[0] != 0 or off[-1] != n or (np.diff(off) < 0).any():
            raise DataError(f"offsets must rise from 0 to n={n}")
        self.offsets = off
        self.sizes = np.diff(off)
        self.shuffle_ids = _shuffle_ids(shuffle_ids, len(self.sizes))
        self._grad: GradFn = (
            _DenseGrad(spec, recipe.loss) if engine == "dense" else _VmapGrad(spec, recipe.loss)
        )

    def _check_y(self, y: np.ndarray, n: int) -> torch.Tensor:
        k = self.spec.n_outputs
        if self.recipe.loss == "cross_entropy":
            if y.shape != (n,) or (n and not np.issubdtype(y.dtype, np.integer)):
                raise DataError(f"y must be {n} integer class labels, got {y.dtype} {y.shape}")
            y64 = np.ascontiguousarray(y, dtype=np.int64)
            if n and (y64.min() < 0 or y64.max() >= k):
                raise DataError(f"class labels must lie in [0, {k})")
            return torch.from_numpy(y64)
        allowed = {(n, k), (n,)} if k == 1 else {(n, k)}
        if y.shape not in allowed:
            raise DataError(f"y must have shape ({n}, {k}) for mse, got {y.shape}")
        y32 = np.ascontiguousarray(y, dtype=np.float32).reshape(n, k)
        if not np.isfinite(y32).all():
            raise DataError("y contains NaN or infinite values")
        return torch.from_numpy(y32)

    @property
    def num_nodes(self) -> int:
        return len(self.sizes)

    def train(
        self,
        global_weights: Vector,
        nodes: npt.ArrayLike,
        seed: int,
        *,
        prox_mu: float | None = None,
        round: int = 0,
        quality: bool = False,
        max_steps: npt.ArrayLike | None = None,
    ) -> TrainResult:
        """Train ``nodes`` from ``global_weights``; rows come back in ``nodes`` order.

        ``prox_mu``, when given, replaces the recipe's FedProx coefficient for
        this call (the server strategy may set it per round). ``round`` (0-based)
        sets the learning rate, ``recipe.lr_at(round)``. ``quality`` adds each
        node's data-quality statistics (``TrainResult``): one more forward pass
        over its records. ``max_steps`` (one positive integer per node, in
        ``nodes`` order) caps each node's local optimizer steps: a node stops
        after that many minibatches, exactly as if it trained alone and stopped
        (a deadline's partial work, ``runtime.sim.deadline``).
        """
        mu = self.recipe.prox_mu if prox_mu is None else as_real("recipe.prox_mu", prox_mu)
        if mu < 0:
            raise ConfigError("recipe.prox_mu", f"must be >= 0, got {mu}")
        lr = self.recipe.lr_at(round)
        p = self.layout.size
        g = np.asarray(global_weights)
        if g.shape != (p,):
            raise DataError(f"global weights have shape {g.shape}, expected ({p},)")
        if not np.isfinite(g).all():
            raise DataError("global weights contain NaN or infinite values")
        g_t = torch.from_numpy(np.array(g, dtype=np.float32))  # own copy: inputs may be read-only
        idx = _as_index(nodes, self.num_nodes)
        sizes = self.sizes[idx]
        full = self.recipe.local_epochs * -(-sizes // self.recipe.batch_size)
        caps = as_caps(max_steps, len(idx))
        steps = full if caps is None else np.minimum(full, caps)
        deltas = np.zeros((len(idx), p), np.float32)
        loss = np.zeros(len(idx), np.float32)
        norm = np.zeros(len(idx), np.float32)
        order = np.argsort(-sizes, kind="stable")
        order = order[sizes[order] > 0]
        with torch.no_grad():
            for lo, hi in self._plan(sizes[order]):
                rows = order[lo:hi]
                chunk_caps = None if caps is None else steps[rows]
                d, chunk_loss, chunk_norm = self._train_chunk(
                    g_t, idx[rows], sizes[rows], seed=seed, prox_mu=mu, lr=lr, caps=chunk_caps
                )
                deltas[rows] = d
                loss[rows] = chunk_loss
                norm[rows] = chunk_norm
        result = TrainResult(
            deltas=deltas,
            num_samples=sizes.astype(np.int64),
            loss=loss,
            steps=steps.astype(np.int64),
        )
        if not quality:
            return result
        loss_before, labels = self._before(g_t, idx)
        return replace(result, loss_before=loss_before, norm=norm, labels=labels)

    def _before(
        self, g: torch.Tensor, idx: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Each node's mean loss under the global model ``g``, and its records per class."""
        params = [v[0] for v in _views(g.unsqueeze(0), self.layout.shapes)]
        ce = self.recipe.loss == "cross_entropy"
        classes = self.spec.n_outputs if ce else 0
        loss = np.zeros(len(idx), np.float32)
        labels = np.zeros((len(idx), classes), np.int64)
        with torch.no_grad():
            for i, node in enumerate(idx):
                lo, hi = int(self.offsets[node]), int(self.offsets[node + 1])
                if hi == lo:
                    continue
                total = 0.0
                for start in range(lo, hi, _EVAL_ROWS):  # bounded activations per pass
                    stop = min(start + _EVAL_ROWS, hi)
                    out = forward(self.spec, params, self._x[start:stop])
                    y = self._y[start:stop]
                    if ce:
                        total += float(F.cross_entropy(out, y, reduction="sum"))
                    else:
                        total += float((out - y).square().mean(-1).sum())
                loss[i] = total / (hi - lo)
                if ce:
                    labels[i] = np.bincount(self._y[lo:hi].numpy(), minlength=classes)
        return loss, labels

    # -- planning ------------------------------------------------------------

    def _per_node_elements(self, width: int) -> int:
        """Floats one node of a sub-chunk holds: parameters, state, activations."""
        r = self.recipe
        copies = 3 + bool(r.momentum) + 2 * (r.optimizer == "adam") + 1  # + prox temp
        spec = self.spec
        per_record = math.prod(spec.input_shape) + 4 * (sum(spec.hidden) + spec.n_outputs)
        per_record += 2 * sum(spec.hidden) if spec.dropout else 0  # masks and masked copies
        if spec.kind == "cnn":
            _, h, w = spec.input_shape
            for _c_in, c_out, pool in conv_plan(spec)[0]:
                per_record += 6 * c_out * h * w  # conv out, relu, pool and their grads
                if pool:
                    h, w = h // 2, w // 2
        return copies * self.layout.size + width * per_record

    def _plan(self, sizes_desc: npt.NDArray[np.int64]) -> list[tuple[int, int]]:
        """Split nodes (sorted by size, descending) into sub-chunks ``[lo, hi)``."""
        n = len(sizes_desc)
        if n == 0:
            return []
        b = self.recipe.batch_size
        # Group by the power of two of the first minibatch's size, merging
        # groups too small to be worth a separate pass of steps.
        bucket = np.floor(np.log2(np.minimum(sizes_desc, b))).astype(np.int64)
        cuts = [0, *(np.flatnonzero(np.diff(bucket)) + 1).tolist(), n]
        groups: list[tuple[int, int]] = []
        lo = 0
        for cut in cuts[1:]:
            if cut - lo >= MIN_SPLIT_NODES and n - cut >= MIN_SPLIT_NODES:
                groups.append((lo, cut))
                lo = cut
        groups.append((lo, n))
        plan = []
        for g_lo, g_hi in groups:
            width = int(min(b, sizes_desc[g_lo]))  # widest minibatch of the group
            cap = max(1, self.max_chunk_elements // self._per_node_elements(width))
            pieces = -(-(g_hi - g_lo) // cap)
            bounds = np.linspace(g_lo, g_hi, pieces + 1).round().astype(int)
            plan += [(int(s), int(e)) for s, e in itertools.pairwise(bounds)]
        return plan

    # -- one sub-chunk ---------------------------------------------------------

    def _train_chunk(
        self,
        g: torch.Tensor,
        nodes: npt.NDArray[np.int64],
        sizes: npt.NDArray[np.int64],
        *,
        seed: int,
        prox_mu: float,
        lr: float,
        caps: npt.NDArray[np.int64] | None = None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        r = self.recipe
        c = len(nodes)
        stops = Stops(caps, sizes, r.batch_size, r.local_epochs)
        ids = self.shuffle_ids[nodes]
        schedule = _Schedule(sizes, r.batch_size)
        starts = np.cumsum(sizes) - sizes
        shift = torch.from_numpy(np.repeat(self.offsets[nodes] - starts, sizes))
        # Gather the chunk's records in visiting order once per epoch when that
        # copy is small; a lone active node then reads contiguous slices.
        pregather = int(sizes.sum()) * math.prod(self._x.shape[1:]) <= self.max_chunk_elements

        params = g.unsqueeze(0).repeat(c, 1)
        opt = _Optimizer(r, c, g.shape[0], lr)
        loss_sum = torch.zeros(c, dtype=torch.float64)
        for epoch in range(stops.epochs):
            last = epoch == r.local_epochs - 1
            need = last or epoch in stops.loss_epochs
            if need:  # a node's loss is of its last epoch (a capped node's: partial)
                loss_sum.zero_()
            rows_of = torch.from_numpy(chunk_permutation(seed, ids, sizes, epoch)).add_(shift)
            xs, ys = (self._x[rows_of], self._y[rows_of]) if pregather else (self._x, self._y)
            for s in range(stops.steps_in(epoch, schedule.n_steps)):
                a, pos, wts, count = schedule.step(s)
                rows = pos if pregather else rows_of[pos]
                xb, yb = xs[rows], ys[rows]
                if a == 1 and isinstance(pos, slice):
                    xb, yb = xb.unsqueeze(0), yb.unsqueeze(0)
                p = params[:a]
                masks = self._masks(seed, ids[:a], epoch, s, xb.shape[1])
                grad, batch_loss = self._grad(p, xb, yb, wts, need=need, masks=masks)
                if prox_mu:
                    grad.add_(p - g, alpha=prox_mu)
                opt.step(p, grad, a)
                if batch_loss is not None:
                    loss_sum[:a] += batch_loss * count
                stops.reached(epoch, s, params, loss_sum)
        params, loss_sum, seen = stops.final(params, loss_sum, sizes, r.batch_size)
        deltas = params.sub_(g)
        norms = torch.linalg.vector_norm(deltas.to(torch.float64), dim=1)  # before clipping
        deltas = clip_deltas(deltas, r.clip_norm)
        mean_loss = loss_sum / torch.from_numpy(seen)
        return deltas.numpy(), mean_loss.to(torch.float32).numpy(), norms.float().numpy()

    def _masks(
        self, seed: int, ids: npt.NDArray[np.int64], epoch: int, step: int, width: int
    ) -> list[torch.Tensor]:
        """Dropout scales of minibatch ``step`` per hidden dense layer: (a, width, units)."""
        p = self.spec.dropout
        if not p:
            return []
        positions = np.arange(width, dtype=np.int64) + step * self.recipe.batch_size
        scale = np.float32(1.0 / (1.0 - p))
        return [
            torch.from_numpy(
                np.where(
                    dropout_keep(seed, ids, epoch, layer=i, positions=positions, width=units, p=p),
                    scale,
                    0,
                ).astype(np.float32)
            )
            for i, units in enumerate(self.spec.hidden)
        ]


class _Schedule:
    """Minibatch positions of a chunk's nodes, sorted by size descending.

    Node ``i`` owns positions ``starts[i]:starts[i]+sizes[i]`` of the chunk's
    visiting order; its minibatch ``s`` is the ``s``-th run of ``batch``
    positions in its segment. Nodes with a minibatch ``s`` form a prefix.
    """

    def __init__(self, sizes: npt.NDArray[np.int64], batch: int) -> None:
        self._sizes = sizes
        self._b = batch
        steps = -(-sizes // batch)
        self.n_steps = int(steps[0])
        # active[s]: how many nodes (a prefix) have a minibatch s
        counts = np.bincount(steps, minlength=self.n_steps + 1)
        self._active = len(sizes) - np.cumsum(counts)[: self.n_steps]
        self._starts = torch.from_numpy(np.cumsum(sizes) - sizes).unsqueeze(1)
        self._sizes_t = torch.from_numpy(sizes).unsqueeze(1)
        self._cols = torch.arange(batch)
        self._uniform: dict[tuple[int, int], torch.Tensor] = {}

    def step(self, s: int) -> tuple[int, torch.Tensor | slice, torch.Tensor, torch.Tensor | int]:
        """(active nodes a, positions (a, w) or a slice for a lone node,
        per-row loss weights (a, w) summing to 1 per node, real rows per node)."""
        b = self._b
        a = int(self._active[s])
        w = min(b, int(self._sizes[0]) - s * b)
        col = self._cols[:w] + s * b
        pos: torch.Tensor | slice
        if a == 1:  # node 0 alone, and its segment starts at 0
            pos = slice(s * b, s * b + w)
        elif int(self._sizes[a - 1]) >= (s + 1) * b:  # every active node has a full batch
            pos = self._starts[:a] + col
        else:
            valid = col < self._sizes_t[:a]
            count = (self._sizes_t[:a, 0] - s * b).clamp_(max=b)
            wts = valid.to(torch.float32).div_(count.unsqueeze(1))
            return a, torch.where(valid, self._starts[:a] + col, 0), wts, count
        uniform = self._uniform.get((a, w))
        if uniform is None:
            uniform = self._uniform[(a, w)] = torch.full((a, w), 1.0 / w)
        return a, pos, uniform, w

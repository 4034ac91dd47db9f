"""Declarative model specs, the modules they build, and deterministic initial weights.

A job names its model by a small frozen ``ModelSpec`` instead of shipping code:
``linear`` (one affine layer: logistic regression under cross-entropy, linear
regression under MSE; the baseline every table can run), ``mlp`` (affine +
activation stacks) or ``cnn`` (3x3 conv + activation + 2x2 max-pool per entry
of ``channels``, then dense layers). ``activation`` (``relu``, ``tanh`` or
``gelu``, the exact erf form) follows every hidden layer, conv and dense alike.
``dropout`` drops units of every hidden dense layer during local training
only: the trainers (``batched.py``) draw its masks from a hash of (seed, node,
epoch, layer, record position, unit), so a node's training stays a pure
function of its data, its shuffle and the global weights. The module built
here is the inference model: it holds no dropout and no BatchNorm.

Parameter names and order are those of ``module.named_parameters()``, e.g.
``fc0.weight, fc0.bias, ..., head.weight, head.bias`` (``conv0.*`` first for
a cnn); ``layout(spec)`` fixes that order for the flat-vector form.
``to_json``/``from_json`` carry a spec as canonical JSON (the sandbox and job
documents take no pickle and no code).
"""

from __future__ import annotations

import itertools
import json
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

import numpy as np

from tessera.errors import ConfigError
from tessera.training.recipe import as_real, parse_json_object
from tessera.weights import Layout, NamedArrays, Vector

if TYPE_CHECKING:  # torch loads lazily: a node agent reads specs without it
    from torch import nn

ModelKind = Literal["linear", "mlp", "cnn"]
KINDS: tuple[ModelKind, ...] = ("linear", "mlp", "cnn")
Activation = Literal["relu", "tanh", "gelu"]
ACTIVATIONS: tuple[Activation, ...] = ("relu", "tanh", "gelu")
#: What a spec without these fields (an older job document) means.
DEFAULT_ACTIVATION: Activation = "relu"
DEFAULT_DROPOUT = 0.0

#: Refuse specs whose weights would exceed this many floats (256 MiB).
MAX_PARAMETERS = 1 << 26
#: Refuse absurd layer widths and depths early, before any arithmetic on them.
MAX_WIDTH = 1 << 16
MAX_DEPTH = 16


def _int_tuple(field: str, value: object, *, allow_empty: bool) -> tuple[int, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, tuple | list):
        raise ConfigError(field, f"must be a sequence of positive integers, got {value!r}")
    items = tuple(value)
    if not allow_empty and not items:
        raise ConfigError(field, "must not be empty")
    if len(items) > MAX_DEPTH:
        raise ConfigError(field, f"at most {MAX_DEPTH} entries, got {len(items)}")
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | np.integer):
            raise ConfigError(field, f"entries must be integers, got {item!r}")
        if not 1 <= int(item) <= MAX_WIDTH:
            raise ConfigError(field, f"entries must lie in [1, {MAX_WIDTH}], got {item}")
        out.append(int(item))
    return tuple(out)


@dataclass(frozen=True)
class ModelSpec:
    """What model to train; see the module docstring for the architectures.

    ``input_shape`` excludes the batch dimension: ``(d,)`` for tabular data
    (``linear``/``mlp`` flatten any shape), ``(C, H, W)`` for a ``cnn``.
    ``hidden`` are dense widths (empty for ``linear``, required for ``mlp``,
    optional after the convolutions of a ``cnn``); ``channels`` are a cnn's
    conv widths and are ignored by the other kinds. ``activation`` follows
    every hidden layer; ``dropout`` in [0, 1) is the probability of dropping
    a hidden dense unit in local training (it needs a hidden dense layer).
    """

    kind: ModelKind
    input_shape: tuple[int, ...]
    n_outputs: int
    hidden: tuple[int, ...] = ()
    channels: tuple[int, ...] = (16, 32)
    activation: Activation = DEFAULT_ACTIVATION
    dropout: float = DEFAULT_DROPOUT

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError("model.kind", f"must be one of {list(KINDS)}, got {self.kind!r}")
        shape = _int_tuple("model.input_shape", self.input_shape, allow_empty=False)
        hidden = _int_tuple("model.hidden", self.hidden, allow_empty=True)
        channels = _int_tuple("model.channels", self.channels, allow_empty=self.kind != "cnn")
        n_out = self.n_outputs
        if isinstance(n_out, bool) or not isinstance(n_out, int | np.integer):
            raise ConfigError("model.n_outputs", f"must be an integer, got {n_out!r}")
        if not 1 <= int(n_out) <= MAX_WIDTH:
            raise ConfigError("model.n_outputs", f"must lie in [1, {MAX_WIDTH}], got {n_out}")
        object.__setattr__(self, "input_shape", shape)
        object.__setattr__(self, "hidden", hidden)
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "n_outputs", int(n_out))
        self._check_options(hidden)
        if self.kind == "linear" and hidden:
            raise ConfigError("model.hidden", "a linear model has no hidden layers")
        if self.kind == "mlp" and not hidden:
            raise ConfigError("model.hidden", "an mlp needs at least one hidden layer")
        if self.kind == "cnn":
            if len(shape) != 3:
                raise ConfigError(
                    "model.input_shape", f"a cnn takes (channels, height, width), got {shape}"
                )
            if min(shape[1:]) < 1:
                raise ConfigError("model.input_shape", "image sides must be positive")
        elif math.prod(shape) > MAX_PARAMETERS:
            raise ConfigError("model.input_shape", f"{shape} has too many features")
        n_params = parameter_count(self)
        if n_params > MAX_PARAMETERS:
            raise ConfigError(
                "model", f"{n_params} parameters exceed the limit of {MAX_PARAMETERS}"
            )

    def _check_options(self, hidden: tuple[int, ...]) -> None:
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                "model.activation",
                f"must be one of {list(ACTIVATIONS)}, got {self.activation!r}",
            )
        dropout = as_real("model.dropout", self.dropout)
        if not 0 <= dropout < 1:
            raise ConfigError("model.dropout", f"must lie in [0, 1), got {dropout}")
        if dropout and not hidden:
            raise ConfigError(
                "model.dropout", f"a {self.kind} model without hidden layers has nothing to drop"
            )
        object.__setattr__(self, "dropout", dropout)

    @property
    def in_features(self) -> int:
        """Features per record after flattening (the input of a dense model)."""
        return math.prod(self.input_shape)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): equal specs give equal bytes.

        ``activation`` and ``dropout`` are written only when they differ from
        their defaults, so a spec that uses neither has the bytes it had
        before they existed (and older readers' documents stay unchanged).
        """
        doc: dict[str, object] = {
            "kind": self.kind,
            "input_shape": list(self.input_shape),
            "n_outputs": self.n_outputs,
            "hidden": list(self.hidden),
            "channels": list(self.channels),
        }
        if self.activation != DEFAULT_ACTIVATION:
            doc["activation"] = self.activation
        if self.dropout != DEFAULT_DROPOUT:
            doc["dropout"] = self.dropout
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelSpec:
        """Parse ``to_json`` output; any problem is a ``ConfigError`` naming the field."""
        names = tuple(f.name for f in fields(cls))
        raw = parse_json_object(
            text, "model", required=("kind", "input_shape", "n_outputs"), optional=names
        )
        return cls(**raw)


def conv_plan(spec: ModelSpec) -> tuple[list[tuple[int, int, bool]], int]:
    """Per conv layer (in_channels, out_channels, pool?), and the flattened size after."""
    c, h, w = spec.input_shape
    plan = []
    for out_c in spec.channels:
        pool = h >= 2 and w >= 2
        plan.append((c, out_c, pool))
        c = out_c
        if pool:
            h, w = h // 2, w // 2
    return plan, c * h * w


def _dense_widths(spec: ModelSpec) -> list[int]:
    """Input width of each dense layer followed by the output width."""
    first = conv_plan(spec)[1] if spec.kind == "cnn" else spec.in_features
    return [first, *spec.hidden, spec.n_outputs]


def _shapes(spec: ModelSpec) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    if spec.kind == "cnn":
        for c_in, c_out, _ in conv_plan(spec)[0]:
            shapes += [(c_out, c_in, 3, 3), (c_out,)]
    widths = _dense_widths(spec)
    for d_in, d_out in itertools.pairwise(widths):
        shapes += [(d_out, d_in), (d_out,)]
    return shapes


def parameter_count(spec: ModelSpec) -> int:
    """How many floats the spec's weights hold, from its shapes alone (no torch).

    Equals ``layout(spec).size``; a node agent checks its catalogue with this
    so that it never loads torch itself (only its sandbox child trains).
    """
    return sum(math.prod(shape) for shape in _shapes(spec))


def activation_module(name: Activation) -> nn.Module:
    """The torch module of an activation (GELU in its exact, erf form)."""
    from torch import nn

    modules: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
    return modules[name]()


def _make_module(spec: ModelSpec) -> nn.Sequential:
    from torch import nn

    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if spec.kind == "cnn":
        for i, (c_in, c_out, pool) in enumerate(conv_plan(spec)[0]):
            layers[f"conv{i}"] = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)
            layers[f"conv_act{i}"] = activation_module(spec.activation)
            if pool:
                layers[f"pool{i}"] = nn.MaxPool2d(2)
    layers["flatten"] = nn.Flatten()
    widths = _dense_widths(spec)
    for i, (d_in, d_out) in enumerate(itertools.pairwise(widths[:-1])):
        layers[f"fc{i}"] = nn.Linear(d_in, d_out)
        layers[f"act{i}"] = activation_module(spec.activation)
    layers["head"] = nn.Linear(widths[-2], widths[-1])
    return nn.Sequential(layers)


@lru_cache(maxsize=64)
def layout(spec: ModelSpec) -> Layout:
    """Names and shapes of the spec's parameters, in ``named_parameters()`` order."""
    import torch

    with torch.device("meta"):
        module = _make_module(spec)
    return Layout(
        tuple(name for name, _ in module.named_parameters()),
        tuple(tuple(p.shape) for _, p in module.named_parameters()),
    )


def _fan_in(shape: tuple[int, ...], biases_of: tuple[int, ...] | None) -> int:
    source = biases_of if biases_of is not None else shape
    return math.prod(source[1:])


def init_weights(spec: ModelSpec, seed: int) -> NamedArrays:
    """Deterministic initial weights: torch's default ranges, from a seeded generator.

    Every weight and bias is uniform in ``±1/sqrt(fan_in)`` (what PyTorch's
    Linear/Conv2d ``reset_parameters`` draws), drawn in layout order from
    ``torch.Generator().manual_seed(seed)``; the global RNG is untouched.
    """
    import torch

    lay = layout(spec)
    gen = torch.Generator().manual_seed(int(seed) % (1 << 63))
    out: NamedArrays = {}
    prev_weight: tuple[int, ...] | None = None
    for name, shape in zip(lay.names, lay.shapes, strict=True):
        is_bias = name.endswith(".bias")
        bound = 1.0 / math.sqrt(_fan_in(shape, prev_weight if is_bias else None))
        draw = torch.rand(shape, generator=gen, dtype=torch.float64) * (2 * bound) - bound
        out[name] = draw.to(torch.float32).numpy()
        prev_weight = None if is_bias else shape
    return out


def build_module(
    spec: ModelSpec, weights: Vector | Mapping[str, np.ndarray] | None = None
) -> nn.Module:
    """A fresh ``torch.nn.Module`` for ``spec``, holding ``weights`` (flat or named).

    Without ``weights`` it holds ``init_weights(spec, 0)``. Building never
    touches torch's global RNG.
    """
    import torch

    with torch.device("meta"):
        module = _make_module(spec)
    module = module.to_empty(device="cpu")
    load_weights(module, spec, init_weights(spec, 0) if weights is None else weights)
    return module


def load_weights(
    module: nn.Module, spec: ModelSpec, weights: Vector | Mapping[str, np.ndarray]
) -> None:
    """Copy flat or named ``weights`` (checked against ``layout(spec)``) into ``module``."""
    import torch

    lay = layout(spec)
    named = lay.unflatten(weights) if isinstance(weights, np.ndarray) else dict(weights)
    lay.flatten(named)  # checks names, order and shapes
    with torch.no_grad():
        for name, param in module.named_parameters():
            param.copy_(torch.from_numpy(np.asarray(named[name], dtype=np.float32)))


def module_weights(module: nn.Module) -> NamedArrays:
    """The module's parameters as named float32 arrays (copies)."""
    import torch

    return {
        name: p.detach().to(torch.float32).numpy().copy() for name, p in module.named_parameters()
    }

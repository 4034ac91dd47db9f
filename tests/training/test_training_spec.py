from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.errors import ConfigError
from tessera.training import (
    ModelSpec,
    Recipe,
    build_module,
    init_weights,
    layout,
    load_weights,
    module_weights,
)
from tessera.training.spec import parameter_count
from tessera.weights import from_bytes, to_bytes

SPECS = [
    ModelSpec("linear", (3,), 6),
    ModelSpec("linear", (5,), 1),
    ModelSpec("mlp", (3,), 6, hidden=(32,)),
    ModelSpec("mlp", (64,), 10, hidden=(16, 8)),
    ModelSpec("cnn", (1, 8, 8), 10),
    ModelSpec("cnn", (3, 5, 7), 4, hidden=(12,), channels=(4, 6, 5)),
]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "rnn", "input_shape": (3,), "n_outputs": 2}, "model.kind"),
        ({"kind": "linear", "input_shape": (), "n_outputs": 2}, "model.input_shape"),
        ({"kind": "linear", "input_shape": (0,), "n_outputs": 2}, "model.input_shape"),
        ({"kind": "linear", "input_shape": "3", "n_outputs": 2}, "model.input_shape"),
        ({"kind": "linear", "input_shape": (3.0,), "n_outputs": 2}, "model.input_shape"),
        ({"kind": "linear", "input_shape": (3,), "n_outputs": 0}, "model.n_outputs"),
        ({"kind": "linear", "input_shape": (3,), "n_outputs": True}, "model.n_outputs"),
        ({"kind": "linear", "input_shape": (3,), "n_outputs": 2, "hidden": (4,)}, "model.hidden"),
        ({"kind": "mlp", "input_shape": (3,), "n_outputs": 2}, "model.hidden"),
        ({"kind": "mlp", "input_shape": (3,), "n_outputs": 2, "hidden": (4, -1)}, "model.hidden"),
        ({"kind": "cnn", "input_shape": (8, 8), "n_outputs": 2}, "model.input_shape"),
        (
            {"kind": "cnn", "input_shape": (1, 8, 8), "n_outputs": 2, "channels": ()},
            "model.channels",
        ),
        (
            {"kind": "mlp", "input_shape": (60000,), "n_outputs": 2, "hidden": (60000, 60000)},
            "model",
        ),
    ],
)
def test_spec_validation_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        ModelSpec(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_spec_coerces_lists_and_is_hashable() -> None:
    spec = ModelSpec("mlp", [3], 2, hidden=[4, np.int64(5)])  # type: ignore[arg-type]
    assert spec.input_shape == (3,)
    assert spec.hidden == (4, 5)
    assert spec == ModelSpec("mlp", (3,), 2, hidden=(4, 5))
    assert hash(spec) == hash(ModelSpec("mlp", (3,), 2, hidden=(4, 5)))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"loss": "hinge"}, "recipe.loss"),
        ({"optimizer": "lbfgs"}, "recipe.optimizer"),
        ({"lr": 0.0}, "recipe.lr"),
        ({"lr": float("nan")}, "recipe.lr"),
        ({"lr": "0.1"}, "recipe.lr"),
        ({"momentum": 1.0}, "recipe.momentum"),
        ({"optimizer": "adam", "momentum": 0.9}, "recipe.momentum"),
        ({"weight_decay": -1e-3}, "recipe.weight_decay"),
        ({"local_epochs": 0}, "recipe.local_epochs"),
        ({"local_epochs": 1.5}, "recipe.local_epochs"),
        ({"batch_size": 0}, "recipe.batch_size"),
        ({"prox_mu": -0.1}, "recipe.prox_mu"),
        ({"clip_norm": 0.0}, "recipe.clip_norm"),
        ({"clip_norm": float("inf")}, "recipe.clip_norm"),
    ],
)
def test_recipe_validation_names_the_field(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"loss": "cross_entropy", **kwargs}
    with pytest.raises(ConfigError) as info:
        Recipe(**args)  # type: ignore[arg-type]
    assert info.value.field == field


def test_recipe_defaults() -> None:
    r = Recipe("mse", lr=1, clip_norm=2)
    assert (r.optimizer, r.lr, r.local_epochs, r.batch_size, r.clip_norm) == (
        "sgd",
        1.0,
        1,
        32,
        2.0,
    )
    assert isinstance(r.lr, float)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}{s.input_shape}")
def test_layout_matches_module_and_forward_shape(spec: ModelSpec) -> None:
    module = build_module(spec)
    lay = layout(spec)
    assert lay.names == tuple(name for name, _ in module.named_parameters())
    assert lay.shapes == tuple(tuple(p.shape) for p in module.parameters())
    out = module(torch.zeros(7, *spec.input_shape))
    assert out.shape == (7, spec.n_outputs)
    assert not any(isinstance(m, torch.nn.BatchNorm2d | torch.nn.Dropout) for m in module.modules())


@pytest.mark.parametrize(
    "spec",
    [
        *SPECS,
        ModelSpec("linear", (2, 3, 4), 5),  # flattened input
        ModelSpec("mlp", (1,), 1, hidden=(1, 1, 1)),
        ModelSpec("cnn", (2, 1, 1), 3, channels=(4,)),  # too small to pool
        ModelSpec("cnn", (1, 3, 9), 2, hidden=(5, 3), channels=(2, 2, 2)),  # pools, then not
    ],
    ids=lambda s: f"{s.kind}{s.input_shape}",
)
def test_parameter_count_equals_the_layout_size(spec: ModelSpec) -> None:
    assert parameter_count(spec) == layout(spec).size
    assert parameter_count(spec) == sum(p.numel() for p in build_module(spec).parameters())


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(
        st.builds(ModelSpec, st.just("linear"), st.tuples(st.integers(1, 50)), st.integers(1, 10)),
        st.builds(
            ModelSpec,
            st.just("mlp"),
            st.lists(st.integers(1, 8), min_size=1, max_size=3).map(tuple),
            st.integers(1, 10),
            hidden=st.lists(st.integers(1, 64), min_size=1, max_size=3).map(tuple),
        ),
        st.builds(
            ModelSpec,
            st.just("cnn"),
            st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 12)),
            st.integers(1, 10),
            hidden=st.lists(st.integers(1, 32), max_size=2).map(tuple),
            channels=st.lists(st.integers(1, 8), min_size=1, max_size=4).map(tuple),
        ),
    )
)
def test_parameter_count_equals_the_layout_size_for_any_spec(spec: ModelSpec) -> None:
    """The torch-free count (what a node's catalogue checks) is torch's own count."""
    assert parameter_count(spec) == layout(spec).size


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}{s.input_shape}")
def test_init_is_deterministic_and_seed_dependent(spec: ModelSpec) -> None:
    a, b, c = init_weights(spec, 7), init_weights(spec, 7), init_weights(spec, 8)
    assert list(a) == list(layout(spec).names)
    for name in a:
        assert a[name].dtype == np.float32
        assert np.array_equal(a[name], b[name])
    assert not all(np.array_equal(a[k], c[k]) for k in a)
    # torch's default ranges: uniform in ±1/sqrt(fan_in)
    for arr in a.values():
        assert np.abs(arr).max() <= 1.0


def test_building_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    build_module(ModelSpec("cnn", (1, 8, 8), 10))
    init_weights(ModelSpec("mlp", (3,), 2, hidden=(4,)), 1)
    assert torch.equal(state, torch.random.get_rng_state())


def test_weights_round_trip_through_module_and_safetensors() -> None:
    spec = ModelSpec("cnn", (1, 8, 8), 10)
    named = init_weights(spec, 3)
    flat = layout(spec).flatten(named)
    module = build_module(spec, flat)
    back = module_weights(module)
    assert all(np.array_equal(back[k], named[k]) for k in named)
    parsed = from_bytes(to_bytes(back), layout(spec))
    assert np.array_equal(layout(spec).flatten(parsed), flat)
    other = build_module(spec)
    load_weights(other, spec, named)
    assert np.array_equal(layout(spec).flatten(module_weights(other)), flat)

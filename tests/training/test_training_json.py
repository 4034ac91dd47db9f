"""ModelSpec and Recipe as canonical JSON: exact round trips, strict refusals naming the field."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.errors import ConfigError
from tessera.training import ModelSpec, Recipe
from tessera.training.recipe import LOSSES, OPTIMIZERS, OptimizerName

widths = st.lists(st.integers(1, 64), max_size=3)
specs = st.one_of(
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
        hidden=widths.map(tuple),
        channels=st.lists(st.integers(1, 8), min_size=1, max_size=3).map(tuple),
    ),
)
reals = st.floats(min_value=0, max_value=1e6, allow_nan=False)
positive = st.floats(min_value=1e-300, max_value=1e6, allow_nan=False)


@st.composite
def recipes(draw: st.DrawFn) -> Recipe:
    optimizer: OptimizerName = draw(st.sampled_from(OPTIMIZERS))
    return Recipe(
        loss=draw(st.sampled_from(LOSSES)),
        optimizer=optimizer,
        lr=draw(positive),
        momentum=draw(st.floats(0, 0.999)) if optimizer == "sgd" else 0.0,
        weight_decay=draw(reals),
        local_epochs=draw(st.integers(1, 1000)),
        batch_size=draw(st.integers(1, 1 << 20)),
        prox_mu=draw(reals),
        clip_norm=draw(st.none() | positive),
    )


@given(specs)
def test_spec_round_trips(spec: ModelSpec) -> None:
    text = spec.to_json()
    assert ModelSpec.from_json(text) == spec
    assert ModelSpec.from_json(text.encode()).to_json() == text
    assert list(json.loads(text)) == sorted(json.loads(text))


@given(recipes())
def test_recipe_round_trips(recipe: Recipe) -> None:
    text = recipe.to_json()
    assert Recipe.from_json(text) == recipe
    assert Recipe.from_json(text.encode()).to_json() == text


def test_recipe_json_has_every_field_and_defaults_fill_in() -> None:
    doc = json.loads(Recipe("mse").to_json())
    assert doc["clip_norm"] is None
    assert set(doc) == {
        "loss",
        "optimizer",
        "lr",
        "momentum",
        "weight_decay",
        "local_epochs",
        "batch_size",
        "prox_mu",
        "clip_norm",
    }
    assert Recipe.from_json('{"loss": "mse"}') == Recipe("mse")
    assert ModelSpec.from_json('{"kind": "linear", "input_shape": [3], "n_outputs": 1}') == (
        ModelSpec("linear", (3,), 1)
    )


MLP = '"kind": "mlp", "input_shape": [3], "n_outputs": 2'


def _mlp(**changes: object) -> str:
    doc = {"kind": "mlp", "input_shape": [3], "n_outputs": 2, "hidden": [4], **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not None})


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("", "model"),
        ("{not json", "model"),
        ("[1, 2]", "model"),
        ('"mlp"', "model"),
        (b"\xff\xfe{", "model"),
        ("{" + MLP + ', "hidden": [NaN]}', "model"),
        ("{" + MLP + ', "hidden": [4], "hidden": [5]}', "model.hidden"),
        (_mlp(input_shape=None), "model.input_shape"),
        (_mlp(kind=None), "model.kind"),
        (_mlp(hiden=[4]), "model.hiden"),
        (_mlp(kind="transformer"), "model.kind"),
        (_mlp(kind=["mlp"]), "model.kind"),
        (_mlp(hidden=[4.5]), "model.hidden"),
        (_mlp(hidden="4"), "model.hidden"),
        (_mlp(hidden=[]), "model.hidden"),
        (_mlp(input_shape=3), "model.input_shape"),
        (_mlp(n_outputs="2"), "model.n_outputs"),
        (_mlp(n_outputs=True), "model.n_outputs"),
        (_mlp(kind="cnn"), "model.input_shape"),
        (_mlp(kind="linear", hidden=[], input_shape=[100000, 100000]), "model.input_shape"),
        (_mlp(pad="x" * 70000), "model"),
    ],
)
def test_malformed_spec_json_names_the_field(text: str | bytes, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        ModelSpec.from_json(text)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("null", "recipe"),
        ('{"loss": "mse", "lr": Infinity}', "recipe"),
        ('{"lr": 0.1}', "recipe.loss"),
        ('{"loss": "hinge"}', "recipe.loss"),
        ('{"loss": "mse", "optimizer": "lbfgs"}', "recipe.optimizer"),
        ('{"loss": "mse", "lr": -1}', "recipe.lr"),
        ('{"loss": "mse", "lr": 1e400}', "recipe.lr"),
        ('{"loss": "mse", "lr": "0.1"}', "recipe.lr"),
        ('{"loss": "mse", "lr": true}', "recipe.lr"),
        ('{"loss": "mse", "momentum": 1.0}', "recipe.momentum"),
        ('{"loss": "mse", "local_epochs": 1.0}', "recipe.local_epochs"),
        ('{"loss": "mse", "batch_size": 0}', "recipe.batch_size"),
        ('{"loss": "mse", "clip_norm": 0}', "recipe.clip_norm"),
        ('{"loss": "mse", "prox_mu": -0.5}', "recipe.prox_mu"),
        ('{"loss": "mse", "lr": 0.1, "lr": 0.2}', "recipe.lr"),
        ('{"loss": "mse", "code": "import os"}', "recipe.code"),
    ],
)
def test_malformed_recipe_json_names_the_field(text: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        Recipe.from_json(text)
    assert info.value.field == field


def test_from_json_refuses_non_text() -> None:
    with pytest.raises(ConfigError) as info:
        Recipe.from_json({"loss": "mse"})  # type: ignore[arg-type]
    assert info.value.field == "recipe"

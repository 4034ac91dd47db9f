from __future__ import annotations

import pytest

from tessera.errors import ConfigError, TesseraError
from tessera.sandbox import DEFAULT_CATALOGUE, NodeCatalogue, SandboxRefused
from tessera.training import ModelSpec, Recipe

MLP = ModelSpec("mlp", (10,), 3, hidden=(64, 32))
SGD = Recipe("cross_entropy")


def _reason(catalogue: NodeCatalogue, spec: ModelSpec, recipe: Recipe, n: int = 100) -> str:
    with pytest.raises(SandboxRefused) as info:
        catalogue.check(spec, recipe, n)
    assert isinstance(info.value, TesseraError)
    assert str(info.value) == info.value.reason
    return info.value.reason


@pytest.mark.parametrize(
    ("spec", "recipe", "n"),
    [
        (MLP, SGD, 1000),
        (ModelSpec("linear", (3,), 1), Recipe("mse", optimizer="adam"), 0),
        (ModelSpec("cnn", (1, 28, 28), 10, hidden=(64,)), SGD, 60_000),
    ],
    ids=["mlp", "linear-adam-no-records", "cnn-mnist-sized"],
)
def test_default_accepts_the_usual_jobs(spec: ModelSpec, recipe: Recipe, n: int) -> None:
    assert list(DEFAULT_CATALOGUE._refusals(spec, recipe, n)) == []
    DEFAULT_CATALOGUE.check(spec, recipe, n)  # so check() raises nothing either


@pytest.mark.parametrize(
    ("catalogue", "spec", "recipe", "n", "expected"),
    [
        (
            NodeCatalogue(kinds=("linear", "mlp")),
            ModelSpec("cnn", (1, 8, 8), 2),
            SGD,
            10,
            "model.kind 'cnn' is not in this node's catalogue (linear, mlp)",
        ),
        (
            DEFAULT_CATALOGUE,
            ModelSpec("mlp", (3000,), 10, hidden=(4000,)),
            SGD,
            10,
            "model has 12,044,010 parameters; this node accepts at most 5,000,000",
        ),
        (
            DEFAULT_CATALOGUE,
            ModelSpec("mlp", (4,), 2, hidden=(8192,)),
            SGD,
            10,
            "model.hidden has a layer of width 8,192; this node accepts at most width 4,096",
        ),
        (
            NodeCatalogue(max_hidden_layers=2),
            ModelSpec("mlp", (4,), 2, hidden=(8, 8, 8)),
            SGD,
            10,
            "model.hidden has 3 layers; this node accepts at most 2",
        ),
        (
            NodeCatalogue(max_channels=16),
            ModelSpec("cnn", (1, 8, 8), 2, channels=(8, 32)),
            SGD,
            10,
            "model.channels has a layer of 32 channels; this node accepts at most 16 channels",
        ),
        (
            NodeCatalogue(max_conv_layers=1),
            ModelSpec("cnn", (1, 8, 8), 2, channels=(4, 4)),
            SGD,
            10,
            "model.channels has 2 layers; this node accepts at most 1",
        ),
        (
            NodeCatalogue(max_input_features=100),
            ModelSpec("linear", (11, 11), 2),
            SGD,
            10,
            "model.input_shape (11, 11) has 121 features per record; this node accepts at most 100",
        ),
        (
            NodeCatalogue(losses=("cross_entropy",)),
            MLP,
            Recipe("mse"),
            10,
            "recipe.loss 'mse' is not in this node's catalogue (cross_entropy)",
        ),
        (
            NodeCatalogue(optimizers=("sgd",)),
            MLP,
            Recipe("mse", optimizer="adam"),
            10,
            "recipe.optimizer 'adam' is not in this node's catalogue (sgd)",
        ),
        (
            DEFAULT_CATALOGUE,
            MLP,
            Recipe("mse", local_epochs=50),
            10,
            "recipe.local_epochs is 50; this node accepts at most 20",
        ),
        (
            DEFAULT_CATALOGUE,
            MLP,
            Recipe("mse", batch_size=4096),
            10,
            "recipe.batch_size is 4,096; this node accepts at most 1,024",
        ),
        (
            NodeCatalogue(max_records=1000),
            MLP,
            SGD,
            1001,
            "the job would train on 1,001 records; this node accepts at most 1,000",
        ),
    ],
)
def test_refusal_names_the_field(
    catalogue: NodeCatalogue, spec: ModelSpec, recipe: Recipe, n: int, expected: str
) -> None:
    assert _reason(catalogue, spec, recipe, n) == expected


def test_from_dict_reads_a_toml_section_strictly() -> None:
    cat = NodeCatalogue.from_dict({"kinds": ["linear"], "max_records": 50, "losses": ["mse"]})
    assert cat.kinds == ("linear",)
    assert cat.max_records == 50
    assert cat.max_parameters == DEFAULT_CATALOGUE.max_parameters
    assert NodeCatalogue.from_json(cat.to_json()) == cat


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"kinds": ["transformer"]}, "catalogue.kinds"),
        ({"max_parameters": 0}, "catalogue.max_parameters"),
        ({"max_records": "many"}, "catalogue.max_records"),
        ({"max_records": 1.5}, "catalogue.max_records"),
        ({"max_batch_size": True}, "catalogue.max_batch_size"),
        ({"max_paramters": 10}, "catalogue.max_paramters"),
    ],
)
def test_from_dict_names_the_bad_field(raw: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        NodeCatalogue.from_dict(raw)
    assert info.value.field == field

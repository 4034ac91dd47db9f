"""Model options from the job file to the node: config, prepared job, document, catalogue."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from tests.coordinator.coordinator_kit import AI, tiny_job

from tessera.config import parse_config
from tessera.crypto.documents import sign_document
from tessera.errors import ConfigError, RemoteProtocolError
from tessera.jobs.document import JobSpec
from tessera.jobs.prepared import model_spec_of, recipe_of
from tessera.sandbox import NodeCatalogue, SandboxRefused
from tessera.training import ModelSpec, Recipe

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "chem97.toml"


def _raw(**sections: dict[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    for name, changes in sections.items():
        raw[name] = {**raw[name], **changes}
    return raw


@pytest.mark.parametrize(
    ("sections", "field", "needle"),
    [
        ({"model": {"activation": "swish"}}, "model.activation", "'relu', 'tanh' or 'gelu'"),
        ({"model": {"dropout": 1.0}}, "model.dropout", "less than 1"),
        ({"model": {"dropout": -0.5}}, "model.dropout", "greater than or equal to 0"),
        ({"model": {"kind": "linear", "hidden": [], "dropout": 0.2}}, "model.dropout", "hidden"),
        ({"recipe": {"lr_schedule": "warmup"}}, "recipe.lr_schedule", "'cosine' or 'step'"),
        ({"recipe": {"lr_gamma": 0.3}}, "recipe.lr_gamma", "constant schedule does not use"),
        (
            {"recipe": {"lr_schedule": "cosine", "lr_step_every": 5}},
            "recipe.lr_step_every",
            "cosine schedule does not use",
        ),
        ({"recipe": {"lr_schedule": "step", "lr_gamma": 0}}, "recipe.lr_gamma", "greater than 0"),
        (
            {"recipe": {"lr_schedule": "cosine", "lr_min_fraction": 2}},
            "recipe.lr_min_fraction",
            "less than or equal to 1",
        ),
    ],
)
def test_config_mistakes_name_their_field(
    sections: dict[str, dict[str, Any]], field: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(_raw(**sections))
    assert exc.value.field == field
    assert needle in exc.value.message


def test_config_options_reach_the_spec_and_recipe() -> None:
    cfg = parse_config(
        _raw(
            model={"activation": "tanh", "dropout": 0.2},
            recipe={"lr_schedule": "cosine", "lr_min_fraction": 0.1},
        )
    )

    class Pre:  # what model_spec_of reads of the preprocessor
        n_classes = 6
        input_shape = (4,)

    spec = model_spec_of(cfg, Pre())  # type: ignore[arg-type]
    assert (spec.activation, spec.dropout) == ("tanh", 0.2)
    recipe = recipe_of(cfg)
    assert recipe.lr_schedule == "cosine"
    assert recipe.lr_rounds == cfg.federation.rounds  # the horizon is the job's rounds
    assert recipe.lr_at(cfg.federation.rounds - 1) == pytest.approx(0.1 * cfg.recipe.lr)
    step = recipe_of(parse_config(_raw(recipe={"lr_schedule": "step", "lr_step_every": 4})))
    assert (step.lr_step_every, step.lr_gamma, step.lr_rounds) == (4, 0.5, None)
    plain = recipe_of(parse_config(_raw()))
    assert plain == Recipe(**{**json.loads(plain.to_json())})  # no schedule fields written
    assert "lr_schedule" not in plain.to_json()


def _resigned(mutate: Any) -> Any:
    doc, _ = tiny_job()
    body = json.loads(json.dumps(doc.body))
    mutate(body)
    return sign_document(AI, "job", body)


def test_an_older_job_document_means_relu_no_dropout_constant_rate() -> None:
    def strip(body: dict[str, Any]) -> None:
        for section in ("model", "recipe"):
            for key in list(body["config"][section]):
                if key in ("activation", "dropout") or key.startswith("lr_"):
                    del body["config"][section][key]
        body["model"].pop("activation", None)
        body["model"].pop("dropout", None)
        for key in [k for k in body["recipe"] if k.startswith("lr_") and k != "lr"]:
            del body["recipe"][key]
        assert "activation" not in json.dumps(body)  # a document from before the options

    spec = JobSpec.from_document(_resigned(strip))
    assert (spec.model.activation, spec.model.dropout) == ("relu", 0.0)
    assert (spec.config.model.activation, spec.config.model.dropout) == ("relu", 0.0)
    assert spec.recipe.lr_schedule == "constant"
    assert spec.recipe.lr_at(7) == spec.recipe.lr
    assert spec.config.recipe.lr_schedule == "constant"


@pytest.mark.parametrize(
    ("where", "value", "needle"),
    [
        ("activation", "swish", "model.activation"),
        ("dropout", 1.0, "model.dropout"),
        ("dropout", 0.5, "model.dropout"),  # the tiny job's model is linear: nothing to drop
    ],
)
def test_a_job_document_with_bad_model_options_is_refused(
    where: str, value: object, needle: str
) -> None:
    def poison(body: dict[str, Any]) -> None:
        body["model"][where] = value

    with pytest.raises(RemoteProtocolError, match=needle):
        JobSpec.from_document(_resigned(poison))


def test_a_job_document_with_an_unknown_schedule_is_refused() -> None:
    def poison(body: dict[str, Any]) -> None:
        body["recipe"]["lr_schedule"] = "warmup"

    with pytest.raises(RemoteProtocolError, match=r"recipe\.lr_schedule"):
        JobSpec.from_document(_resigned(poison))


MLP = ModelSpec("mlp", (4,), 3, hidden=(8,), activation="gelu", dropout=0.5)
STEP = Recipe("cross_entropy", lr_schedule="step", lr_step_every=2)


@pytest.mark.parametrize(
    ("catalogue", "spec", "recipe", "needle"),
    [
        (
            NodeCatalogue(activations=("relu", "tanh")),
            MLP,
            Recipe("cross_entropy"),
            "model.activation 'gelu' is not in this node's catalogue (relu, tanh)",
        ),
        (
            NodeCatalogue(max_dropout=0.3),
            MLP,
            Recipe("cross_entropy"),
            "model.dropout is 0.5; this node accepts at most 0.3",
        ),
        (
            NodeCatalogue(lr_schedules=("constant",)),
            ModelSpec("linear", (4,), 3),
            STEP,
            "recipe.lr_schedule 'step' is not in this node's catalogue (constant)",
        ),
    ],
)
def test_the_catalogue_bounds_model_options(
    catalogue: NodeCatalogue, spec: ModelSpec, recipe: Recipe, needle: str
) -> None:
    with pytest.raises(SandboxRefused) as exc:
        catalogue.check(spec, recipe, 10)
    assert exc.value.reason == needle
    NodeCatalogue().check(spec, recipe, 10)  # the default catalogue takes every option


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"max_dropout": 1.0}, "catalogue.max_dropout"),
        ({"activations": ["relu", "swish"]}, "catalogue.activations"),
        ({"lr_schedules": ["warmup"]}, "catalogue.lr_schedules"),
    ],
)
def test_catalogue_sections_are_checked(raw: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        NodeCatalogue.from_dict(raw)
    assert exc.value.field == field

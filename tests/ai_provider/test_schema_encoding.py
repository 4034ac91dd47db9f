"""A secure job's encoding from the data provider's public catalogue alone: which fields,
which categories and classes, and a clear reason when the catalogue cannot say."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import numpy as np
import pandas as pd
import pytest

from tessera.ai_provider.client import Schema, fetch_preprocessing, fetch_schema
from tessera.ai_provider.schema import schema_preprocessing
from tessera.config import JobConfig, parse_config
from tessera.crypto.keys import NodeKeys
from tessera.data.connectors import TableBackend
from tessera.data.prepare import Preprocessor
from tessera.data_provider.app import create_provider_app
from tessera.errors import RemoteProtocolError
from tessera.runtime.transport.auth import sign_request
from tessera.runtime.transport.serve import serve_in_thread

N = 600
DERIVE = [
    {"name": "passed", "expr": "score > 50"},
    {"name": "band", "expr": "bin(age, 18, 25)"},
]


def records() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame(
        {
            "user": np.repeat(np.arange(60), N // 60),
            "card": rng.integers(10**6, 10**7, N),  # a declared identifier
            "score": rng.uniform(0, 100, N).round(1),
            "age": rng.integers(15, 30, N),
            "gender": rng.choice(["F", "M"], N),
            "grade": rng.integers(1, 6, N),
            "postcode": [f"P{i % 150:03d}" for i in range(N)],  # 150 values: none listed
            "rare": ["common"] * (N - 5) + ["odd"] * 5,
        }
    )


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    backend = TableBackend("pupils", records(), "user")
    app = create_provider_app(
        [backend], keys=NodeKeys.from_seed(b"p" * 32), identifiers=["card"], min_count=10
    )
    with serve_in_thread(app) as server:
        yield server.url


@pytest.fixture(scope="module")
def schema(provider: str) -> Schema:
    return fetch_schema(provider, "pupils")


def job(**data: Any) -> JobConfig:
    return parse_config(
        {
            "job": {"name": "schema", "task": data.pop("task", "classification")},
            "data": {"source": "csv", "dataset": "pupils.csv", **data},
            "partition": {"scheme": "natural", "column": "user"},
            "model": {"kind": "linear"},
            "recipe": {"clip_norm": 5.0},
            "federation": {"rounds": 1},
        }
    )


def encoding(cfg: JobConfig, schema: Schema) -> Preprocessor:
    encoded, why = schema_preprocessing(cfg, schema)
    assert encoded is not None, why
    return Preprocessor.from_json(encoded)


def why_not(cfg: JobConfig, schema: Schema) -> str:
    encoded, why = schema_preprocessing(cfg, schema)
    assert encoded is None
    return why


def test_the_catalogue_reads_as_a_schema(schema: Schema) -> None:
    assert schema.fields == (
        "user",
        "card",
        "score",
        "age",
        "gender",
        "grade",
        "postcode",
        "rare",
    )
    assert schema.types["gender"] == "category" and schema.types["score"] == "number"
    assert schema.identifying == {"user", "card"}
    assert schema.values["gender"] == ("F", "M") and schema.values["grade"] == (1, 2, 3, 4, 5)
    assert schema.values["rare"] == ("common",)  # "odd": 5 records, under min_count
    assert "postcode" not in schema.values and "score" not in schema.values
    assert "card" not in schema.values  # an identifier lists no value, however few


def test_no_features_from_the_schema_encode_as_a_fit_on_the_table(schema: Schema) -> None:
    """Every field but the target and those identifying people, then every derived column
    but the target: the width a fit on the table (without them) gives."""
    categorical = ["gender", "grade", "band", "postcode", "rare"]
    postcodes = [f"P{i:03d}" for i in range(150)]
    cfg = job(
        target="passed",
        derive=DERIVE,
        categorical=categorical,
        categories={"postcode": postcodes, "rare": ["common", "odd"]},
    )
    from_schema = encoding(cfg, schema)
    pooled = Preprocessor.fit(
        records().drop(columns=["user", "card"]),
        target="passed",
        categorical=categorical,
        categories={"postcode": postcodes, "rare": ["common", "odd"]},
        task="classification",
        derive=[(d["name"], d["expr"]) for d in DERIVE],
    )
    assert from_schema.features == pooled.features == (*schema.fields[2:], "band")
    assert from_schema.feature_names == pooled.feature_names
    assert from_schema.n_features == pooled.n_features == 1 + 1 + 2 + 5 + 150 + 2 + 3
    assert from_schema.classes == pooled.classes == (0, 1)  # a derived comparison target
    assert from_schema.statistics_plan() == pooled.statistics_plan()


def test_a_derived_comparison_target_has_two_classes(schema: Schema) -> None:
    cfg = job(target="passed", features=["age"], derive=DERIVE[:1])
    pre = encoding(cfg, schema)
    assert pre.classes == (0, 1) and pre.n_classes == 2
    assert pre.inputs == ("score", "age")  # a node asks for the derivation's input


def test_an_identifying_field_is_never_a_feature(schema: Schema) -> None:
    categories = {"postcode": ["P000"]}
    implicit = encoding(
        job(target="gender", categorical=["postcode", "rare"], categories=categories), schema
    )
    assert {"user", "card"}.isdisjoint(implicit.features)
    explicit = job(target="gender", features=["score", "card"])
    assert why_not(explicit, schema) == (
        "column(s) 'card' identify people (the data provider's catalogue marks them): "
        "a job may not use them"
    )
    derived = job(target="gender", features=["x"], derive=[{"name": "x", "expr": "user > 3"}])
    assert "'user' identify people" in why_not(derived, schema)


def test_a_many_valued_categorical_needs_its_categories_declared(schema: Schema) -> None:
    cfg = {"target": "gender", "features": ["score", "postcode"], "categorical": ["postcode"]}
    assert why_not(job(**cfg), schema) == (
        "the schema lists no values of 'postcode', a categorical feature: the data provider's "
        "catalogue lists none of a field with more than 100 distinct values; declare its "
        "categories in the job file's [data.categories] (postcode = [...])"
    )
    declared = encoding(job(**cfg, categories={"postcode": ["P007", "P003"]}), schema)
    assert declared.feature_names == ("score", "postcode=P007", "postcode=P003")


def test_a_derived_categorical_takes_its_bins(schema: Schema) -> None:
    cfg = job(target="gender", features=["band"], categorical=["band"], derive=DERIVE[1:])
    assert encoding(cfg, schema).feature_names == ("band=0", "band=1", "band=2")
    ratio = job(
        target="gender",
        features=["r"],
        categorical=["r"],
        derive=[{"name": "r", "expr": "score / age"}],
    )
    assert "a derived column's values are known only for a comparison" in why_not(ratio, schema)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"target": "grade", "features": ["score", "gender"]},
            "feature 'gender' is a category field in the data provider's catalogue, not a "
            "number: list it in data.categorical",
        ),
        (
            {"target": "grade"},  # every field: gender first of those not numbers
            "feature 'gender' is a category field in the data provider's catalogue, not a "
            "number: list it in data.categorical (or name the features in data.features)",
        ),
        (
            {"target": "gender", "features": ["age"], "task": "regression"},
            "regression target 'gender' is a category field in the data provider's "
            "catalogue, not a number",
        ),
        (
            {"target": "grade", "features": ["scor"]},
            "column 'scor' is not a field of the dataset (did you mean 'score'?); fields: "
            "user, card, score, age, gender, grade, postcode, rare",
        ),
        (
            {"target": "grade", "features": ["age"], "derive": [{"name": "age", "expr": "1"}]},
            "data.derive[0].name: 'age' is already a field of the dataset",
        ),
        (
            {"target": "rare", "features": ["age"]},
            "the schema lists 1 value(s) of 'rare': 2 at least",
        ),
    ],
)
def test_the_schema_says_what_the_job_gets_wrong(
    schema: Schema, data: dict[str, Any], message: str
) -> None:
    assert why_not(job(**data), schema) == message


def test_a_dataset_the_catalogue_lacks_is_named(provider: str) -> None:
    with pytest.raises(RemoteProtocolError, match="offers no dataset 'pupil'"):
        fetch_schema(provider, "pupil")


def test_a_malformed_catalogue_entry_is_the_providers_fault() -> None:
    with pytest.raises(RemoteProtocolError, match="malformed"):
        Schema.from_catalogue({"fields": [{"name": "a"}], "user_field": "a"})
    with pytest.raises(RemoteProtocolError, match="bad field"):
        Schema.from_catalogue({"fields": [{"name": "a", "type": 3}], "user_field": "a"})


def test_the_providers_encoding_takes_declared_categories_and_the_same_features(
    provider: str, schema: Schema
) -> None:
    """A plaintext job's encoding (the provider's aggregates): declared categories stay
    whole, even one no record holds; with no features, the same columns as the schema's."""
    cfg = job(
        target="passed",
        derive=DERIVE,
        categorical=["gender", "grade", "band", "postcode", "rare"],
        categories={"postcode": ["P001", "none"], "rare": ["odd", "common"]},
    )
    ai = NodeKeys.from_seed(b"a" * 32)
    fitted = Preprocessor.from_json(fetch_preprocessing(cfg, provider, "pupils", keys=ai))
    assert fitted.feature_names == encoding(cfg, schema).feature_names
    columns = {c.name: c for c in fitted.columns}
    assert columns["postcode"].categories == ("P001", "none")
    assert columns["rare"].categories == ("odd", "common")  # 'odd': under min_count, declared


@pytest.mark.parametrize(
    ("categories", "detail"),
    [
        ("[]", 'categories must be a JSON object {"column": [values, ...]}'),
        ("{", "categories must be JSON: Expecting property name"),
        ('{"gender": ["F", "F"]}', "categories.gender: F listed twice"),
    ],
)
def test_the_provider_refuses_malformed_categories(
    provider: str, categories: str, detail: str
) -> None:
    query = urlencode(
        {
            "target": "grade",
            "task": "classification",
            "features": "gender",
            "categorical": "gender",
            "categories": categories,
        }
    )
    path = f"/v1/datasets/pupils/preprocessing?{query}"
    headers = sign_request(NodeKeys.from_seed(b"a" * 32), "GET", path, at=time.time())
    with httpx.Client(base_url=provider) as http:
        answer = http.get(path, headers=headers)
    assert answer.status_code == 400
    assert answer.json()["detail"].startswith(detail)

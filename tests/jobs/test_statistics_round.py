"""A deployment's statistics round, piece by piece: the plan a document implies, what a
node counts, the total the coordinator keeps, and the encoding refitted from it.

The end-to-end run (tests/e2e/test_deployment.py) checks the whole: a deployment
that opens with a statistics round equals the simulator's replay bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tessera.ai_provider.client import build_job
from tessera.config import parse_config
from tessera.crypto.keys import NodeKeys
from tessera.data.federated import FederatedSummaries, plain_totals
from tessera.data.prepare import Preprocessor
from tessera.errors import DataError, RemoteProtocolError
from tessera.jobs.document import JobSpec
from tessera.jobs.totals import (
    RoundTotal,
    append_total,
    read_statistics_document,
    statistics_document,
)

ROWS = pd.DataFrame(
    {
        "score": [0, 2, 4, 2, 0, 4, 6, None],
        "gcsescore": [5.0, 6.0, np.nan, 6.5, 4.5, 7.5, 8.0, 5.5],
        "gender": ["F", "M", "F", None, "F", "M", "M", "F"],
    }
)


def fitted(**kwargs: object) -> Preprocessor:
    return Preprocessor.fit(
        ROWS,
        target="score",
        features=["gcsescore", "gender"],
        categorical=["gender"],
        task="classification",
        **kwargs,  # type: ignore[arg-type]
    )


def test_the_plan_counts_what_the_encoding_learns() -> None:
    pre = fitted(missing="impute")
    plan = pre.statistics_plan()
    assert plan.numeric == ("gcsescore",)
    assert dict(plan.categorical) == {"gender": ("F", "M"), "score": ("0", "2", "4", "6")}
    regression = Preprocessor.fit(
        ROWS, target="gcsescore", features=["score"], task="regression", missing="impute"
    )
    assert regression.statistics_plan().numeric == ("score", "gcsescore")


def test_a_node_counts_the_rows_a_fit_would_use_and_those_it_drops() -> None:
    dropped = fitted()  # drop: rows missing the target, the score or the gender go
    totals = dropped.statistics_plan().totals(dropped.counted_vector(ROWS, 0))
    assert totals.rows is not None
    assert (totals.rows.rows, totals.rows.dropped) == (8, 3)
    assert totals.rows.dropped_by == {"score": 1, "gcsescore": 1, "gender": 1}
    assert totals.numeric["gcsescore"].count == 5
    assert dropped.transform(ROWS).n_dropped == 3  # as the encoding itself drops them
    imputed = fitted(missing="impute")  # impute: only the row missing its target goes
    totals = imputed.statistics_plan().totals(imputed.counted_vector(ROWS, 0))
    assert totals.rows is not None and totals.rows.dropped_by == {"score": 1}
    assert totals.numeric["gcsescore"].count + totals.numeric["gcsescore"].missing == 7
    assert totals.categorical["gender"].missing == 1  # to be imputed


def test_refitting_from_the_rows_own_totals_gives_the_pooled_fit_back() -> None:
    pre = fitted(missing="impute")
    plan = pre.statistics_plan()
    totals = plan.totals(pre.counted_vector(ROWS, 0))
    zeroed = Preprocessor.from_json(
        {
            **pre.to_json(),
            "columns": [
                {**c, "mean": 0.0, "std": 1.0} if c.get("kind") == "numeric" else c
                for c in pre.to_json()["columns"]
            ],
        }
    )
    again = zeroed.rescaled(totals, standardize=True)
    for got, want in zip(again.columns, pre.columns, strict=True):
        assert got.name == want.name and got.fill == pytest.approx(want.fill)
        if hasattr(want, "mean"):
            assert (got.mean, got.std) == pytest.approx((want.mean, want.std))
    assert again.classes == pre.classes  # the width of the model never moves
    x = again.transform(ROWS).x
    np.testing.assert_allclose(x, pre.transform(ROWS).x, rtol=1e-12)


def test_an_image_job_is_not_refitted_from_statistics_yet() -> None:
    frame = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 0, 1, 0], "y": [0, 1, 0, 1]})
    pre = Preprocessor.fit(frame, target="y", task="classification", image_shape=(1, 2))
    with pytest.raises(DataError, match="image jobs"):
        pre.statistics_plan()


def test_totals_read_back_bit_for_bit_and_junk_is_refused() -> None:
    pre = fitted(missing="impute", derive=[("high", "gcsescore > median(gcsescore)")])
    plans = pre.statistics_plans()
    first, last = (
        np.random.default_rng(i).normal(size=p.length) * 1e6 for i, p in enumerate(plans)
    )
    data = append_total(append_total(None, first, 7), last, 6)
    (median_round, n0), (totals, n1) = read_statistics_document(data, plans)
    assert (n0, n1) == (7, 6)
    assert median_round.numeric["gcsescore"].sum == first[2]  # float64 exactly, through JSON
    assert totals.numeric["gcsescore"].sum == plans[1].totals(last).numeric["gcsescore"].sum
    assert len(read_statistics_document(append_total(None, first, 7), plans)) == 1  # so far
    bad = [
        b"not json",
        b'{"format": "other"}',
        statistics_document([RoundTotal(tuple(last), 7)]),  # the plans' order matters
        statistics_document([RoundTotal(tuple(first), 7)] * 3),  # more rounds than plans
        append_total(None, first, 7).replace(b'"nodes":7', b'"nodes":0'),
        append_total(None, first, 7).replace(b'"rounds":[', b'"rounds":[[],'),
    ]
    for junk in bad:
        with pytest.raises(RemoteProtocolError):
            read_statistics_document(junk, plans)
    with pytest.raises(ValueError, match="JSON"):  # no NaN in JSON: such a total is not written
        append_total(None, np.full(plans[0].length, math.nan), 1)


def _job(secure: bool, statistics: bool) -> JobSpec:
    cfg = parse_config(
        {
            "job": {"name": "stats", "seed": 3, "task": "classification"},
            "data": {"source": "csv", "dataset": "r.csv", "target": "score",
                     "features": ["gcsescore", "gender"], "categorical": ["gender"]},
            "partition": {"scheme": "natural", "column": "school"},
            "model": {"kind": "linear"},
            "recipe": {"clip_norm": 5.0},
            "federation": {"rounds": 2},
            "secure": {"enabled": secure, "max_weight": 10.0},
        }
    )  # fmt: skip
    doc, _ = build_job(
        cfg,
        NodeKeys.from_seed(bytes(32)),
        provider="ab" * 32,
        dataset="records",
        user_field="school",
        preprocessing=fitted(missing="impute").to_json(),
        min_consents=3,
        purpose="test",
        created_at=1.0,
        statistics=statistics,
    )
    return JobSpec.from_document(doc)


def test_a_secure_document_declares_its_statistics_round() -> None:
    spec = _job(secure=True, statistics=True)
    assert spec.statistics
    params = spec.secure_params()
    assert params.statistics is not None
    assert params.statistics.lengths == (spec.preprocessor().statistics_plan().length,)
    assert not _job(secure=True, statistics=False).secure_params().statistics
    assert "statistics" not in _job(secure=True, statistics=False).document.body


def test_a_plaintext_job_cannot_declare_a_statistics_round() -> None:
    with pytest.raises(RemoteProtocolError, match="secure job"):
        _job(secure=False, statistics=True)


def test_an_encoding_from_the_schema_refits_to_the_pooled_fit() -> None:
    """No aggregate from the data provider: the catalogue's values fix the width, the
    statistics round's total every number; the result encodes as the pooled fit does."""
    pooled = fitted(missing="impute")
    schema = Preprocessor.schema(
        target="score",
        features=["gcsescore", "gender"],
        categorical=["gender"],
        task="classification",
        missing="impute",
        domains={"gender": ["F", "M"], "score": [0, 2, 4, 6]},
    )
    plan = schema.statistics_plan()
    assert plan == pooled.statistics_plan()
    totals = plan.totals(schema.counted_vector(ROWS, 0))
    refit = schema.rescaled(totals, standardize=True)
    np.testing.assert_allclose(
        refit.transform(ROWS).x, pooled.transform(ROWS).x, rtol=1e-12, atol=1e-12
    )
    np.testing.assert_array_equal(refit.transform(ROWS).y, pooled.transform(ROWS).y)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"domains": {"score": [0, 2]}}, "no values of 'gender'"),
        ({"domains": {"gender": ["F"], "score": [0]}}, "2 at least"),
        ({"features": []}, "names its features"),
    ],
)
def test_the_schema_says_what_it_cannot_encode(change: dict, message: str) -> None:
    args: dict = {
        "target": "score",
        "features": ["gcsescore", "gender"],
        "categorical": ["gender"],
        "task": "classification",
        "domains": {"gender": ["F", "M"], "score": [0, 2]},
    }
    with pytest.raises(DataError, match=message):
        Preprocessor.schema(**{**args, **change})


def test_a_derived_median_takes_a_statistics_round_of_its_own() -> None:
    """``high = gcsescore > median(gcsescore)`` cannot be counted before the median is
    known: the schema's encoding takes two statistics rounds, each node counting the
    second with the median the first one totalled, and refits exactly as ``tessera
    run``'s federated fit does over the same two nodes."""
    derive = [("high", "gcsescore > median(gcsescore)")]
    args: dict = {
        "target": "score",
        "features": ["gcsescore", "gender", "high"],
        "categorical": ["gender"],
        "task": "classification",
        "derive": derive,
        "missing": "impute",
    }
    nodes = [ROWS.iloc[:4], ROWS.iloc[4:]]
    holder = pd.Series([0] * 4 + [1] * 4, index=ROWS.index)
    federated = Preprocessor.fit(
        ROWS, summarize=FederatedSummaries(holder, 2, plain_totals), **args
    )
    schema = Preprocessor.schema(domains={"gender": ["F", "M"], "score": [0, 2, 4, 6]}, **args)
    assert schema.statistics_rounds == 2
    assert schema.statistics_plans()[0].numeric == ("gcsescore",)
    totals: list = []
    for r, plan in enumerate(schema.statistics_plans()):
        known = schema.refitted(totals, standardize=True)  # what every node knows by round r
        totals.append(plan.totals(sum(known.counted_vector(rows, r) for rows in nodes)))
    refit = schema.refitted(totals, standardize=True)
    assert refit.derive == federated.derive  # the median, from round 0's sketch
    assert refit.columns == federated.columns
    np.testing.assert_array_equal(refit.transform(ROWS).x, federated.transform(ROWS).x)
    with pytest.raises(DataError, match="no statistics round 2"):
        refit.counted_vector(ROWS, 2)


def test_the_schema_says_why_it_cannot_encode_a_job() -> None:
    from tessera.ai_provider.client import Schema, schema_preprocessing

    cfg = _job(secure=True, statistics=True).config
    types = {"school": "number", "score": "number", "gcsescore": "number", "gender": "category"}

    def schema(values: dict) -> Schema:
        return Schema(tuple(types), types, values, frozenset({"school"}))

    encoding, why = schema_preprocessing(cfg, schema({"gender": ("F", "M"), "score": (0, 2, 4)}))
    assert encoding is not None and why == ""
    missing, why = schema_preprocessing(cfg, schema({"score": (0, 2, 4)}))
    assert missing is None and "gender" in why


def test_a_document_whose_plan_no_node_could_send_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job's plan is the AI provider's to write: a node (and the coordinator) refuses
    one longer than any vector it would relay, before counting anything."""
    from tessera.jobs import document

    monkeypatch.setattr(document, "MAX_PARAMETERS", 100)
    with pytest.raises(RemoteProtocolError, match=r"plan of .* words is over 100"):
        _job(secure=True, statistics=True)
    assert not _job(secure=True, statistics=False).statistics  # no plan, no bound

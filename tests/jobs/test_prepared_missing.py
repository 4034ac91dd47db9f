"""A job file's derived columns and missing-value policy, through prepare_job to metrics.json."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tessera.cli.main import missing_line
from tessera.config import JobConfig, parse_config
from tessera.errors import ConfigError
from tessera.jobs.check import check_job, count_histogram
from tessera.jobs.prepared import prepare_job, rescale_job, split_table
from tessera.reports import build_metrics
from tessera.reports.metrics import decode_counts, encode_counts


@pytest.fixture(scope="module")
def csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 schools; a score with gaps, a feature missing often, a category missing sometimes."""
    rng = np.random.default_rng(11)
    n = 800
    frame = pd.DataFrame(
        {
            "school": np.repeat(np.arange(40), n // 40),
            "score": rng.normal(6, 2, n).round(1),
            "hours": rng.uniform(0, 10, n),
            "age": rng.integers(15, 45, n).astype(float),
            "lang": rng.choice(["en", "fr"], n),
        }
    )
    frame.loc[rng.random(n) < 0.1, "score"] = np.nan
    frame.loc[rng.random(n) < 0.4, "hours"] = np.nan
    frame.loc[rng.random(n) < 0.1, "lang"] = None
    frame.loc[frame["school"] == 39, "hours"] = np.nan  # one school misses it everywhere
    path = tmp_path_factory.mktemp("missing") / "table.csv"
    frame.to_csv(path, index=False)
    return path


def config(path: Path, **data: Any) -> JobConfig:
    return parse_config(
        {
            "job": {"name": "t", "task": "classification", "seed": 2},
            "data": {
                "source": "csv",
                "dataset": str(path),
                "target": "passed",
                "features": ["hours", "lang", "band"],
                "categorical": ["lang", "band"],
                "holdout": {"fraction": 0.25},
                "derive": [
                    {"name": "passed", "expr": "score > median(score)"},
                    {"name": "band", "expr": "bin(age, 18, 25, 40)"},
                ],
                **data,
            },
            "partition": {"scheme": "natural", "column": "school"},
            "model": {"kind": "linear"},
            "recipe": {"clip_norm": 5.0},
            "federation": {"rounds": 1},
        }
    )


BAND = {"name": "band", "expr": "bin(age, 18, 25, 40)"}


def test_drop_counts_per_node_and_the_holdout_is_of_usable_rows(csv: Path) -> None:
    cfg = config(csv)
    job = prepare_job(cfg)
    m = job.missing
    assert m is not None and m.node_dropped is not None
    train_df, test_df = split_table(cfg)
    usable = train_df["score"].notna() & train_df["hours"].notna() & train_df["lang"].notna()
    assert m.rows == len(train_df) and m.dropped_rows == int((~usable).sum())
    assert m.dropped["passed"] == int(train_df["score"].isna().sum())
    assert m.dropped["hours"] == int(train_df["hours"].isna().sum())
    assert m.test_dropped_rows == 0  # held-out rows are drawn among usable ones
    assert test_df["score"].notna().all() and test_df["hours"].notna().all()
    n_usable = int(usable.sum()) + len(test_df)
    assert len(test_df) == round(0.25 * n_usable)  # a quarter of the usable rows
    # per node: the rows its school lost, in node order; school 39 lost all: no node
    assert len(job.node_names) == 39 and "39" not in job.node_names
    lost = (~usable).groupby(train_df["school"]).sum()
    assert m.node_dropped.tolist() == [int(lost[int(name)]) for name in job.node_names]
    assert m.dropped_outside == int(lost[39]) and m.node_dropped.sum() + lost[39] == m.dropped_rows
    assert len(job.y) == int(usable.sum())


def test_impute_uses_the_nodes_rows_only_and_counts_per_node(csv: Path) -> None:
    cfg = config(csv, missing={"default": "impute", "columns": {"hours": "indicator"}})
    job = prepare_job(cfg)
    pre, m = job.preprocessor, job.missing
    assert pre is not None and m is not None and m.node_imputed is not None
    train_df, test_df = split_table(cfg)
    kept = train_df[train_df["score"].notna()]  # only a missing target drops
    hours = {c.name: c for c in pre.columns}["hours"]
    assert hours.fill == pytest.approx(kept["hours"].mean())  # not the holdout's, not all rows'
    assert hours.fill != pytest.approx(pd.concat([kept, test_df])["hours"].mean())
    assert pre.derive[0].statistics[0][1] == train_df["score"].median()
    assert "hours_missing" in job.feature_names
    assert m.imputed == {
        "hours": int(kept["hours"].isna().sum()),
        "lang": int(kept["lang"].isna().sum()),
        "band": 0,
    }
    assert m.dropped == {"passed": int(train_df["score"].isna().sum())}
    assert int(m.node_imputed.sum()) == m.imputed_values
    assert m.test_imputed_values > 0
    assert m.first(5).node_imputed is not None and len(m.first(5).node_imputed) == 5
    line = missing_line(m)
    assert line is not None and f"{m.imputed_values:,} values imputed" in line


def test_metrics_json_carries_the_counts_compactly(csv: Path) -> None:
    job = prepare_job(config(csv, missing={"columns": {"lang": "impute"}}))
    m = job.missing
    assert m is not None and m.node_dropped is not None and m.node_imputed is not None
    entry = json.loads(json.dumps(build_metrics(job, [], None, status="finished")))["missing"]
    assert entry["policy"] == {"passed": "drop", "hours": "drop", "lang": "impute", "band": "drop"}
    assert entry["train"]["dropped"] == m.dropped_rows
    assert entry["train"]["imputed"] == {"lang": m.imputed["lang"]}
    assert entry["test"]["rows"] == m.test_rows
    nodes = entry["nodes"]
    assert decode_counts(nodes["dropped"], job.n_nodes) == m.node_dropped.tolist()
    assert decode_counts(nodes["imputed"], job.n_nodes) == m.node_imputed.tolist()
    assert nodes["with_dropped"] == int(np.count_nonzero(m.node_dropped))


def test_counts_stay_small_at_30000_nodes() -> None:
    rng = np.random.default_rng(0)
    counts = rng.choice([0, 0, 0, 1, 2], 30_000)
    text = encode_counts(counts)
    assert decode_counts(text, 30_000) == counts.tolist()
    assert len(text) < 20_000
    assert len(encode_counts(np.zeros(30_000, dtype=int))) < 400
    with pytest.raises(ValueError, match="non-negative"):
        encode_counts([-1])


def test_iid_partitions_count_drops_in_total_only(csv: Path) -> None:
    cfg = config(csv).model_copy(
        update={
            "partition": config(csv).partition.model_copy(
                update={"scheme": "iid", "nodes": 7, "column": None}
            )
        }
    )
    job = prepare_job(cfg)
    m = job.missing
    assert m is not None and m.node_dropped is None and m.dropped_outside == m.dropped_rows > 0
    assert m.node_imputed is not None and len(m.node_imputed) == 7


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        (
            {
                "derive": [
                    {"name": "passed", "expr": "score > 6"},
                    {"name": "band", "expr": "scroe"},
                ]
            },
            "data.derive[1].expr",
            "unknown column 'scroe' (did you mean 'score'?) (columns: school, score,",
        ),
        (
            {"derive": [{"name": "passed", "expr": "lang > 1"}, BAND]},
            "data.derive[0].expr",
            "column 'lang' is not numeric",
        ),
        (
            {"derive": [{"name": "passed", "expr": "__import__('os').getcwd()"}, BAND]},
            "data.derive[0].expr",
            "unknown function",
        ),
        (
            {"missing": {"columns": {"passed": "impute"}}},
            "data.missing.columns.passed",
            "the target is never imputed",
        ),
        (
            {"missing": {"columns": {"hour": "impute"}}},
            "data.missing.columns.hour",
            "'hour' is not the target or a feature (did you mean 'hours'?)",
        ),
    ],
)
def test_errors_name_the_field(csv: Path, data: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        prepare_job(config(csv, **data))
    assert caught.value.field == field
    assert message in caught.value.message


def test_the_job_file_refuses_a_policy_it_does_not_know(csv: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.missing\.default"):
        config(csv, missing={"default": "mean"})
    with pytest.raises(ConfigError, match="'x' derived twice"):
        config(csv, derive=[{"name": "x", "expr": "1"}, {"name": "x", "expr": "2"}])


def test_data_check_shows_the_policy_per_column_and_node(csv: Path) -> None:
    report = check_job(config(csv, missing={"columns": {"lang": "indicator"}}))
    by_name = {c.name: c for c in report.columns}
    assert by_name["passed"].derived and by_name["passed"].role == "target"
    assert by_name["lang"].policy == "indicator" and by_name["lang"].imputed > 0
    assert by_name["hours"].policy == "drop" and by_name["hours"].dropped > 0
    assert report.node_dropped is not None
    assert report.rows - report.usable_rows == report.dropped_rows
    assert sum(n for _, _, n in count_histogram(report.node_dropped)) == len(report.node_sizes)
    assert "data.missing can impute them" in " ".join(report.warnings)


def test_count_histogram_bins() -> None:
    assert count_histogram((0, 1, 2, 3, 4, 9)) == [
        (0, 0, 1),
        (1, 1, 1),
        (2, 3, 2),
        (4, 7, 1),
        (8, 15, 1),
    ]
    assert count_histogram(()) == []


@pytest.mark.parametrize(
    "policy",
    [
        {},
        {"missing": {"default": "impute"}},
        {"missing": {"default": "indicator", "columns": {"lang": "drop"}}},
    ],
)
def test_a_deployment_counts_what_the_policy_did_from_the_statistics_totals(
    csv: Path, policy: dict[str, Any]
) -> None:
    """The AI provider of a deployment sees no row: what the policy dropped and imputed in
    the nodes' part comes from the statistics rounds' totals alone, and says what the
    pooled count says (per node counts it cannot know: none)."""
    cfg = config(csv, **policy)
    job = prepare_job(cfg)
    pre = job.preprocessor
    assert pre is not None and pre.statistics_rounds == 2  # the target's median first
    rows = split_table(cfg)[0].reset_index(drop=True)
    totals: list = []
    for r in range(pre.statistics_rounds):
        plan, counted = pre.refitted(totals, standardize=True).counted(rows, r)
        totals.append(plan.totals(plan.vector(counted)))
    deployed = rescale_job(job, totals, nodes=job.n_nodes)
    got, want = deployed.missing, job.missing
    assert got is not None and want is not None
    assert (got.rows, got.dropped_rows, got.dropped, got.imputed) == (
        want.rows,
        want.dropped_rows,
        want.dropped,
        want.imputed,
    )
    assert (got.test_rows, got.test_dropped_rows) == (want.test_rows, want.test_dropped_rows)
    assert got.node_dropped is None and got.node_imputed is None
    assert deployed.statistics is not None
    assert (deployed.statistics.rounds, deployed.statistics.nodes) == (2, job.n_nodes)
    assert not re.search(r"on [\d,]+ nodes", missing_line(got) or "")  # none per node
    # What the replay's nodes count adds up to the totals the deployment's nodes sent.
    vectors = deployed.statistics_vectors
    assert vectors is not None
    last = pre.statistics_plan().totals(vectors[1].sum(axis=0))
    assert last.rows == totals[1].rows

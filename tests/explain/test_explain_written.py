"""DIR/explanations.json at a job's end, on a constructed job whose important feature is
known, and ``tessera report --config`` recomputing it from the model file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tessera.config import JobConfig, ReportSection, parse_config
from tessera.explain import job as explain
from tessera.jobs.prepared import PreparedJob, prepare_job
from tessera.reports import explain_views, write_report
from tessera.testing import example_config
from tessera.weights import Vector, digest, save_file

JOB = """
[job]
name = "constructed"
seed = 3
task = "classification"

[data]
source = "csv"
dataset = "{path}"
target = "passed"
features = ["noise", "signal", "colour"]
categorical = ["colour"]
holdout = {{ fraction = 0.3 }}

[partition]
scheme = "natural"
column = "school"

[model]
kind = "linear"

[recipe]
clip_norm = 5.0

[federation]
rounds = 1

[secure]
enabled = false

[baseline]
enabled = false

[report]
groups = ["sex"]
explain_rows = 300
"""


def _table(path: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 1200
    signal = rng.normal(size=n)
    frame = pd.DataFrame(
        {
            "school": rng.integers(0, 20, n),
            "noise": rng.normal(size=n),
            "signal": signal,
            "colour": rng.choice(["red", "green", "blue"], n),
            "sex": rng.choice(["F", "M"], n),
            "passed": (signal > 0).astype(int),  # only the signal decides
        }
    )
    frame.loc[frame.index[:12], "sex"] = "X"  # a group too small to show (about 4 held out)
    csv = path / "table.csv"
    frame.to_csv(csv, index=False)
    return csv


@pytest.fixture(scope="module")
def constructed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, JobConfig, PreparedJob]:
    folder = tmp_path_factory.mktemp("constructed")
    toml = folder / "job.toml"
    toml.write_text(JOB.format(path=_table(folder)))
    from tessera.config import load_config

    cfg = load_config(toml)
    return toml, cfg, prepare_job(cfg)


def _model(job: PreparedJob) -> Vector:
    """A linear model that reads the signal only: class 1 when it is positive."""
    column = next(f for f in explain.features_of(job) if f.name == "signal").columns[0]
    arrays = {k: np.zeros_like(v) for k, v in job.layout.unflatten(job.initial_weights).items()}
    weight = next(k for k, v in arrays.items() if v.ndim == 2)
    assert arrays[weight].shape[0] == 2
    arrays[weight][0, column], arrays[weight][1, column] = -4.0, 4.0
    return job.layout.flatten(arrays)


def test_the_written_explanations_rank_the_known_feature_first(
    constructed: tuple[Path, JobConfig, PreparedJob], tmp_path: Path
) -> None:
    _, _, job = constructed
    path = explain_views(tmp_path, job, _model(job), model_digest="sha256:ab")
    assert path == tmp_path / "explanations.json"
    e = json.loads(path.read_text())
    assert e["format"] == "tessera-explanations/v1" and e["model"] == "sha256:ab"
    assert e["rows"] == 300 and e["test_rows"] == len(job.test) > 300
    imp = e["importance"]
    assert imp["metric"] == "accuracy" and imp["baseline"] > 0.97  # the scaled signal's sign
    assert imp["features"][0]["feature"] == "signal" and imp["features"][0]["mean"] > 0.3
    assert {f["feature"] for f in imp["features"]} == {"noise", "signal", "colour"}
    assert all(f["mean"] == 0.0 for f in imp["features"][1:])
    attr = e["attributions"]
    assert attr["features"][0]["feature"] == "signal"
    assert all(f["mean_abs"] == 0.0 for f in attr["features"][1:])
    assert e["saliency"] is None and e["skipped"] == {"saliency": "not an image model"}
    (sex,) = e["fairness"]
    groups = {g["group"]: g for g in sex["groups"]}
    assert set(groups) == {"F", "M", "X"} and sex["min_count"] == 10
    assert sum(g["count"] for g in groups.values()) == len(job.test)
    assert groups["X"]["suppressed"] and groups["X"]["metric"] is None
    assert groups["X"]["mean_prediction"] is None and 0 < groups["X"]["count"] < 10
    for name in ("F", "M"):
        assert not groups[name]["suppressed"] and groups[name]["metric"] > 0.95
    assert {sex["best"], sex["worst"]} <= {"F", "M"}


def test_the_report_shows_them(
    constructed: tuple[Path, JobConfig, PreparedJob], tmp_path: Path
) -> None:
    _, _, job = constructed
    explain_views(tmp_path, job, _model(job), model_digest="sha256:ab")
    metrics = {"job": "constructed", "secure": False, "model": {"digest": "sha256:ab"}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    text = write_report(tmp_path).read_text(encoding="utf-8")
    start = text.index('<section id="fairness">')
    fairness = text[start : text.index("</section>", start)]
    assert "By sex" in fairness and "suppressed: fewer than 10 rows" in fairness
    assert fairness.count("<img") == 1
    start = text.index('<section id="explanations">')
    section = text[start : text.index("</section>", start)]
    assert section.count("<img") == 2 and "signal" in section and "Stale" not in section


def test_explain_off_removes_an_older_file(
    constructed: tuple[Path, JobConfig, PreparedJob], tmp_path: Path
) -> None:
    _, cfg, job = constructed
    (tmp_path / "explanations.json").write_text("{}")
    off = cfg.model_copy(update={"report": ReportSection(explain=False)})
    quiet = PreparedJob(**{**job.__dict__, "config": off})
    assert explain_views(tmp_path, quiet, _model(job), model_digest=None) is None
    assert not (tmp_path / "explanations.json").exists()


def test_failures_are_written_not_raised(
    constructed: tuple[Path, JobConfig, PreparedJob],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, _, job = constructed
    path = explain_views(tmp_path, job, np.zeros(3, np.float32), model_digest=None)
    assert path is not None
    skipped = json.loads(path.read_text())["skipped"]
    assert {"importance", "attributions", "fairness:sex"} <= set(skipped)
    assert "expected (12,)" in skipped["importance"]

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(explain, "write_explanations", broken)
    path = explain_views(tmp_path, job, _model(job), model_digest="sha256:cd")
    assert path is not None
    assert json.loads(path.read_text())["error"] == "RuntimeError('out of memory')"
    (tmp_path / "metrics.json").write_text(json.dumps({"job": "constructed"}))
    text = write_report(tmp_path).read_text(encoding="utf-8")
    assert "No explanations: RuntimeError(&#x27;out of memory&#x27;)" in text


def test_report_config_recomputes_them_from_the_model_file(
    constructed: tuple[Path, JobConfig, PreparedJob], tmp_path: Path
) -> None:
    from tessera.cli import app

    toml, _, job = constructed
    model = save_file(tmp_path / "model.safetensors", job.layout.unflatten(_model(job)))
    (tmp_path / "metrics.json").write_text(
        json.dumps({"job": "constructed", "secure": False, "model": {"digest": model}})
    )
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--config", str(toml)])
    assert result.exit_code == 0, result.output
    e = json.loads((tmp_path / "explanations.json").read_text())
    assert e["model"] == model == digest((tmp_path / "model.safetensors").read_bytes())
    assert e["importance"]["features"][0]["feature"] == "signal"
    assert "By sex" in (tmp_path / "report.html").read_text(encoding="utf-8")
    other = tmp_path / "other.toml"
    other.write_text(toml.read_text().replace('"constructed"', '"other"'))
    wrong = CliRunner().invoke(app, ["report", str(tmp_path), "--config", str(other)])
    assert wrong.exit_code == 2 and "not 'constructed'" in wrong.output
    (tmp_path / "model.safetensors").unlink()
    gone = CliRunner().invoke(app, ["report", str(tmp_path), "--config", str(toml)])
    assert gone.exit_code == 2 and "no model.safetensors" in gone.output


def test_an_image_job_stores_its_saliency_map_as_numbers() -> None:
    job = prepare_job(example_config("digits.toml"))
    settings = ReportSection(explain_rows=50, repeats=1, steps=4)
    e = explain.explanations(job, job.initial_weights, settings)
    assert e["saliency"]["shape"] == [8, 8]
    values = np.array(e["saliency"]["values"])
    assert values.shape == (8, 8) and np.isfinite(values).all() and values.max() > 0
    assert len(e["importance"]["features"]) == 64 and e["fairness"] == []


def test_a_job_without_held_out_rows_says_so() -> None:
    cfg = example_config("digits.toml")
    raw = cfg.model_dump(mode="json")
    raw["data"]["holdout"] = {"fraction": 0.0}
    raw["report"] = {"groups": ["target"]}
    job = prepare_job(parse_config(raw))
    e = explain.explanations(job, job.initial_weights)
    assert e["importance"] is None and "0 rows" in e["skipped"]["importance"]
    assert "fairness" in e["skipped"]

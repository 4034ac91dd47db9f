"""metrics.json round by round: the same content as at once, at a cost that does not grow."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from tessera.config import load_config
from tessera.jobs.prepared import PreparedJob, prepare_job
from tessera.jobs.records import RoundRecord
from tessera.reports import MetricsWriter, build_metrics, metrics

EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "tessera" / "examples"


@pytest.fixture(scope="module")
def job() -> PreparedJob:
    return prepare_job(load_config(EXAMPLES / "digits.toml"))


def rounds(n: int, nodes: int) -> list[RoundRecord]:
    return [
        RoundRecord(
            round=r,
            selected=nodes,
            participants=nodes - r % 3,
            skipped=False,
            train_loss=1.0 / (r + 1),
            included=tuple(f"node-{i:06d}" for i in range(nodes - r % 3)),
            value=0.5 + r / 100,
            seconds=0.25,
            bytes_up=100 * nodes,
            bytes_down=50 * nodes,
        )
        for r in range(n)
    ]


def test_the_file_says_what_build_metrics_says(tmp_path: Path, job: PreparedJob) -> None:
    writer = MetricsWriter(tmp_path, job)
    records = rounds(7, 40)
    for record in records:
        writer.add_round(record, model_digest="d")
        running = json.loads((tmp_path / "metrics.json").read_text())
        assert running["status"] == "running" and running["final"]["round"] == record.round + 1
    final = writer.finish(model_digest="d")
    assert final == json.loads(
        json.dumps(build_metrics(job, records, None, status="finished", model_digest="d"))
    )
    assert final["final"]["value"] == pytest.approx(0.56)
    # Who contributed, small: a compressed bitset over the nodes, not thousands of ids.
    assert [metrics.decode_included(r["included"], job.n_nodes) for r in final["rounds"]] == [
        list(r.included) for r in records
    ]
    lines = (tmp_path / "rounds.jsonl").read_text().splitlines()
    assert [RoundRecord.from_json(json.loads(line)).included for line in lines] == [
        r.included for r in records
    ]


def test_each_round_is_serialised_once(
    tmp_path: Path, job: PreparedJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round's cost must not grow with the rounds before it (the 3x slow-down)."""
    calls: list[int] = []
    real = metrics.round_entry

    def counted(record: RoundRecord, n_nodes: int) -> dict[str, object]:
        calls.append(record.round)
        return real(record, n_nodes)

    monkeypatch.setattr(metrics, "round_entry", counted)
    facts: list[PreparedJob] = []
    real_facts = metrics._facts

    def counted_facts(j: PreparedJob, *rest: Any) -> dict[str, Any]:
        facts.append(j)
        return real_facts(j, *rest)

    monkeypatch.setattr(metrics, "_facts", counted_facts)
    writer = MetricsWriter(tmp_path, job)
    for record in rounds(30, 5):
        writer.add_round(record)
    writer.finish()
    assert calls == list(range(30))  # once each, in order; never the earlier ones again
    assert facts == [job]  # what the job is (sizes, config) is worked out once, not per round


def before_the_writer(records: list[RoundRecord], n_nodes: int) -> list[dict[str, Any]]:
    """metrics.json's rounds as build_metrics made them before MetricsWriter (verbatim),
    and the contributors' bitset, a regression's rmse and mae, a private job's epsilon
    (null here), the round's simulated seconds, its bytes per node and its mean local
    steps (null here) added since."""

    def finite(x: float) -> float | None:
        return x if math.isfinite(x) else None

    return [
        {
            **{k: v for k, v in dataclasses.asdict(r).items() if k != "included"},
            "train_loss": finite(r.train_loss),
            "value": finite(r.value),
            "rmse": finite(r.rmse),
            "mae": finite(r.mae),
            "epsilon": finite(r.epsilon),
            "loss_before": finite(r.loss_before),
            "norm_ratio": finite(r.norm_ratio),
            "mean_steps": finite(r.mean_steps),
            "included": metrics.encode_included(r.included, n_nodes),
            "simulated_seconds": r.virtual_round_seconds,
            "bytes_up_per_contributor": r.bytes_up / r.participants if r.participants else None,
            "bytes_down_per_contributor": r.bytes_down / r.selected if r.selected else None,
        }
        for r in records
    ]


def test_rounds_read_as_before_the_writer(tmp_path: Path, job: PreparedJob) -> None:
    """Same keys in the same order, NaN as null, a skipped and a blamed round included."""
    records = [
        *rounds(3, 12),
        RoundRecord(round=3, selected=12, participants=0, skipped=True),  # NaN loss and value
        dataclasses.replace(
            rounds(5, 12)[4],
            blamed=("agg-2: sum does not match its commitment",),
            aggregators_failed=1,
            virtual_seconds=812.5,
            cpu_seconds=0.75,
        ),
    ]
    writer = MetricsWriter(tmp_path, job)
    for record in records:
        writer.add_round(record)
    final = writer.finish()
    expected = json.loads(json.dumps(before_the_writer(records, job.n_nodes)))
    assert final["rounds"] == expected
    assert [list(r) for r in final["rounds"]] == [list(r) for r in expected]
    assert final["final"] == {"value": pytest.approx(0.54), "round": 5, "rmse": None, "mae": None}
    assert final["seconds_total"] == sum(r.seconds for r in records)
    assert final["simulated_seconds"] == sum(r.virtual_round_seconds for r in records)
    contributions = sum(r.participants for r in records)
    assert final["bytes_up_per_contributor"] == sum(r.bytes_up for r in records) / contributions


def test_no_job_name_or_status_is_mistaken_for_the_rounds(tmp_path: Path, job: PreparedJob) -> None:
    """The rounds are spliced into the text at a mark; no name may collide with it."""
    config = job.config.model_copy(
        update={"job": job.config.job.model_copy(update={"name": "__tessera_rounds__"})}
    )
    named = dataclasses.replace(job, config=config)
    writer = MetricsWriter(tmp_path, named)
    writer.add_round(rounds(1, 3)[0])
    final = writer.finish(status="__tessera_rounds__")
    assert final["job"] == final["status"] == "__tessera_rounds__"
    assert [r["round"] for r in final["rounds"]] == [0]


def test_a_crash_keeps_every_closed_round(tmp_path: Path, job: PreparedJob) -> None:
    """Never finished (the process died): each closed round is on disk, ids included."""
    writer = MetricsWriter(tmp_path, job)
    records = rounds(4, 6)
    for record in records:
        writer.add_round(record)
    # No finish(), no close: read as another process would after the crash.
    lines = (tmp_path / "rounds.jsonl").read_text().splitlines()
    assert [RoundRecord.from_json(json.loads(line)) for line in lines] == records
    running = json.loads((tmp_path / "metrics.json").read_text())
    assert running["status"] == "running" and len(running["rounds"]) == 4
    writer.finish()


def test_who_contributed_stays_small_at_30000_nodes() -> None:
    """metrics.json's ``included``: a bitset, not ids (issue 12): N/8 bytes at most."""
    n = 30_000
    everyone = [f"node-{i:06d}" for i in range(n)]
    for included, at_most in [
        (everyone, 100),
        ([], 100),
        (everyone[::2], 200),
        (everyone[::7], 5_200),
    ]:
        text = metrics.encode_included(included, n)
        assert len(text) <= at_most, (len(included), len(text))
        assert metrics.decode_included(text, n) == included
    with pytest.raises(ValueError, match="not one of the job's"):
        metrics.encode_included(["node-030000"], n)
    with pytest.raises(ValueError, match="not a node id"):
        metrics.encode_included(["agg-2"], n)


def test_what_a_deployment_learns_later_is_in_the_next_write(
    tmp_path: Path, job: PreparedJob
) -> None:
    """``tessera up`` learns the missing counts and the statistics from the statistics
    rounds' totals, after the writer was made: the next round's write says them."""
    from tessera.jobs.prepared import FederatedFit

    writer = MetricsWriter(tmp_path, dataclasses.replace(job, statistics=None))
    writer.add_round(rounds(1, job.n_nodes)[0])
    assert json.loads((tmp_path / "metrics.json").read_text())["statistics"] is None
    fit = FederatedFit(rounds=2, nodes=7, secure=True, columns={"x": {"count": 3}})
    writer.learned(dataclasses.replace(job, statistics=fit))
    writer.add_round(rounds(2, job.n_nodes)[1])
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["statistics"] == {
        "rounds": 2,
        "nodes": 7,
        "secure": True,
        "columns": {"x": {"count": 3}},
        "noised": False,  # no private job's noise in them
    }
    assert len(written["rounds"]) == 2

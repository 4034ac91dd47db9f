"""metrics.json round by round: the same content as at once, at a cost that does not grow."""

from __future__ import annotations

import json
from pathlib import Path

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
            included=tuple(f"node-{i:05d}" for i in range(nodes - r % 3)),
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
    assert all("included" not in r for r in final["rounds"])
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

    def counted(record: RoundRecord) -> dict[str, object]:
        calls.append(record.round)
        return real(record)

    monkeypatch.setattr(metrics, "round_entry", counted)
    writer = MetricsWriter(tmp_path, job)
    for record in rounds(30, 5):
        writer.add_round(record)
    writer.finish()
    assert calls == list(range(30))  # once each, in order; never the earlier ones again

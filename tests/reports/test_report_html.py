"""DIR/report.html: every section, inline PNG plots, escaping, missing pieces said."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
from typer.testing import CliRunner

from tessera.reports.html import SECTIONS, build_report, write_report

NASTY = '<script>alert("x")</script>'


def _metrics(*, job: str = "tiny-digits", private: bool = True) -> dict[str, Any]:
    rounds = [
        {
            "round": r,
            "value": 0.6 + 0.05 * r,
            "selected": 10,
            "participants": 9 - r,
            "dropped": 1,
            "late": r,
            "stragglers": 0,
            "seconds": 0.1,
            "simulated_seconds": 2.5 + r,
            "bytes_up_per_contributor": 4000.0,
            "bytes_down_per_contributor": 3000.0,
            "epsilon": 0.5 * (r + 1) if private else None,
            "excluded": ["node-000003: flagged (score -3.1)"] if r == 2 else [],
        }
        for r in range(3)
    ]
    return {
        "tessera": "0.0.test",
        "status": "finished",
        "job": job,
        "task": "classification",
        "metric": "accuracy",
        "secure": True,
        "rounds": rounds,
        "final": {"value": 0.7, "round": 3, "rmse": None, "mae": None},
        "centralized": {
            "value": 0.8,
            "rmse": None,
            "mae": None,
            "epochs": 3,
            "curve": [{"round": e, "value": 0.8} for e in (1, 2, 3)],
        },
        "nodes": 20,
        "records": {"train": 1400, "test": 360},
        "features": ["pixel_0", f"col {NASTY}"],
        "privacy": (
            {
                "epsilon": 1.5,
                "delta": 1e-5,
                "budget": 4.0,
                "on_budget": "stop",
                "mechanism": "distributed Skellam",
            }
            if private
            else None
        ),
        "model": {"kind": "mlp", "parameters": 1000, "digest": "ab"},
        "simulated_seconds": 10.5,
        "seconds_total": 0.3,
        "contributions": {
            "method": "shapley",
            "rounds_valued": 3,
            "scores": {"node-000001": 0.2, "node-000003": -3.1, f"node {NASTY}": 0.0},
            "evidence": {"node-000001": 5, "node-000003": 5},
            "flagged": ["node-000003"],
            "policy": "exclude",
            "excluded": {"node-000003": {"after_round": 1, "reason": f"flagged {NASTY}"}},
        },
        "config": {
            "job": {"name": job, "seed": 1},
            "data": {
                "source": "sklearn",
                "dataset": "digits",
                "target": "target",
                "holdout": {"fraction": 0.2},
            },
            "partition": {"scheme": "dirichlet"},
        },
    }


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, str] = {}  # id -> its text
        self.h2_in: set[str] = set()
        self.imgs: list[str] = []
        self.scripts = 0
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self._open = str(a["id"])
            self.sections[self._open] = ""
        elif tag == "h2" and self._open:
            self.h2_in.add(self._open)
        elif tag == "img":
            self.imgs.append(str(a["src"]))
        elif tag == "script":
            self.scripts += 1
        elif tag in ("link",) or (tag == "style" and a.get("src")):
            raise AssertionError(f"external resource: {tag} {a}")

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open:
            self.sections[self._open] += data


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


def _png(src: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    data = base64.b64decode(src[len(prefix) :], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return data


def test_every_section_and_every_plot_is_inline(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps(_metrics()))
    path = write_report(tmp_path)
    assert path == tmp_path / "report.html"
    page = _parse(path.read_text(encoding="utf-8"))
    ids = [sid for sid, _ in SECTIONS]
    assert list(page.sections) == ids
    assert page.h2_in == set(ids)
    # curve, participation, privacy, cost
    assert len(page.imgs) == 4
    for src in page.imgs:
        _png(src)
    assert page.scripts == 0
    assert "0.875" in page.sections["summary"]  # 0.7 / 0.8
    assert "node-000003" in page.sections["contributions"]
    assert "distributed Skellam" in page.sections["privacy"]
    assert "one seed" in page.sections["model-card"].lower()


def test_strings_from_the_job_are_escaped(tmp_path: Path) -> None:
    text = build_report(_metrics(job=f"job {NASTY}"), tmp_path)
    assert "<script>" not in text
    assert "&lt;script&gt;" in text
    page = _parse(text)
    assert page.scripts == 0
    assert NASTY in page.sections["summary"]  # shown as text, not run
    assert NASTY in page.sections["contributions"]


def test_missing_audit_log_and_privacy_are_said(tmp_path: Path) -> None:
    m = _metrics(private=False)
    del m["contributions"]
    page = _parse(build_report(m, tmp_path))
    assert "No audit log" in page.sections["audit"]
    assert "not differentially private" in page.sections["privacy"]
    assert "no contribution indicators" in page.sections["contributions"]
    assert len(page.imgs) == 3


def _signed_log(out: Path) -> str:
    from tessera.audit import AuditWriter
    from tessera.crypto.keys import NodeKeys
    from tessera.weights import save_file

    keys = NodeKeys.generate()
    key = keys.public.signing.hex()
    (out / "audit.key.pub").write_text(key + "\n", encoding="ascii")
    save_file(out / "model.safetensors", {"w": np.zeros(3, dtype=np.float32)})
    audit = AuditWriter(out / "audit.jsonl", keys)
    audit.job_submitted("tiny-digits", "0" * 64)
    audit.participants([f"node-{i:06d}" for i in range(3)])
    audit.model_final(out / "model.safetensors", rounds=0, status="finished")
    return key


def test_the_audit_log_is_verified_and_its_signer_named(tmp_path: Path) -> None:
    key = _signed_log(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps(_metrics()))
    page = _parse(write_report(tmp_path).read_text(encoding="utf-8"))
    audit = page.sections["audit"]
    assert "Verified" in audit and "3 records" in audit
    assert key in audit and "the run's own key" in audit


def test_a_broken_audit_log_is_said(tmp_path: Path) -> None:
    _signed_log(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not the model")
    page = _parse(build_report(_metrics(), tmp_path))
    assert "Broken" in page.sections["audit"]
    assert "model_final" in page.sections["audit"]


def test_the_command_writes_the_report(tmp_path: Path) -> None:
    from tessera.cli import app

    missing = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert missing.exit_code == 2
    (tmp_path / "metrics.json").write_text(json.dumps(_metrics()))
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


# --- tree, explanations, fairness ----------------------------------------------------


def _with_tree(m: dict[str, Any]) -> dict[str, Any]:
    m["tree"] = {"k": 3, "group_size": 16, "depth": 2}
    for r in m["rounds"]:
        r.update(
            tree_levels=[27, 4, 1],
            tree_aggregators=96,
            tree_backups=32,
            tree_leaf_sizes=[15, 1, 16, 26],
        )
    return m


def _explanations(**changes: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "format": "tessera-explanations/v1",
        "job": "tiny-digits",
        "model": "ab",
        "task": "classification",
        "test_rows": 360,
        "rows": 300,
        "seed": 1,
        "repeats": 3,
        "steps": 32,
        "seconds": 0.5,
        "importance": {
            "metric": "accuracy",
            "baseline": 0.9,
            "features": [
                {"feature": f"col {NASTY}", "mean": 0.3, "std": 0.01},
                {"feature": "pixel_0", "mean": 0.0, "std": 0.0},
            ],
        },
        "attributions": {
            "method": "integrated gradients",
            "output": "the predicted class's logit",
            "gap": 0.001,
            "features": [
                {"feature": f"col {NASTY}", "mean_abs": 1.5, "mean": -0.5},
                {"feature": "pixel_0", "mean_abs": 0.0, "mean": 0.0},
            ],
        },
        "saliency": {"shape": [2, 2], "values": [[0.1, 0.2], [0.3, 0.4]]},
        "fairness": [
            {
                "column": f"sex {NASTY}",
                "metric": "accuracy",
                "min_count": 10,
                "groups": [
                    {
                        "group": "F",
                        "count": 200,
                        "suppressed": False,
                        "metric": 0.91,
                        "mean_prediction": 4.5,
                        "mean_label": 4.4,
                    },
                    {
                        "group": f"M {NASTY}",
                        "count": 157,
                        "suppressed": False,
                        "metric": 0.88,
                        "mean_prediction": 4.9,
                        "mean_label": 5.0,
                    },
                    {
                        "group": "rare",
                        "count": 3,
                        "suppressed": True,
                        "metric": None,
                        "mean_prediction": None,
                        "mean_label": None,
                    },
                ],
                "best": "F",
                "worst": f"M {NASTY}",
                "gap": 0.03,
                "prediction_gap": 0.4,
            }
        ],
        "skipped": {"fairness:lea": "no column 'lea' in the table"},
    }
    e.update(changes)
    return e


def test_the_tree_explanations_and_fairness_are_shown(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps(_with_tree(_metrics())))
    (tmp_path / "explanations.json").write_text(json.dumps(_explanations()))
    text = write_report(tmp_path).read_text(encoding="utf-8")
    assert "<script>" not in text
    page = _parse(text)
    # curve, participation, privacy, cost, tree, importance, attributions, saliency, fairness
    assert len(page.imgs) == 9
    for src in page.imgs:
        _png(src)
    tree = page.sections["tree"]
    assert "27 / 4 / 1" in tree and "15 x 1, 16 x 26" in tree and "96" in tree
    ex = page.sections["explanations"]
    assert NASTY in ex and "Permutation importance" in ex and "Integrated gradients" in ex
    assert "300 of the 360 held-out rows" in ex and "Saliency" in ex
    assert "Stale" not in ex
    fair = page.sections["fairness"]
    assert f"By sex {NASTY}" in fair and f"M {NASTY}" in fair
    assert "suppressed: fewer than 10 rows" in fair and "0.91" in fair
    assert "By lea" in fair and "no column 'lea'" in fair
    assert f"sex {NASTY} only" in page.sections["model-card"]


def test_a_suppressed_group_shows_no_metric(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps(_metrics()))
    e = _explanations()
    rare = e["fairness"][0]["groups"][2]
    rare.update(metric=0.123456, mean_prediction=7.654321)  # were it there, it stays hidden
    (tmp_path / "explanations.json").write_text(json.dumps(e))
    fair = _parse(write_report(tmp_path).read_text(encoding="utf-8")).sections["fairness"]
    assert "rare" in fair and "0.1235" not in fair and "7.654" not in fair


def test_missing_tree_and_explanations_are_said(tmp_path: Path) -> None:
    plain = _metrics()
    plain["secure"] = False
    page = _parse(build_report(plain, tmp_path))
    assert "Plaintext job: no tree" in page.sections["tree"]
    assert "No explanations.json" in page.sections["explanations"]
    assert "No explanations.json" in page.sections["fairness"]
    assert "No explanation or fairness analysis" in page.sections["model-card"]
    page = _parse(build_report(_metrics(), tmp_path))
    assert "hold no tree shape" in page.sections["tree"]


def test_no_groups_no_saliency_and_a_stale_model_are_said(tmp_path: Path) -> None:
    e = _explanations(fairness=[], skipped={"saliency": "not an image model"}, saliency=None)
    e["model"] = "cd"
    (tmp_path / "explanations.json").write_text(json.dumps(e))
    page = _parse(build_report(_metrics(), tmp_path))
    assert "names no group columns" in page.sections["fairness"]
    assert "No saliency map: not an image model" in page.sections["explanations"]
    assert "Stale" in page.sections["explanations"]
    assert "no metrics per group were asked for" in page.sections["model-card"]
    (tmp_path / "explanations.json").write_text("{not json")
    page = _parse(build_report(_metrics(), tmp_path))
    assert "explanations.json is unreadable" in page.sections["explanations"]

"""The Chem97 demo's trust report, opened in headless Chromium: every section with its
heading, every plot loaded, the explanations and metrics per group naming gender, no
console errors. The demo runs short (2 rounds, a twentieth of the schools a round, one
epoch of centralized baseline): the report's shape, not the model's quality."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tessera.reports.html import SECTIONS

EXAMPLE = Path(__file__).resolve().parents[2] / "src" / "tessera" / "examples" / "chem97.toml"
SHORT = {
    "rounds = 150": "rounds = 2",
    "fraction = 0.2": "fraction = 0.05",
    "min_participants = 50": "min_participants = 20",
}


def short_demo(folder: Path) -> Path:
    """examples/chem97.toml, cut short, as DIR/job.toml."""
    text = EXAMPLE.read_text(encoding="utf-8")
    for old, new in SHORT.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    job = folder / "job.toml"
    job.write_text(text + "\n[baseline]\nepochs = 1\n", encoding="utf-8")
    return job


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("chem97-report")
    job, out = short_demo(folder), folder / "out"
    cmd = [sys.executable, "-c", "from tessera.cli.main import app; app()", "run", str(job)]
    proc = subprocess.run(
        [*cmd, "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "TESSERA_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out / "report.html"


def test_the_chem97_report_reads_in_chromium(page: Any, report: Path) -> None:
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    failed: list[str] = []
    page.on("requestfailed", lambda request: failed.append(request.url[:80]))
    page.goto(report.as_uri())
    page.wait_for_load_state("load")
    assert page.title() == "Tessera report: chem97-schools"
    for sid, title in SECTIONS:
        section = page.locator(f"section#{sid}")
        assert section.count() == 1, sid
        assert section.locator("h2").inner_text() == title
    images = page.locator("img")
    assert images.count() == 7  # curve, participation, cost, tree, importance, IG, fairness
    loaded = page.evaluate(
        "[...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0])"
    )
    assert all(ok for _, ok in loaded), [alt for alt, ok in loaded if not ok]
    assert page.locator("script").count() == 0
    explanations = page.locator("section#explanations").inner_text()
    assert "gender" in explanations and "gcsescore" in explanations
    assert "Permutation importance" in explanations and "Integrated gradients" in explanations
    fairness = page.locator("section#fairness").inner_text()
    assert "By gender" in fairness and "F" in fairness and "M" in fairness
    assert page.locator("section#fairness img").count() == 1
    tree = page.locator("section#tree").inner_text()
    assert "groups per level" in tree and "no tree" not in tree
    assert "Verified" in page.locator("section#audit").inner_text()
    assert errors == [] and failed == []

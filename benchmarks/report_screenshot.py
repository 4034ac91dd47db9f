"""docs/report.png and docs/report-explanations.png: the Chem97 demo's trust report,
as headless Chromium (Debian's ``chromium``, driven by Playwright) shows it.

    .venv/bin/python benchmarks/report_screenshot.py [--rounds 15] [--out runs/report-shot]
    .venv/bin/python benchmarks/report_screenshot.py --report DIR   # an existing DIR/report.html

Runs ``tessera run`` on examples/chem97.toml (a few rounds: the screenshot shows the
report's layout, not a trained model's quality), opens DIR/report.html by file:// and
saves the top of the page (summary and curve) and the explanations and metrics per
group as two PNGs, small enough to keep in the repository.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def run_demo(out: Path, rounds: int) -> None:
    cmd = [sys.executable, "-m", "tessera.cli", "run", str(ROOT / "examples" / "chem97.toml")]
    cmd += ["--out", str(out), "--rounds", str(rounds), "--quiet"]
    subprocess.run(cmd, check=True, env={**os.environ, "TESSERA_THREADS": "1"})


def screenshot(report: Path, top: Path, explanations: Path) -> None:
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("TESSERA_CHROMIUM") or shutil.which("chromium")
    if chromium is None:
        raise SystemExit("no chromium on PATH (apt-get install chromium, or TESSERA_CHROMIUM)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1400})
            page.goto(report.resolve().as_uri())
            page.screenshot(path=str(top))
            box = page.locator("#explanations").bounding_box()
            end = page.locator("#fairness").bounding_box()
            if box is None or end is None:
                raise SystemExit("the report has no explanations or fairness section")
            clip = {
                "x": 0,
                "y": box["y"],
                "width": 1100,
                "height": min(end["y"] + end["height"] - box["y"], 2400),
            }
            page.screenshot(path=str(explanations), full_page=True, clip=clip)
        finally:
            browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "report-shot")
    ap.add_argument("--report", type=Path, help="a job folder already run: skip the run")
    args = ap.parse_args()
    folder = args.report
    if folder is None:
        folder = args.out
        run_demo(folder, args.rounds)
    top, expl = DOCS / "report.png", DOCS / "report-explanations.png"
    screenshot(folder / "report.html", top, expl)
    for path in (top, expl):
        print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()

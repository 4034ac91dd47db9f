"""The README's figures: each comes with the command that prints it, and its counts are true."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FIGURE = re.compile(r"\b\d+(?:\.\d+)?x\b|\|\s*[\d,.]+\s*\|")  # a ratio, or a number in a table
COMMAND = re.compile(r"(benchmarks/[\w/]+\.py|make (?:demo|bench)|tessera (?:run|up|demo))")


# Sections that quote targets or counts, not measurements (the suite size is checked below).
UNMEASURED = {"## Tests", "## Status"}


def sections() -> list[tuple[str, str]]:
    parts = re.split(r"^(#{2,3} .+)$", README, flags=re.M)
    return list(zip(parts[1::2], parts[2::2], strict=True))


def test_every_section_with_figures_names_the_command_that_prints_them() -> None:
    orphans = [
        title
        for title, body in sections()
        if FIGURE.search(body) and not COMMAND.search(body) and title not in UNMEASURED
    ]
    assert orphans == [], f"figures without the command that prints them: {orphans}"


def test_every_command_the_readme_names_exists() -> None:
    for script in set(re.findall(r"benchmarks/[\w/]+\.py", README)):
        assert (ROOT / script).is_file(), f"README names {script}, which does not exist"


def test_the_quoted_suite_size_is_within_a_tenth_of_the_real_one() -> None:
    quoted = re.search(r"whole suite \(about ([\d,]+)\s+tests\)", README)
    assert quoted is not None, "README should say how many tests the suite has"
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    collected = sum(int(n) for n in re.findall(r"^tests/\S+: (\d+)$", out, flags=re.M))
    claimed = int(quoted.group(1).replace(",", ""))
    assert abs(collected - claimed) <= collected / 10, (claimed, collected)

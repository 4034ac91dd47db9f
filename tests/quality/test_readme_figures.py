"""Every figure the README quotes can be traced to what produces it (DESIGN.md:
"every figure the README claims comes from a benchmark that anyone can rerun").

A benchmark figure (a table of measurements, or a ratio such as ``2.15x``) must
sit in a section that names the existing ``benchmarks/*.py`` script printing
it; a ratio anywhere else must be a target (``<= 1.3x``), not a measurement;
and the suite size the README quotes must be within 10% of what pytest collects.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()

SCRIPT = re.compile(r"benchmarks/(\w+\.py)")
RATIO = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)?x\b")
TARGET = re.compile(r"[<>]=\s*$")  # what precedes a ratio that is a target, not a result
NUMBER = re.compile(r"^\s*[\d,.]+(?:\s*/\s*[\d,.]+)?\s*$")
TEST_COUNT = re.compile(r"about\s+([\d,]+)\s+tests\b")


@dataclass(frozen=True, kw_only=True)
class Section:
    title: str
    level: int
    body: str

    @property
    def scripts(self) -> set[str]:
        return set(SCRIPT.findall(self.body))

    def ratios(self) -> list[str]:
        """Ratio figures quoted as results (targets such as ``<= 1.3x`` left out)."""
        return [
            m.group(0)
            for m in RATIO.finditer(self.body)
            if not TARGET.search(self.body[max(0, m.start() - 4) : m.start()])
        ]

    def measured_rows(self) -> list[str]:
        """Table rows holding at least one cell that is only a number (or ``a / b``)."""
        rows = [line for line in self.body.splitlines() if line.startswith("|")]
        return [
            row
            for row in rows
            if not set(row) <= set("|-: ") and any(NUMBER.match(c) for c in row.split("|")[1:-1])
        ]


def sections(text: str) -> list[Section]:
    """The README cut at its headings (outside code blocks), each with the text under it."""
    out: list[Section] = []
    title, level, lines, fenced = "", 0, [], False
    for line in text.splitlines():
        fenced ^= line.startswith("```")
        heading = re.match(r"(#+) (.*)", line) if not fenced else None
        if heading:
            out.append(Section(title=title, level=level, body="\n".join(lines)))
            title, level, lines = heading.group(2), len(heading.group(1)), []
        else:
            lines.append(line)
    out.append(Section(title=title, level=level, body="\n".join(lines)))
    return out


def benchmark_sections(all_sections: list[Section]) -> list[Section]:
    """``## Benchmarks`` and the subsections under it."""
    out: list[Section] = []
    inside = False
    for s in all_sections:
        if s.level == 2:
            inside = s.title == "Benchmarks"
        if inside:
            out.append(s)
    return out


SECTIONS = sections(README)
BENCHMARKS = benchmark_sections(SECTIONS)


def test_the_readme_has_benchmark_sections_with_figures() -> None:
    titles = [s.title for s in BENCHMARKS]
    assert titles[:1] == ["Benchmarks"] and len(titles) >= 3, titles
    assert all(s.measured_rows() for s in BENCHMARKS), "a benchmark section without figures"
    assert sum(len(s.ratios()) for s in BENCHMARKS) >= 5


@pytest.mark.parametrize("section", BENCHMARKS, ids=[s.title for s in BENCHMARKS])
def test_each_benchmark_figure_sits_next_to_the_command_that_prints_it(section: Section) -> None:
    figures = section.measured_rows() + section.ratios()
    assert figures
    assert section.scripts, f"{section.title!r} quotes {figures[:3]} but names no benchmark"
    missing = sorted(s for s in section.scripts if not (ROOT / "benchmarks" / s).is_file())
    assert missing == [], f"{section.title!r} names scripts that do not exist"


def test_every_benchmark_the_readme_names_exists() -> None:
    named = set(SCRIPT.findall(README))
    assert named and sorted(s for s in named if not (ROOT / "benchmarks" / s).is_file()) == []


def test_ratios_outside_the_benchmarks_are_targets_or_name_their_command() -> None:
    stray = {
        s.title: s.ratios()
        for s in SECTIONS
        if s not in BENCHMARKS and s.ratios() and not (s.scripts or COMMAND.search(s.body))
    }
    assert stray == {}


COMMAND = re.compile(r"`(?:make \w+|\.venv/bin/\S+[^`]*)`")


def test_other_measured_tables_name_the_command_that_makes_them() -> None:
    """E.g. the Results table: the runs it quotes are named (``make demo``, ``tessera run``)."""
    unnamed = [
        s.title
        for s in SECTIONS
        if s not in BENCHMARKS and s.measured_rows() and not COMMAND.search(s.body)
    ]
    assert unnamed == []


def test_a_measured_ratio_without_its_command_is_caught() -> None:
    """Negative control for the rules above."""
    (bare,) = benchmark_sections(sections("## Benchmarks\n\nSecure rounds: **2.15x** slower.\n"))
    assert bare.ratios() == ["2.15x"] and not bare.scripts
    (target,) = sections("Secure rounds must stay <= 1.3x plaintext.\n")
    assert target.ratios() == []
    (table,) = sections("| n | s |\n| ---: | ---: |\n| 500 | 0.024 |\n| a | b |\n")
    assert table.measured_rows() == ["| 500 | 0.024 |"]
    assert not COMMAND.search(table.body)
    assert COMMAND.search("(`make demo`, which took 131 s)")


def collected_tests() -> int:
    """What ``make test`` runs: pytest's own count of the selected tests."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    per_file = re.findall(r"^tests/\S+\.py: (\d+)$", done.stdout, flags=re.MULTILINE)
    assert per_file, done.stdout[-2000:]
    return sum(map(int, per_file))


def whole_default_suite(config: pytest.Config) -> bool:
    """Whether this session runs what ``make test`` runs: no paths, -k or extra -m given."""
    return (
        config.args_source == pytest.Config.ArgsSource.TESTPATHS
        and not config.option.keyword
        and config.option.markexpr == "not slow"
    )


def test_the_quoted_suite_size_is_within_ten_percent_of_the_collected_count(
    request: pytest.FixtureRequest,
) -> None:
    quoted = [int(n.replace(",", "")) for n in TEST_COUNT.findall(README)]
    assert quoted, "the README no longer says how many tests the suite has"
    # The whole suite's own collection when this is it (each xdist worker collects
    # everything); else a second pytest counts, which costs 20 s on 2 cores.
    session = request.session
    collected = len(session.items) if whole_default_suite(request.config) else collected_tests()
    for n in quoted:
        assert abs(n - collected) <= 0.1 * collected, (
            f"README says about {n:,} tests; pytest collects {collected:,}"
        )

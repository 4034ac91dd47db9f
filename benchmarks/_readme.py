"""Where a benchmark writes its table into the README: between its two markers."""

from __future__ import annotations

from pathlib import Path


def write_between(path: Path, begin: str, end: str, text: str) -> None:
    """Replace what lies between ``begin`` and ``end`` in ``path`` with ``text``."""
    readme = path.read_text(encoding="utf-8")
    start, stop = readme.index(begin) + len(begin), readme.index(end)
    path.write_text(readme[:start] + "\n" + text + "\n" + readme[stop:], encoding="utf-8")

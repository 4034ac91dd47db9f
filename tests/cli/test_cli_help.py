"""Every command's ``--help``, rendered by typer's own (rich) help renderer.

A flag takes no value, so its help names none: typer 0.29's rich renderer
printed ``<bool>`` after every flag, ``--help`` included (tessera.cli.help).
"""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from tessera.cli import app


def _paths(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The argument path to every group and command under ``command``, itself first."""
    out = [path]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        out.extend(_paths(sub, (*path, name)))
    return out


ROOT = typer.main.get_command(app)
PATHS = _paths(ROOT)


def test_the_walk_finds_every_command() -> None:
    names = {" ".join(p) for p in PATHS}
    assert {"", "run", "demo", "data", "data check", "up", "job submit", "consent grant"} <= names


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "tessera")
def test_help_shows_no_type_for_flags(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "--help" in result.output
    assert "<bool>" not in result.output
    help_line = next(line for line in result.output.splitlines() if "--help" in line)
    assert "<" not in help_line  # no type of any kind after a flag


def test_options_that_take_a_value_still_show_its_type() -> None:
    result = CliRunner().invoke(app, ["run", "--help"], terminal_width=200)
    assert "<path>" in result.output and "<int>" in result.output
    quiet = next(line for line in result.output.splitlines() if "--quiet" in line)
    assert "no progress bars" in quiet and "<" not in quiet


@pytest.mark.parametrize("command", ["coordinator", "provider", "node"])
def test_the_services_can_be_quieted(command: str) -> None:
    """--verbose is the default; --quiet (-q) turns it off (it once had no off switch)."""
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "--verbose" in line)
    assert "--quiet" in line

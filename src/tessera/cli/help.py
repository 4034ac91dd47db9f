"""The command and group classes of every ``tessera`` command: flags show no type in help.

Typer 0.29's rich help renderer prints each option's type from
``display_type_rich`` and, unlike its plain renderer (``get_help_record``
skips the type when ``is_flag``), does not leave flags out: every boolean
flag, ``--help`` included, showed as ``--quiet -q <bool>``, as if it took a
value. A flag takes none, so these classes give each flag option the empty
metavar (``display_type_rich`` returns the metavar when one is set, and a
flag's metavar is used for nothing else: not by the parser, not in errors,
which name an option by its flags). ``tessera.cli`` declares every group
``typer.Typer(cls=Group)`` and every command ``@app.command(cls=Command)``;
tests/cli/test_cli_help.py renders the help of each one and fails on ``<bool>``.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand, TyperGroup, TyperOption


def _without_flag_types(params: list[Any]) -> list[Any]:
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""  # no value to name: the renderer then shows no type
    return params


class Command(TyperCommand):
    """A typer command whose help lists flags without a type."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _without_flag_types(super().get_params(ctx))


class Group(TyperGroup):
    """A typer group whose help lists flags (``--help``) without a type."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _without_flag_types(super().get_params(ctx))

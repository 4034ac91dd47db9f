"""``tessera keys reseal FILE``: a party's key file under a new passphrase (key rotation).

Only the passphrase changes: the keys, so the party's identity and every
fingerprint others know it by, stay. Passphrases come from the environment or
a hidden prompt, never from an argument (which ``ps`` and shell histories show).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from tessera.cli.help import Command, Group
from tessera.cli.main import app, console
from tessera.errors import ConfigError

keys_app = typer.Typer(
    cls=Group, no_args_is_help=True, help="A party's key file: re-seal it under a new passphrase."
)
app.add_typer(keys_app, name="keys")

PASSPHRASE_ENV = "TESSERA_KEY_PASSPHRASE"


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(2)


@keys_app.command("reseal", cls=Command)
def reseal(
    file: Annotated[Path, typer.Argument(help="the key file (a party's --keys)")],
    new_passphrase_env: Annotated[
        str | None,
        typer.Option(
            "--new-passphrase-env",
            metavar="VAR",
            help="take the new passphrase from this environment variable, not a prompt",
        ),
    ] = None,
    clear: Annotated[
        bool,
        typer.Option(
            "--clear", help="store the keys unsealed: whoever can read the file holds them"
        ),
    ] = False,
) -> None:
    """Re-seal a key file under a new passphrase; stop its party first.

    The current passphrase comes from TESSERA_KEY_PASSPHRASE or a hidden prompt
    (none for a file in the clear); the new one from a prompt, asked twice, or
    --new-passphrase-env. The file is replaced atomically, mode 0600 and owner
    kept; the keys and their fingerprint do not change.
    """
    from tessera.storage.keyfile import is_sealed, load_keys, reseal_keys

    if clear and new_passphrase_env is not None:
        raise typer.BadParameter("give --clear or --new-passphrase-env, not both")
    if not file.is_file():
        _fail(f"no key file at {file}")
    try:
        old = _current(file) if is_sealed(file) else None
        load_keys(file, old, warn_clear=False)  # the old passphrase checked before a new is asked
    except ConfigError as exc:
        _fail(f"{file}: {exc.message}; the file is unchanged")
        return
    new = None if clear else _new(new_passphrase_env)
    try:
        keys = reseal_keys(file, old, new)
    except (ConfigError, OSError) as exc:
        _fail(f"could not re-seal {file}: {exc}")
        return
    if new is None:
        console.print(
            f"[yellow]warning:[/] {escape(str(file))} now holds its keys in the clear:"
            f" whoever can read it holds them; start its party without {PASSPHRASE_ENV}"
        )
    else:
        console.print(
            f"re-sealed {escape(str(file))} under the new passphrase:"
            f" start its party with it as {PASSPHRASE_ENV}"
        )
    console.print(f"key fingerprint {keys.public.fingerprint} (unchanged)")


def _current(file: Path) -> bytes:
    given = os.environb.get(PASSPHRASE_ENV.encode())
    if given:
        return given
    return os.fsencode(typer.prompt(f"Current passphrase of {file}", hide_input=True))


def _new(env: str | None) -> bytes:
    if env is not None:
        value = os.environb.get(os.fsencode(env))
        if not value:
            _fail(f"{env} is not set, or empty: it should hold the new passphrase")
        assert value is not None  # _fail exits
        return value
    # click asks again on an empty answer: a prompted passphrase is never empty.
    return os.fsencode(typer.prompt("New passphrase", hide_input=True, confirmation_prompt=True))

"""``tessera audit verify DIR/audit.jsonl``: check a job's signed, chained audit log."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from tessera.cli.help import Command, Group
from tessera.cli.main import app, console

audit_app = typer.Typer(
    cls=Group, no_args_is_help=True, help="Check a job's audit log (DIR/audit.jsonl)."
)
app.add_typer(audit_app, name="audit")

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")


def _key(value: str) -> str:
    """``--key``: 64 hex digits, or a file holding them (DIR/audit.key.pub)."""
    text = value.strip()
    if not _HEX_KEY.fullmatch(text):
        path = Path(value)
        text = path.read_text(encoding="ascii").strip() if path.is_file() else ""
    if not _HEX_KEY.fullmatch(text):
        console.print(
            "[bold red]error:[/] --key takes an Ed25519 public key, 64 hex digits, "
            "or a file holding one (DIR/audit.key.pub)"
        )
        raise typer.Exit(2)
    return text.lower()


@audit_app.command("verify", cls=Command)
def verify(
    log: Annotated[Path, typer.Argument(help="the audit log (DIR/audit.jsonl)")],
    key: Annotated[
        str | None,
        typer.Option(
            help="the expected signer's Ed25519 public key (64 hex digits) or a file "
            "holding it: the coordinator's, or a run's DIR/audit.key.pub"
        ),
    ] = None,
    trust_first: Annotated[
        bool,
        typer.Option(
            "--trust-first", help="trust whoever signed the first record (checks integrity only)"
        ),
    ] = False,
    model: Annotated[
        Path | None,
        typer.Option(help="the model file (default: model.safetensors beside the log)"),
    ] = None,
    node: Annotated[
        str | None,
        typer.Option(help="also check this node's consent: in no round after its revocation"),
    ] = None,
) -> None:
    """Check every signature, the chain and the final model's hash; name the first broken record.

    Exits 0 when the log holds, 1 when a record is broken (or --node's consent was not
    honoured), 2 when it cannot be checked at all.
    """
    from tessera.audit import BrokenLog, verify_log

    if (key is None) == (not trust_first):
        console.print("[bold red]error:[/] give the signer's key (--key) or --trust-first")
        raise typer.Exit(2)
    if not log.is_file():
        console.print(f"[bold red]error:[/] no audit log at {log}")
        raise typer.Exit(2)
    try:
        result = verify_log(
            log,
            key=None if key is None else _key(key),
            trust_first=trust_first,
            model=model,
            node=node,
        )
    except BrokenLog as exc:
        console.print(f"[bold red]broken:[/] {exc}")
        raise typer.Exit(1) from None
    trusted = (
        "the key given (--key)"
        if result.trusted == "--key"
        else "[yellow]the first record's key, trusted as told (--trust-first)[/]"
    )
    out = console.print
    out(f"[green]ok[/]: {result.records} records, chain and signatures hold")
    out(f"signer {result.signer}: {trusted}")
    out(f"job {result.job}: {result.rounds} rounds, {result.status}")
    if result.model:
        out(f"model {result.model}: matches the final record")
    else:
        out(f"no model: the job ended {result.status} without one (its final record says so)")
    check = result.consent
    if check is None:
        return
    if check.revoked_at is None:
        rounds = ", ".join(map(str, check.included_in)) or "none"
        out(f"{check.node}: no revocation in the log; included in rounds: {rounds}")
        return
    after = len(check.rounds_after)
    if check.honoured:
        out(
            f"[green]consent honoured[/]: {check.node} revoked at record {check.revoked_at}, "
            f"absent from all {after} round(s) committed after it"
        )
        return
    for seq, round_ in check.violations:
        out(
            f"[bold red]consent not honoured:[/] record {seq}: round {round_} includes "
            f"{check.node}, revoked at record {check.revoked_at}"
        )
    raise typer.Exit(1)

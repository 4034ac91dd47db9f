"""``tessera report DIR``: write DIR/report.html, the job's trust report, from its outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tessera.cli.help import Command
from tessera.cli.main import app, console


@app.command("report", cls=Command)
def report(
    out: Annotated[Path, typer.Argument(help="a job's output folder (holds metrics.json)")],
) -> None:
    """Write DIR/report.html: one self-contained file, readable offline.

    Built from DIR/metrics.json and DIR/audit.jsonl (checked, if present): the
    metric against the centralized baseline, participation, contributions,
    privacy spent, bytes and seconds per round, a model card and the audit log.
    Exits 2 when DIR has no metrics.json.
    """
    from tessera.reports.html import write_report

    if not (out / "metrics.json").is_file():
        console.print(f"[bold red]error:[/] no metrics.json in {out}")
        raise typer.Exit(2)
    path = write_report(out)
    console.print(f"wrote {path}")
